"""Channel groups and masks, the ground of communication-aware pruning (Shao & Zhang 2020, "Incremental network
pruning"). Channels that must be pruned together form one group, found by Torch-Pruning's dependency graph (Fang et
al. 2023, "DepGraph: Towards Any Structural Pruning") on any model: a convolution's output channels with the batch
norms over them, the depthwise convolutions that carry them, and every other layer tied to them by a residual
addition (in a ResNet a whole stage's stream, from the stem through its blocks); a concatenation keeps each input's
channels a group of their own. A group is ranked by the sum of its producing layers' filter l2 norms; the group
producing a device part's output is the transmitted feature, and pruning it is the paper's activation pruning
(sparsity key "output"). A group is named after the stage of its last producer when a residual stream ties several
layers (or it is the transmitted feature), else after its producer (`conv3_x.0.conv1`); targets are looked up by
the group's name, "output", its stages from the deepest, then the global target; at least one channel of a group is
kept. A masked channel's filter and its BN gamma and beta are zeroed, so it outputs exactly 0."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from engine.errors import UserError
from engine.models import PartInfo, example_input, part_info

# ---------------------------------------------------------------------------------------------------- groups

PRODUCER_TYPES = (nn.Conv2d, nn.Linear)
# the dependency-graph nodes a prunable group may hold besides its layers: pointwise operations (activations, pooling,
# additions), concatenations and splits, reshapes, and the module's output; any other (layer norm, group norm, PReLU,
# a bare parameter) leaves the group unpruned
PASS_THROUGH = (OPTYPE.ELEMENTWISE, OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.RESHAPE, OPTYPE.OUTPUT)


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels pruned together. Paths are relative to the module the group was found in."""

    name: str
    stages: tuple[str, ...]
    producers: tuple[str, ...]  # convolutions and linear layers whose output channels are the group's
    norms: tuple[str, ...]  # batch norms over the group's channels
    channels: int
    is_output: bool = False


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """The module in eval mode for the block, each submodule's own mode restored after it."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module.eval()
    finally:
        for m, mode in modes:
            m.training = mode


def dependency_graph(module: nn.Module, example: torch.Tensor | None = None) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of `module`, traced through autograd on one example input in eval mode; the
    module's train/eval modes, gradient flags and batch-norm statistics are left as they were.

    Args:
        module: a model or a part of one (with parameters); example: its input (`example_input` by default).
    Returns:
        the dependency graph.
    """
    x = example if example is not None else example_input(module)
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        with eval_mode(module), torch.enable_grad():
            for p, _ in flags:
                p.requires_grad_(True)
            # the output passed through one more operation, so that a graph node stands for it even where a layer
            # returns it directly: the group reaching it is the transmitted feature (or the logits)
            return tp.DependencyGraph().build_dependency(module, example_inputs=x, verbose=False,
                                                         output_transform=lambda y: y * 1)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _members(group: Any, dg: tp.DependencyGraph, paths: Mapping[nn.Module, str]) -> tuple[list, list, bool] | None:
    """(producer paths, norm paths, reaches the output) of a Torch-Pruning group; None when the group holds a layer
    whose channels cannot be masked and removed alike (grouped convolutions, layer norms, bare parameters...)."""
    producers, norms, output = [], [], False
    for dep, _ in group:
        node, m = dep.target, dep.target.module
        if node.type in PASS_THROUGH:
            output = output or node.type == OPTYPE.OUTPUT
        elif node.type == OPTYPE.BN:
            norms.append(paths[m])
        elif node.type == OPTYPE.DEPTHWISE_CONV and _is_depthwise(m):
            producers.append(paths[m])
        elif node.type in (OPTYPE.CONV, OPTYPE.LINEAR) and getattr(m, "groups", 1) == 1:
            if dg.is_out_channel_pruning_fn(dep.handler):
                producers.append(paths[m])
        else:
            return None
    return producers, norms, output


def _name(info: PartInfo, producers: list[str], stream: bool, used: set[str]) -> str:
    """A group's name: the stage of its last producer for a stream (a residual stream or the transmitted feature),
    else its producer's name with the stage written for the stage's path (`PartInfo.display`); the producer's name
    where the stage's is taken."""
    models = [info.model_path(p) for p in producers]
    stage = info.stage(models[-1]) if stream else None
    for name in (stage, info.display(models[-1] if stream else models[0])):
        if name is not None and name not in used:
            return name
    return f"{info.display(models[0])}#{len(used)}"


