from pathlib import Path

import pytest
import torch

from engine.errors import UserError
from engine.models import (
    MODELS,
    SPLIT_POINTS,
    CifarResNet18,
    all_split_points,
    build_model,
    normalize_reference,
    part_info,
    split,
    split_names,
)

USER_MODEL = str(Path(__file__).parents[1] / "user_model.py") + ":TinyNet"


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics, so an omitted or repeated layer would show."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("width", [0.25, 1.0])
def test_split_composition_equals_whole_model(width: float) -> None:
    torch.manual_seed(0)
    model = CifarResNet18(width).eval()
    for m in model.modules():  # non-trivial BN statistics, so an omitted unit would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        whole = model(x)
        for point in SPLIT_POINTS:
            device, server = split(model, point)
            assert (server(device(x)) - whole).abs().max().item() < 1e-5, point


def test_split_points_cut_the_chain_in_order() -> None:
    model = CifarResNet18(0.25)
    sizes = [len(split(model, p)[0]) for p in SPLIT_POINTS]
    assert sizes == list(range(11))
    assert split_names() == ["server_only", "stem", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "device_only"]
    assert len(split_names(coarse_only=False)) == 11


def test_feature_shapes_at_the_paper_split_points() -> None:
    model = CifarResNet18(1.0).eval()
    x = torch.zeros(1, 3, 32, 32)
    expected = {"stem": (64, 32, 32), "conv2_x": (64, 32, 32), "conv3_x": (128, 16, 16), "conv4_x": (256, 8, 8),
                "conv5_x": (512, 4, 4)}
    with torch.no_grad():
        for point, shape in expected.items():
            assert tuple(split(model, point)[0](x).shape[1:]) == shape


def test_grayscale_and_other_sizes() -> None:
    model = CifarResNet18(0.25, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(UserError, match="width must be > 0"):
        CifarResNet18(0.0)
    with pytest.raises(UserError, match="unknown split point 'conv9_x'.*conv4_x"):
        split(CifarResNet18(0.25), "conv9_x")


@pytest.mark.parametrize("ref", ["mobilenetv2", "vgg11_bn", "vgg16_bn"])
def test_traced_models_split_at_every_named_point(ref: str) -> None:
    model = _randomised(build_model(ref, 0.125, 10, 3))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        whole = model(x)
        for order, point in enumerate(split_names(ref, coarse_only=False)):
            device, server = split(model, point)
            assert (server(device(x)) - whole).abs().max().item() < 1e-5, point
            assert part_info(device).order == order and part_info(device).sends == (point not in ("server_only",
                                                                                                "device_only"))
    assert ref in MODELS.names()


def test_mobilenetv2_feature_shapes_follow_its_sequences() -> None:
    model = build_model("mobilenetv2", 1.0, 10, 3).eval()
    x = torch.zeros(1, 3, 32, 32)
    expected = {"stem": (32, 32, 32), "bottleneck2": (24, 32, 32), "bottleneck3": (32, 16, 16),
                "bottleneck5": (96, 8, 8), "bottleneck7": (320, 4, 4)}
    with torch.no_grad():
        for point, shape in expected.items():
            assert tuple(split(model, point)[0](x).shape[1:]) == shape
    assert split_names("mobilenetv2") == ["server_only", "stem", "bottleneck2", "bottleneck3", "bottleneck5",
                                          "bottleneck7", "device_only"]


def test_a_point_two_tensors_cross_is_refused_naming_them() -> None:
    model = build_model("mobilenetv2", 0.25, 10, 3)
    with pytest.raises(UserError, match=r"at 'bottleneck3.1.conv.0': 2 tensors cross there \(bottleneck3.0.conv.2.1, "
                                        r"bottleneck3.1.conv.0.2\)"):
        split(model, "bottleneck3.1.conv.0")
    with pytest.raises(UserError, match="has no node 'nowhere'"):
        split(model, "nowhere")
    device, server = split(model, "bottleneck3.1")  # a node of its graph, not a named point
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(server.eval()(device.eval()(x)), model.eval()(x))


def test_a_users_model_from_a_file_splits_at_nodes_of_its_graph() -> None:
    ref = normalize_reference(USER_MODEL)
    model = _randomised(build_model(ref, 0.25, 10, 1, (1, 28, 28)))
    points = all_split_points(model)
    assert points[0] == "server_only" and points[-1] == "device_only"
    assert {"stem", "relu", "cat", "mix"} <= set(points) and "left" not in points  # two branches cross there
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for point in points:
            device, server = split(model, point)
            assert (server(device(x)) - model(x)).abs().max().item() < 1e-5, point
    assert part_info(split(model, "cat")[0]).input_shape == (1, 28, 28)
    with pytest.raises(UserError, match="cannot split TinyNet at 'left': 2 tensors cross there"):
        split(model, "left")
    with pytest.raises(UserError, match="cannot load model .*NoSuchNet"):
        normalize_reference(USER_MODEL.replace("TinyNet", "NoSuchNet"))
    with pytest.raises(UserError, match="unknown model 'resnet99'"):
        build_model("resnet99", 1.0, 10, 3)
