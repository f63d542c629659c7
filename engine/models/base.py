"""The model axis: the registry of models (`MODELS`, filled where each model is defined), model references (a
registered name, `path/to/file.py:ClassName` or `package.module:factory`), the named split points of a model, and
`split`, which cuts a model into a device part and a server part.

A model is cut after a named point: a model that is a chain of units (`units()`, the CIFAR ResNet18) between two
units, any other model where exactly one tensor crosses its traced graph (`engine.models.graph`). Each part carries
a `PartInfo` (its split point, the model's stages, its input shape), which pruning and profiling read."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from engine.errors import UserError
from engine.models.graph import TracedModel, whole
from engine.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
END_POINTS = ("server_only", "device_only")
DEFAULT_MODEL = "resnet18"
_NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def scaled(channels: int, width: float) -> int:
    """`channels` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


# ---------------------------------------------------------------------------------------------------- split points


@dataclass(frozen=True)
class SplitPoint:
    """A named place to cut a model: after `node` (a node of its traced graph or a module path, see
    `engine.models.graph`; None at the end points). `coarse` marks the paper-style points a sweep covers."""

    name: str
    node: str | None
    coarse: bool = True
    label: str = ""


def named_points(*inner: SplitPoint) -> tuple[SplitPoint, ...]:
    """A model's split points: `server_only`, the inner points in order, `device_only`.

    Args:
        inner: the points between the input and the output.
    Returns:
        all of them, end points included.
    """
    return (SplitPoint("server_only", None, True, "server only (input PNG)"), *inner,
            SplitPoint("device_only", None, True, "device only (sends the label)"))


def declared_points(model: nn.Module | Callable[..., nn.Module]) -> tuple[SplitPoint, ...]:
    """The split points a model (or its class) names: its `split_points`, else the end points alone."""
    points = getattr(model, "split_points", None)
    return tuple(points) if points else named_points()


@dataclass(frozen=True)
class PartInfo:
    """What a part of a split model knows of the model it was cut from.

    `sends`: its output is the split feature (the device part at an inner point; activation pruning may prune it).
    `stages`: (module path in the model, stage name) pairs that name pruning groups and sparsity targets.
    `paths`: (the part's child, its path in the model) where a part renames the model's modules (chain parts)."""

    point: str = ""
    order: int = -1
    sends: bool = False
    stages: tuple[tuple[str, str], ...] = ()
    paths: tuple[tuple[str, str], ...] = ()
    input_shape: tuple[int, ...] | None = None

    def model_path(self, path: str) -> str:
        """A module's path in the model, from its path in this part."""
        head, _, rest = path.partition(".")
        mapped = dict(self.paths).get(head, head)
        return f"{mapped}.{rest}" if rest else mapped

    def _stage_of(self, model_path: str) -> tuple[str, str] | None:
        """(module path prefix, stage name) of the stage a module of the model lies in (the longest prefix)."""
        hits = [(p, s) for p, s in self.stages if model_path == p or model_path.startswith(p + ".")]
        return max(hits, key=lambda h: len(h[0])) if hits else None

    def stage(self, model_path: str) -> str | None:
        """The stage a module of the model belongs to, or None."""
        hit = self._stage_of(model_path)
        return hit[1] if hit else None

    def display(self, model_path: str) -> str:
        """A module's name with its stage prefix written as the stage: `layer1.0.conv1` -> `conv2_x.0.conv1`."""
        hit = self._stage_of(model_path)
        return hit[1] + model_path[len(hit[0]):] if hit else model_path


def part_info(module: nn.Module) -> PartInfo:
    """The PartInfo of a split part (or of the first part inside a deployed wrapper); for a whole model, one
    from its own `stages` and `input_shape` attributes."""
    for m in module.modules():
        info = getattr(m, "split_info", None) or getattr(m, "meta", {}).get("split_info")
        if isinstance(info, PartInfo):
            return info
    return PartInfo(stages=tuple(getattr(module, "stages", ())), input_shape=getattr(module, "input_shape", None))