def prunable_groups(module: nn.Module, example: torch.Tensor | None = None) -> list[ChannelGroup]:
    """The prunable channel groups of a model or a part of one (`engine.models.split`), in the order of their last
    producing layer. The output of a device part cut at a split point is a group (the transmitted feature); the
    output of a whole model or of a device-only part (the logits) is not.

    Args:
        module: the model or part; example: one input (`example_input` by default).
    Returns:
        the groups.
    """
    if next(module.parameters(), None) is None:
        return []
    info = part_info(module)
    dg = dependency_graph(module, example)
    paths = {m: n for n, m in module.named_modules()}
    order = {n: i for i, n in enumerate(paths.values())}
    found = []
    for group in dg.get_all_groups(root_module_types=PRODUCER_TYPES):
        members = _members(group, dg, paths)
        if members is None or not members[0] or (members[2] and not info.sends):
            continue
        producers, norms, output = members
        producers, norms = (sorted(set(x), key=order.__getitem__) for x in (producers, norms))
        found.append((producers, norms, output))
    found.sort(key=lambda f: order[f[0][-1]])
    groups: list[ChannelGroup] = []
    used: set[str] = set()
    for producers, norms, output in found:
        layers = [module.get_submodule(p) for p in producers]
        stream = output or sum(not _is_depthwise(m) for m in layers) > 1
        name = _name(info, producers, stream, used)
        used.add(name)
        stages = tuple(dict.fromkeys(s for p in producers if (s := info.stage(info.model_path(p))) is not None))
        channels = layers[0].out_channels if isinstance(layers[0], nn.Conv2d) else layers[0].out_features
        groups.append(ChannelGroup(name, stages, tuple(producers), tuple(norms), channels, output))
    return groups


def channel_norms(module: nn.Module, groups: list[ChannelGroup] | None = None) -> dict[str, torch.Tensor]:
    """Ranking score of each group's channels: the sum over its producing layers of each output channel's filter l2
    norm (the paper's l2-norm criterion, summed over the layers a residual stream ties together)."""
    out = {}
    for g in groups if groups is not None else prunable_groups(module):
        layers = [module.get_submodule(p) for p in g.producers]
        out[g.name] = sum(m.weight.detach().flatten(1).norm(dim=1).float().cpu() for m in layers)
    return out


# ---------------------------------------------------------------------------------------------------- masks


