"""Models, their split points and splitting (see `engine.models.base`): the CIFAR ResNet18 (the paper's model),
MobileNetV2 and VGG with batch norm, each registered in `MODELS` where it is defined, and any model of one's own
by reference (`path/to/file.py:ClassName`, `package.module:factory`)."""

from engine.models.base import (
    DEFAULT_MODEL,
    END_POINTS,
    MODELS,
    PartInfo,
    SplitPoint,
    all_split_points,
    build_model,
    check_splits,
    declared_points,
    example_input,
    model_factory,
    model_label,
    named_points,
    normalize_reference,
    part_info,
    plausible_split,
    reference_split,
    scaled,
    split,
    split_names,
    split_point,
)

# isort: split
# each module registers its models; in this order, the registry's (and the dashboard's) order
from engine.models.resnet import BasicBlock, CifarResNet18, Head, Stem  # noqa: I001
from engine.models import mobilenet, vgg  # noqa: F401

from engine.registry import Registry  # noqa: E402

SPLIT_POINTS: Registry[SplitPoint] = Registry("split point")  # the default model's points (CifarResNet18's)
for _point in CifarResNet18.split_points:
    SPLIT_POINTS.add(_point.name, _point)

__all__ = ["DEFAULT_MODEL", "END_POINTS", "MODELS", "SPLIT_POINTS", "BasicBlock", "CifarResNet18", "Head",
           "PartInfo", "SplitPoint", "Stem", "all_split_points", "build_model", "check_splits", "declared_points",
           "example_input", "model_factory", "model_label", "named_points", "normalize_reference", "part_info",
           "plausible_split", "reference_split", "scaled", "split", "split_names", "split_point"]