def example_input(module: nn.Module, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """One zero input for `module` on its parameters' device: of `shape`, else the part's or model's recorded input
    shape, else its first convolution's input channels at 32x32."""
    shape = shape or part_info(module).input_shape
    if shape is None:
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        shape = (conv.in_channels if conv is not None else 3, 32, 32)
    p = next(module.parameters())
    return torch.zeros(1, *shape, device=p.device, dtype=p.dtype)


# ---------------------------------------------------------------------------------------------------- references


def _load_attribute(ref: str) -> Callable[..., nn.Module]:
    """The factory a `file.py:Name` or `package.module:name` reference names, imported now."""
    where, _, name = ref.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            key = f"coinfer_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
            module = sys.modules.get(key)
            if module is None:
                spec = importlib.util.spec_from_file_location(key, path)
                if spec is None or not path.is_file():
                    raise FileNotFoundError(f"no file {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[key]
                    raise
        else:
            module = importlib.import_module(where)
        return getattr(module, name)
    except Exception as exc:  # noqa: BLE001 - whatever the user's code raises, said in one line
        first = (str(exc).splitlines() or [""])[0]
        raise UserError(f"cannot load model {ref!r}: {type(exc).__name__}: {first[:160]}") from None


def model_factory(ref: str) -> Callable[..., nn.Module]:
    """The class or factory of a model reference: a registered name, `path/to/file.py:ClassName` or
    `package.module:factory`.

    Args:
        ref: the reference.
    Returns:
        what builds the model; a UserError naming the registered models for an unknown name.
    """
    if ref in MODELS or ":" not in ref:
        return MODELS.get(ref)
    return _load_attribute(ref)


def model_label(ref: str) -> str:
    """A short name of a model reference for captions: a registered name, or `ClassName (file.py)`."""
    where, sep, name = ref.rpartition(":")
    return f"{name} ({Path(where).name})" if sep and ref not in MODELS else ref


def normalize_reference(ref: str) -> str:
    """A reference as workers elsewhere find it: a file's path made absolute (checked to load now).

    Args:
        ref: what the user typed.
    Returns:
        the reference to record in the base model's config.
    """
    where, sep, name = ref.rpartition(":")
    if sep and where.endswith(".py"):
        ref = f"{Path(where).expanduser().resolve()}:{name}"
    model_factory(ref)
    return ref


def build_model(ref: str, width: float, num_classes: int, in_channels: int,
                input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A model from its reference, given the arguments its factory takes among `width`, `num_classes` and
    `in_channels`; `input_shape` (C, H, W) is recorded on it for tracing and pruning.

    Args:
        ref: a model reference (`model_factory`).
        width, num_classes, in_channels: what a factory may take.
        input_shape: the data's (C, H, W), when known.
    Returns:
        the model (untrained).
    """
    factory = model_factory(ref)
    given = {"width": width, "num_classes": num_classes, "in_channels": in_channels}
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in given.items() if takes_all or k in params}
    except (TypeError, ValueError):  # no signature to read: give it everything
        kwargs = given
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model {ref!r} built a {type(model).__name__}, not a torch.nn.Module")
    if input_shape is not None:
        model.input_shape = tuple(input_shape)
    return model


# ---------------------------------------------------------------------------------------------------- splitting


def split_point(model: nn.Module, name: str) -> tuple[SplitPoint, int]:
    """The split point `name` of a model and its position: a point the model declares, or (for a model that is not
    a chain of units) any node of its graph where exactly one tensor crosses, by its qualified name.

    Args:
        model: the model; name: the point's name.
    Returns:
        the point and its order (server_only first); a UserError for an unknown or invalid point.
    """
    points = declared_points(model)
    names = [p.name for p in points]
    if name in names:
        return points[names.index(name)], names.index(name)
    if hasattr(model, "units"):
        raise UserError(f"unknown split point {name!r}; choose one of: {', '.join(names)}")
    traced = TracedModel(model)
    i = traced.check(name)
    return SplitPoint(name, name, True, f"after {name}"), i + 1


def split_names(model: str | nn.Module = DEFAULT_MODEL, coarse_only: bool = True) -> list[str]:
    """The names of a model's declared split points (a reference or a model), in order.

    Args:
        model: a model reference or a built model; coarse_only: only the paper-style points a sweep covers.
    Returns:
        the names, end points included.
    """
    points = declared_points(model_factory(model) if isinstance(model, str) else model)
    return [p.name for p in points if p.coarse or not coarse_only]


def reference_split(ref: str) -> str | None:
    """The split one comparison is made at (the paper's Fig. 5, the jobs page's default): the second-deepest of the
    model's coarse inner points, conv4_x of the CIFAR ResNet18; None for a model that declares none.

    Args:
        ref: a model reference.
    Returns:
        the point's name, or None.
    """
    inner = split_names(ref)[1:-1]
    return inner[-2] if len(inner) >= 2 else (inner[0] if inner else None)


def all_split_points(model: nn.Module) -> list[str]:
    """Every valid split point of a built model, in order: its declared points (finer ones included) and, for a model
    that is not a chain of units, every node of its graph where exactly one tensor crosses.

    Args:
        model: the model.
    Returns:
        the names, end points first and last.
    """
    declared = [p.name for p in declared_points(model)]
    if hasattr(model, "units"):
        return declared
    traced = TracedModel(model)
    nodes = [n for n in traced.valid_points() if n not in declared]
    inner = sorted(set(declared[1:-1]) | set(nodes), key=lambda n: traced.index(declared_node(model, n)))
    return [declared[0], *inner, declared[-1]]


def declared_node(model: nn.Module, name: str) -> str:
    """The graph node a split point's name stands for: a declared point's node, else the name itself."""
    return next((p.node for p in declared_points(model) if p.name == name and p.node), name)


def check_splits(ref: str, names: Iterable[str]) -> None:
    """A UserError for the first name that is not a split point of the model `ref` (a user's model is built and
    traced to check names it does not declare)."""
    declared = split_names(ref, coarse_only=False)
    rest = [n for n in names if n not in declared]
    if rest:
        model = build_model(ref, 1.0, 10, 3)
        for n in rest:
            split_point(model, n)


def plausible_split(ref: str, name: object) -> bool:
    """Whether `name` may be a split point of model `ref`, without importing anything that is not registered (a
    selection or results file is untrusted): a declared point of a registered chain model, else any well-formed
    node name.

    Args:
        ref: a model reference; name: the split's name as read.
    Returns:
        True when it may be one.
    """
    if not isinstance(name, str) or len(name) > 200:
        return False
    if ref in MODELS and hasattr(MODELS.get(ref), "units"):
        return name in split_names(ref, coarse_only=False)
    return name in END_POINTS or _NODE_NAME.fullmatch(name) is not None


def _chain_parts(model: nn.Module, node: str | None, name: str) -> tuple[nn.Sequential, nn.Sequential]:
    """A chain model's units up to the one `node` ends (all of them for device_only) and the rest."""
    paths = {id(m): p for p, m in model.named_modules()}
    units = [(n, u, paths[id(u)]) for n, u in model.units()]
    if name == "server_only":
        k = 0
    elif name == "device_only":
        k = len(units)
    else:
        k = 1 + max(i for i, (_, _, p) in enumerate(units) if p == node or p.startswith(f"{node}."))
    device, server = nn.Sequential(), nn.Sequential()
    for n, unit, _ in units[:k]:
        device.add_module(n.replace(".", "_"), unit)
    for n, unit, _ in units[k:]:
        server.add_module(n.replace(".", "_"), unit)
    return device, server


def _graph_parts(model: nn.Module, point: SplitPoint) -> tuple[nn.Module, nn.Module]:
    if point.name == "server_only":
        return nn.Sequential(), whole(model)
    if point.name == "device_only":
        return whole(model), nn.Sequential()
    return TracedModel(model).cut(point.node)


def split(model: nn.Module, point: str) -> tuple[nn.Module, nn.Module]:
    """Device and server parts (sharing the model's parameters) whose composition is the whole model.

    Args:
        model: a built model; point: one of its split points (`split_point`).
    Returns:
        (device part, server part), each with a `split_info` PartInfo.
    """
    sp, order = split_point(model, point)
    chain = hasattr(model, "units")
    device, server = _chain_parts(model, sp.node, sp.name) if chain else _graph_parts(model, sp)
    stages = tuple(getattr(model, "stages", ()))
    paths = {id(m): p for p, m in model.named_modules()}
    for part, sends in ((device, sp.name not in END_POINTS), (server, False)):
        renamed = tuple((n, paths[id(c)]) for n, c in part.named_children() if id(c) in paths) if chain else ()
        info = PartInfo(sp.name, order, sends, stages, renamed,
                        getattr(model, "input_shape", None) if part is device else None)
        part.split_info = info
        if isinstance(part, fx.GraphModule):  # what a GraphModule's deep copy keeps
            part.meta["split_info"] = info
    return device, server
