"""Channel groups and masks, the ground of communication-aware pruning (Shao & Zhang 2020, "Incremental network
pruning"). Channels that must be pruned together form one group: a BasicBlock's conv1 outputs are internal to the
block (group "conv3_x.0.conv1"); a stage's block outputs are tied by the residual additions (every block's conv2 +
bn2, the projection shortcut and, through the identity shortcuts of conv2_x, the stem), one group named after the
stage. A group is ranked by the sum of its producing convs' filter l2 norms; the group producing the device's output
is the transmitted feature, and pruning it is the paper's activation pruning (sparsity key "output"). Targets are
looked up by the group's name, "output", its stages from the deepest, then the global target; at least one channel
of a group is kept. A masked channel's filter and its BN gamma and beta are zeroed, so it outputs exactly 0."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import UserError
from engine.models import BasicBlock, CifarResNet18, Head, Stem

STAGES = ("stem", *CifarResNet18.stage_names)


# ---------------------------------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels pruned together. Paths are relative to the module the group was found in."""

    name: str
    stages: tuple[str, ...]
    producers: tuple[tuple[str, str], ...]  # (conv path, bn path) whose output channels are the group's
    consumers: tuple[str, ...]  # conv / linear paths (inside the device part) whose inputs are the group's channels
    channels: int
    is_output: bool = False


def _chain(root: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(root, CifarResNet18):
        paths = {id(m): n for n, m in root.named_modules()}
        return [(paths[id(unit)], unit) for _, unit in root.units()]
    return list(root.named_children())


def child_name(unit: nn.Module, kind: type[nn.Module]) -> str:
    return next(n for n, m in unit.named_children() if isinstance(m, kind))


def prunable_groups(device_part: nn.Module) -> list[ChannelGroup]:
    """The prunable channel groups of a device part: a chain starting at the stem (the device `nn.Sequential` of
    `engine.models.split`, or a whole CifarResNet18), in chain order."""
    groups: list[ChannelGroup] = []
    stream: dict[str, Any] | None = None  # the residual-stream group being collected
    stage_idx, block_idx = 0, 0

    def close(is_output: bool = False) -> None:
        conv = get_module(device_part, stream["producers"][0][0])
        groups.append(ChannelGroup(stream["stages"][-1], tuple(stream["stages"]), tuple(stream["producers"]),
                                   tuple(stream["consumers"]), conv.out_channels, is_output))

    for path, unit in _chain(device_part):
        if isinstance(unit, Stem):
            p = f"{path}." if path else ""
            producer = (p + child_name(unit, nn.Conv2d), p + child_name(unit, nn.BatchNorm2d))
            stream = {"stages": ["stem"], "producers": [producer], "consumers": []}
        elif isinstance(unit, BasicBlock | Head) and stream is None:
            raise UserError("a device part must start at the stem; pass the device part of engine.models.split")
        elif isinstance(unit, BasicBlock):
            projection = len(unit.shortcut) > 0
            if projection and stream["stages"] != ["stem"]:
                stage_idx, block_idx = stage_idx + 1, 0
            stage = CifarResNet18.stage_names[stage_idx]
            stream["consumers"].append(f"{path}.conv1")
            inner = ChannelGroup(f"{stage}.{block_idx}.conv1", (stage,), ((f"{path}.conv1", f"{path}.bn1"),),
                                 (f"{path}.conv2",), unit.conv1.out_channels)
            if projection:
                stream["consumers"].append(f"{path}.shortcut.0")
                close()
                groups.append(inner)
                stream = {"stages": [stage], "producers": [(f"{path}.conv2", f"{path}.bn2"),
                                                           (f"{path}.shortcut.0", f"{path}.shortcut.1")],
                          "consumers": []}
            else:
                groups.append(inner)
                stream["producers"].append((f"{path}.conv2", f"{path}.bn2"))
                if stream["stages"][-1] != stage:
                    stream["stages"].append(stage)
            block_idx += 1
        elif isinstance(unit, Head):
            stream["consumers"].append(f"{path}.{child_name(unit, nn.Linear)}")
            close()
            stream = None
        else:
            raise UserError(f"cannot prune unit {path!r} of type {type(unit).__name__}")
    if stream is not None:
        close(is_output=True)
    return groups


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def channel_norms(device_part: nn.Module, groups: list[ChannelGroup] | None = None) -> dict[str, torch.Tensor]:
    """Ranking score of each group's channels: the sum over its producing convs of each output channel's filter l2
    norm (the paper's l2-norm criterion, summed over the convs a residual stream ties together)."""
    out = {}
    for g in groups if groups is not None else prunable_groups(device_part):
        convs = [get_module(device_part, c) for c, _ in g.producers]
        out[g.name] = sum(c.weight.detach().flatten(1).norm(dim=1).float().cpu() for c in convs)
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


def check_keys(per_stage: Mapping[str, float]) -> None:
    for key, s in per_stage.items():
        if key != "output" and key.split(".")[0] not in STAGES:
            raise UserError(f"unknown sparsity key {key!r}; use 'output', a stage ({', '.join(STAGES)}) or a group "
                            "name such as 'conv3_x.0.conv1'")
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
    check_keys(per_stage)
    groups = groups if groups is not None else prunable_groups(device_part)
    sparsity = {g.name: target_for(g, target, per_stage) for g in groups}
    return masks_from_scores(channel_norms(device_part, groups), sparsity)


def masked_tensors(root: nn.Module, g: ChannelGroup, stats: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors indexed by a group's output channel (dim 0): conv weight/bias, BN gamma/beta, running stats."""
    for conv_path, bn_path in g.producers:
        conv, bn = get_module(root, conv_path), get_module(root, bn_path)
        yield f"{conv_path}.weight", conv.weight
        if conv.bias is not None:
            yield f"{conv_path}.bias", conv.bias
        if bn.affine:
            yield f"{bn_path}.weight", bn.weight
            yield f"{bn_path}.bias", bn.bias
        if stats and bn.track_running_stats:
            yield f"{bn_path}.running_mean", bn.running_mean
            yield f"{bn_path}.running_var", bn.running_var


def channel_view(keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return keep.to(t.device).view(-1, *([1] * (t.dim() - 1)))


@torch.no_grad()
def apply_masks(device_part: nn.Module, masks: ChannelMasks, groups: list[ChannelGroup] | None = None) -> None:
    """Zero, in place, the masked channels' conv filters and BN gamma/beta, so those channels output exactly 0."""
    by_name = {g.name: g for g in (groups if groups is not None else prunable_groups(device_part))}
    for name, keep in masks.items():
        for _, t in masked_tensors(device_part, by_name[name], stats=False):
            t.masked_fill_(~channel_view(keep, t), 0)