class ChannelMasks(Mapping[str, torch.Tensor]):
    """A boolean keep-mask (True = kept) per group name, held on the CPU."""

    def __init__(self, keep: Mapping[str, torch.Tensor]) -> None:
        self._keep = {k: v.detach().to("cpu", torch.bool).clone() for k, v in keep.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._keep[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keep)

    def __len__(self) -> int:
        return len(self._keep)

    def kept(self, name: str) -> int:
        return int(self._keep[name].sum())

    def kept_indices(self, name: str) -> torch.Tensor:
        return self._keep[name].nonzero().flatten()

    def pruned_indices(self, name: str) -> torch.Tensor:
        return (~self._keep[name]).nonzero().flatten()

    def sparsity_of(self, names: Iterable[str]) -> float:
        """Masked fraction of the channels of the groups `names` together (the transmitted feature's groups)."""
        masks = [self._keep[n] for n in names]
        total = sum(m.numel() for m in masks)
        return 1.0 - sum(int(m.sum()) for m in masks) / total if total else 0.0

    def sparsity(self, name: str | None = None) -> float:
        """Masked fraction of one group's channels, or of all groups' channels together."""
        masks = [self._keep[name]] if name is not None else list(self._keep.values())
        total = sum(m.numel() for m in masks)
        return 1.0 - sum(int(m.sum()) for m in masks) / total if total else 0.0

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-able form: channel count and kept indices per group."""
        return {k: {"channels": v.numel(), "kept": v.nonzero().flatten().tolist()} for k, v in self._keep.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> ChannelMasks:
        keep = {}
        for k, v in d.items():
            m = torch.zeros(int(v["channels"]), dtype=torch.bool)
            m[torch.as_tensor(v["kept"], dtype=torch.long)] = True
            keep[k] = m
        return cls(keep)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}: {self.kept(k)}/{v.numel()}" for k, v in self._keep.items())
        return f"ChannelMasks({body})"


def check_sparsity(name: str, s: float) -> None:
    if not 0.0 <= s < 1.0:
        raise UserError(f"sparsity {name} must be in [0, 1), got {s}")


def stage_names(module: nn.Module) -> list[str]:
    """The stage names of the model a module is (or was cut from), in order."""
    return list(dict.fromkeys(s for _, s in part_info(module).stages))


def check_keys(per_stage: Mapping[str, float], stages: Iterable[str] = (), groups: Iterable[str] = ()) -> None:
    """Each sparsity target in [0, 1), and each key 'output', a group's name or under one of the model's stages
    (when neither stages nor groups are known, any key).

    Args:
        per_stage: the targets by key; stages: the model's stage names; groups: the names of its groups.
    """
    stages, groups = list(stages), set(groups)
    for key, s in per_stage.items():
        if (stages or groups) and key != "output" and key not in groups and key.split(".")[0] not in stages:
            example = next(iter(sorted(groups)), "conv3_x.0.conv1")
            raise UserError(f"unknown sparsity key {key!r}; use 'output', a stage ({', '.join(stages)}) or a group "
                            f"name such as {example!r}")
        check_sparsity(key, s)


def target_for(group: ChannelGroup, target: float, per_stage: Mapping[str, float]) -> float:
    """A group's target: by its name, then 'output' for the output group, then its stages (deepest first), then
    the global target."""
    keys = (group.name, "output" if group.is_output else None, *reversed(group.stages))
    return next((per_stage[k] for k in keys if k is not None and k in per_stage), target)


def masks_from_scores(scores: Mapping[str, torch.Tensor], sparsity: Mapping[str, float]) -> ChannelMasks:
    """Mask the floor(S * C) smallest-scored channels of each group (ties: lower index masked first), keeping at
    least one."""
    keep = {}
    for name, score in scores.items():
        c = score.numel()
        k = min(c - 1, math.floor(sparsity.get(name, 0.0) * c + 1e-6))
        m = torch.ones(c, dtype=torch.bool)
        m[torch.argsort(score, stable=True)[:k]] = False
        keep[name] = m
    return ChannelMasks(keep)


def compute_masks(device_part: nn.Module, target: float = 0.0, per_stage: Mapping[str, float] | None = None,
                  groups: list[ChannelGroup] | None = None) -> ChannelMasks:
    """One-shot l2-norm masks: the smallest S percent of each group's channels, S from `target_for`."""
    per_stage = dict(per_stage or {})
    check_sparsity("target", target)
    groups = groups if groups is not None else prunable_groups(device_part)
    check_keys(per_stage, stage_names(device_part), (g.name for g in groups))
    sparsity = {g.name: target_for(g, target, per_stage) for g in groups}
    return masks_from_scores(channel_norms(device_part, groups), sparsity)


def masked_tensors(root: nn.Module, g: ChannelGroup, stats: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors indexed by a group's output channel (dim 0): the producers' weight and bias, the norms' gamma and
    beta and, with `stats`, their running statistics."""
    for path in g.producers:
        layer = root.get_submodule(path)
        yield f"{path}.weight", layer.weight
        if layer.bias is not None:
            yield f"{path}.bias", layer.bias
    for path in g.norms:
        bn = root.get_submodule(path)
        if bn.affine:
            yield f"{path}.weight", bn.weight
            yield f"{path}.bias", bn.bias
        if stats and bn.track_running_stats:
            yield f"{path}.running_mean", bn.running_mean
            yield f"{path}.running_var", bn.running_var


def channel_view(keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return keep.to(t.device).view(-1, *([1] * (t.dim() - 1)))


@torch.no_grad()
def apply_masks(device_part: nn.Module, masks: ChannelMasks, groups: list[ChannelGroup] | None = None) -> None:
    """Zero, in place, the masked channels' conv filters and BN gamma/beta, so those channels output exactly 0."""
    by_name = {g.name: g for g in (groups if groups is not None else prunable_groups(device_part))}
    for name, keep in masks.items():
        for _, t in masked_tensors(device_part, by_name[name], stats=False):
            t.masked_fill_(~channel_view(keep, t), 0)
