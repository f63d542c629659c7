"""Communication-aware model compression, step 2 of the framework of Shao & Zhang 2020 ("Incremental network
pruning"): l2-norm channel ranking, channel masks, the incremental mask/train/restore iteration, activation pruning
of the split output, and physical removal of the pruned channels. Only the device part of a split CifarResNet18 is
pruned; the server part only has its first layer adapted to the channels the device still sends.

API
    prunable_groups(device_part) -> [ChannelGroup]   the coupled channel groups of a device part
    channel_norms(device_part) -> {group: scores}    summed l2 norms of each group's producing conv filters
    compute_masks(device_part, target, per_stage)    -> ChannelMasks: the smallest S percent of each group masked
    apply_masks(device_part, masks)                  zero the masked channels' filters and BN gamma/beta, in place
    SparsitySchedule, RAMPS                          S_i per iteration: linear or cubic ramp (Zhu & Gupta 2018)
    IncrementalPruner(device_part, schedule)         the paper's iteration; before_step()/after_step() or step(i),
                                                     end_iteration(), finalize() -> ChannelMasks, state_dict()
    remove_pruned_channels(device_part, masks, server) -> (device', server')   physically smaller copies
    ExpandChannels                                   server-side zero-fill where the server cannot drop inputs

Groups. Channels that must be pruned together form one group. A BasicBlock's conv1 output channels are internal to
the block (group "conv3_x.0.conv1": conv1 + bn1, consumed by conv2). The block outputs of a stage are tied by the
residual additions: every block's conv2 + bn2, the stage's projection shortcut (conv + bn), and, through the identity
shortcuts of conv2_x, the stem conv + bn, form one group named after the stage ("conv3_x"; the stem's group is
"conv2_x" once conv2_x blocks are on the device, "stem" when the split is at the stem). Its consumers are every
block's conv1 and the next stage's projection shortcut (or the head's Linear). A group is ranked by the sum, over its
producing convs, of each output channel's filter l2 norm. The group that produces the device's output is the
transmitted feature: pruning it is the paper's activation pruning (its sparsity key is "output").

Sparsity targets are looked up, per group, by: the group's name, "output" (for the output group), its stages from
the deepest ("conv2_x" before "stem"), then the global target. At least one channel of a group is always kept.

Masking and BN. A masked channel's conv filter AND its BN weight (gamma) and bias (beta) are set to 0, so the channel
outputs exactly 0 in train and eval mode (a zero conv output alone would still leave beta), the ReLU and residual
additions keep it 0, and consumers see 0 on that input. Gradient hooks zero the masked entries' gradients, and the
mask is re-applied after each optimizer step so momentum and weight decay cannot move them. At the end of an
iteration the masked filters, gamma, beta and BN running statistics are restored to their start-of-iteration values
(the statistics drift towards 0 while a channel is masked; restoring them keeps the restored channel usable).
Optimizer state (momentum) of masked entries is left as it is.

Pruning changes parameters in place, and `split` shares them with the model: deep-copy a cached model first.

Example (the training loop lives elsewhere)::

    pruner = IncrementalPruner(device, SparsitySchedule(0.5, {"output": 0.75}, ramp_iterations=10,
                                                        iteration_steps=200))
    for i, (x, y) in enumerate(batches):
        pruner.step(i)                        # or pruner.before_step()
        loss = F.cross_entropy(server(device(x)), y)
        opt.zero_grad(); loss.backward(); opt.step()
        pruner.after_step()
    masks = pruner.finalize()
    small_device, small_server = remove_pruned_channels(device, masks, server)
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from engine.errors import UserError
from engine.models import BasicBlock, CifarResNet18, Head, Stem
from engine.registry import Registry

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


def _child(unit: nn.Module, kind: type[nn.Module]) -> str:
    return next(n for n, m in unit.named_children() if isinstance(m, kind))


def prunable_groups(device_part: nn.Module) -> list[ChannelGroup]:
    """The prunable channel groups of a device part: a chain starting at the stem (the device `nn.Sequential` of
    `engine.models.split`, or a whole CifarResNet18), in chain order."""
    groups: list[ChannelGroup] = []
    stream: dict[str, Any] | None = None  # the residual-stream group being collected
    stage_idx, block_idx = 0, 0

    def close(is_output: bool = False) -> None:
        conv = _get(device_part, stream["producers"][0][0])
        groups.append(ChannelGroup(stream["stages"][-1], tuple(stream["stages"]), tuple(stream["producers"]),
                                   tuple(stream["consumers"]), conv.out_channels, is_output))

    for path, unit in _chain(device_part):
        if isinstance(unit, Stem):
            p = f"{path}." if path else ""
            producer = (p + _child(unit, nn.Conv2d), p + _child(unit, nn.BatchNorm2d))
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
            stream["consumers"].append(f"{path}.{_child(unit, nn.Linear)}")
            close()
            stream = None
        else:
            raise UserError(f"cannot prune unit {path!r} of type {type(unit).__name__}")
    if stream is not None:
        close(is_output=True)
    return groups


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def channel_norms(device_part: nn.Module, groups: list[ChannelGroup] | None = None) -> dict[str, torch.Tensor]:
    """Ranking score of each group's channels: the sum over its producing convs of each output channel's filter l2
    norm (the paper's l2-norm criterion, summed over the convs a residual stream ties together)."""
    out = {}
    for g in groups if groups is not None else prunable_groups(device_part):
        convs = [_get(device_part, c) for c, _ in g.producers]
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


def _check_sparsity(name: str, s: float) -> None:
    if not 0.0 <= s < 1.0:
        raise UserError(f"sparsity {name} must be in [0, 1), got {s}")


def _check_keys(per_stage: Mapping[str, float]) -> None:
    for key, s in per_stage.items():
        if key != "output" and key.split(".")[0] not in STAGES:
            raise UserError(f"unknown sparsity key {key!r}; use 'output', a stage ({', '.join(STAGES)}) or a group "
                            "name such as 'conv3_x.0.conv1'")
        _check_sparsity(key, s)


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
    _check_sparsity("target", target)
    _check_keys(per_stage)
    groups = groups if groups is not None else prunable_groups(device_part)
    sparsity = {g.name: target_for(g, target, per_stage) for g in groups}
    return masks_from_scores(channel_norms(device_part, groups), sparsity)


def _masked_tensors(root: nn.Module, g: ChannelGroup, stats: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors indexed by a group's output channel (dim 0): conv weight/bias, BN gamma/beta, running stats."""
    for conv_path, bn_path in g.producers:
        conv, bn = _get(root, conv_path), _get(root, bn_path)
        yield f"{conv_path}.weight", conv.weight
        if conv.bias is not None:
            yield f"{conv_path}.bias", conv.bias
        if bn.affine:
            yield f"{bn_path}.weight", bn.weight
            yield f"{bn_path}.bias", bn.bias
        if stats and bn.track_running_stats:
            yield f"{bn_path}.running_mean", bn.running_mean
            yield f"{bn_path}.running_var", bn.running_var


def _view(keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return keep.to(t.device).view(-1, *([1] * (t.dim() - 1)))


@torch.no_grad()
def apply_masks(device_part: nn.Module, masks: ChannelMasks, groups: list[ChannelGroup] | None = None) -> None:
    """Zero, in place, the masked channels' conv filters and BN gamma/beta, so those channels output exactly 0."""
    by_name = {g.name: g for g in (groups if groups is not None else prunable_groups(device_part))}
    for name, keep in masks.items():
        for _, t in _masked_tensors(device_part, by_name[name], stats=False):
            t.masked_fill_(~_view(keep, t), 0)


# ---------------------------------------------------------------------------------------------------- schedule

RAMPS: Registry[Callable[[float], float]] = Registry("sparsity ramp")
RAMPS.add("linear", lambda u: u)
RAMPS.add("cubic", lambda u: 1.0 - (1.0 - u) ** 3)  # Zhu & Gupta 2018, s_t = s_f (1 - (1 - t/T)^3) with s_0 = 0


@dataclass(frozen=True)
class SparsitySchedule:
    """S_i for pruning iteration i (0-based): each group's target times ramp((i + 1) / ramp_iterations), so the
    target is reached at iteration ramp_iterations - 1 and held after it. An iteration is `iteration_steps`
    optimizer steps. `per_stage` maps stages / group names / 'output' to targets (see `target_for`)."""

    target: float = 0.5
    per_stage: tuple[tuple[str, float], ...] | Mapping[str, float] = ()
    ramp_iterations: int = 10
    iteration_steps: int = 100
    ramp: str = "cubic"

    def __post_init__(self) -> None:
        items = self.per_stage.items() if isinstance(self.per_stage, Mapping) else self.per_stage
        object.__setattr__(self, "per_stage", tuple(sorted((str(k), float(v)) for k, v in items)))
        _check_sparsity("target", self.target)
        _check_keys(dict(self.per_stage))
        if self.ramp_iterations < 1 or self.iteration_steps < 1:
            raise UserError("ramp_iterations and iteration_steps must be positive integers")
        RAMPS.get(self.ramp)

    def fraction(self, iteration: int) -> float:
        """Share of the target reached at `iteration`, in (0, 1]."""
        return float(RAMPS.get(self.ramp)(min(1.0, (iteration + 1) / self.ramp_iterations)))

    def sparsity(self, group: ChannelGroup, iteration: int) -> float:
        return target_for(group, self.target, dict(self.per_stage)) * self.fraction(iteration)


# ---------------------------------------------------------------------------------------------------- pruner


class IncrementalPruner:
    """Incremental network pruning (Shao & Zhang 2020): each iteration (1) snapshots the weights and masks the
    smallest S_i percent of each group's channels by l2 norm, (2) trains with masked forward passes and masked
    updates, (3) drops the mask and restores the masked weights to their start-of-iteration values; S_i rises along
    `schedule` until the target. `finalize()` makes the last masks permanent.

    Use one protocol: `before_step()` before each forward pass and `after_step()` after each `optimizer.step()`
    (iterations end after `iteration_steps` calls of `after_step`), or `step(i)` before the forward pass of
    optimizer step i (the iteration is i // iteration_steps; it ends when i crosses its boundary)."""

    def __init__(self, device_part: nn.Module, schedule: SparsitySchedule) -> None:
        self.device_part = device_part
        self.schedule = schedule
        self.groups = prunable_groups(device_part)
        self.iteration = -1  # the active or last iteration
        self.masks: ChannelMasks | None = None  # the active or last masks
        self.active = False
        self.final = False
        self._steps_done = 0
        self._indexed = False
        self._snapshot: dict[str, torch.Tensor] = {}
        self._grad_keep: dict[str, torch.Tensor] = {}
        self._handles = []
        for g in self.groups:
            for key, t in _masked_tensors(device_part, g, stats=False):
                if t.requires_grad:
                    self._handles.append(t.register_hook(partial(self._mask_grad, key)))

    def _mask_grad(self, key: str, grad: torch.Tensor) -> torch.Tensor:
        keep = self._grad_keep.get(key)
        return grad if keep is None else grad * keep

    def sparsities(self, iteration: int | None = None) -> dict[str, float]:
        """S_i of each group at `iteration` (the current one by default)."""
        it = max(self.iteration, 0) if iteration is None else iteration
        return {g.name: self.schedule.sparsity(g, it) for g in self.groups}

    @property
    def at_target(self) -> bool:
        return self.iteration >= self.schedule.ramp_iterations - 1

    def _set_grad_masks(self, masks: ChannelMasks) -> None:
        self._grad_keep = {}
        for g in self.groups:
            for key, t in _masked_tensors(self.device_part, g, stats=False):
                self._grad_keep[key] = _view(masks[g.name], t).to(t.dtype)

    @torch.no_grad()
    def begin_iteration(self, iteration: int) -> ChannelMasks:
        """Snapshot the weights, rank the channels and mask the smallest S_i percent."""
        if self.active:
            self.end_iteration()
        self.iteration = iteration
        self._snapshot = {key: t.detach().clone() for g in self.groups
                          for key, t in _masked_tensors(self.device_part, g, stats=True)}
        scores = channel_norms(self.device_part, self.groups)
        self.masks = masks_from_scores(scores, self.sparsities(iteration))
        self._set_grad_masks(self.masks)
        apply_masks(self.device_part, self.masks, self.groups)
        self.active, self._steps_done = True, 0
        return self.masks

    @torch.no_grad()
    def end_iteration(self) -> None:
        """Drop the mask: masked channels get back their start-of-iteration weights and BN statistics."""
        if not self.active:
            return
        for g in self.groups:
            keep = self.masks[g.name]
            for key, t in _masked_tensors(self.device_part, g, stats=True):
                t.copy_(torch.where(_view(keep, t), t, self._snapshot[key].to(t.device)))
        self._snapshot, self._grad_keep = {}, {}
        self.active = False

    def reapply(self) -> None:
        """Zero the masked entries again (after an optimizer step, momentum or weight decay may have moved them)."""
        if self.masks is not None and (self.active or self.final):
            apply_masks(self.device_part, self.masks, self.groups)

    def before_step(self) -> None:
        if not self.final and not self.active:
            self.begin_iteration(self.iteration + 1)
        else:
            self.reapply()

    def after_step(self) -> None:
        self.reapply()
        if self.active and not self._indexed:
            self._steps_done += 1
            if self._steps_done >= self.schedule.iteration_steps:
                self.end_iteration()

    def step(self, step_index: int) -> None:
        """Call before the forward pass of optimizer step `step_index` (0-based)."""
        self._indexed = True
        if self.final:
            self.reapply()
            return
        it = step_index // self.schedule.iteration_steps
        if self.active and it != self.iteration:
            self.end_iteration()
        if not self.active:
            self.begin_iteration(it)
        else:
            self.reapply()

    def finalize(self) -> ChannelMasks:
        """Make the last masks permanent (masks at the target, one-shot, if no iteration ran): the masked weights stay
        0 and keep zero gradients; pass the result to `remove_pruned_channels`."""
        if self.final:
            return self.masks
        if self.masks is None:
            self.masks = compute_masks(self.device_part, self.schedule.target, dict(self.schedule.per_stage),
                                       self.groups)
        self._snapshot = {}
        self._set_grad_masks(self.masks)
        apply_masks(self.device_part, self.masks, self.groups)
        self.active, self.final = False, True
        return self.masks

    def close(self) -> None:
        """Remove the gradient hooks from the device part's parameters."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._grad_keep = {}

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (the model's own weights are saved with the model)."""
        return {"iteration": self.iteration, "active": self.active, "final": self.final,
                "steps_done": self._steps_done, "indexed": self._indexed,
                "masks": self.masks.to_dict() if self.masks is not None else None,
                "snapshot": {k: v.cpu() for k, v in self._snapshot.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration, self.active, self.final = state["iteration"], state["active"], state["final"]
        self._steps_done, self._indexed = state["steps_done"], state["indexed"]
        self.masks = ChannelMasks.from_dict(state["masks"]) if state["masks"] is not None else None
        self._snapshot = dict(state["snapshot"])
        self._grad_keep = {}
        if self.masks is not None and (self.active or self.final):
            self._set_grad_masks(self.masks)


# ---------------------------------------------------------------------------------------------------- removal


class ExpandChannels(nn.Module):
    """Server side: puts the received channels back at their original indices, zeros elsewhere. Used where the
    server's first layer cannot simply drop input channels (a block with an identity shortcut)."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.channels = int(keep.numel())
        self.register_buffer("index", keep.nonzero().flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], self.channels, *x.shape[2:])
        return out.index_copy(1, self.index, x)


def _sliced_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Conv2d:
    if conv.groups != 1:
        raise ValueError("grouped convolutions are not supported")
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if out_idx is not None:
        w = w[out_idx.to(w.device)]
        b = b[out_idx.to(w.device)] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx.to(w.device)]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=b is not None, padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new.train(conv.training).requires_grad_(conv.weight.requires_grad)


def _sliced_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    ref = bn.weight if bn.affine else bn.running_mean
    idx = idx.to(ref.device)
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device=ref.device,
                         dtype=ref.dtype)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[idx])
            new.bias.copy_(bn.bias[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _sliced_linear(lin: nn.Linear, in_idx: torch.Tensor) -> nn.Linear:
    w = lin.weight.detach()[:, in_idx.to(lin.weight.device)]
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new.train(lin.training)


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _slice_inputs(root: nn.Module, path: str, idx: torch.Tensor) -> None:
    m = _get(root, path)
    _replace(root, path, _sliced_linear(m, idx) if isinstance(m, nn.Linear) else _sliced_conv(m, None, idx))


def adapt_server(server: nn.Module, keep: torch.Tensor) -> nn.Module:
    """The server part (a copy, modified) taking only the kept channels: a first block with a projection shortcut
    has its conv1 and shortcut input channels cut, a first head its Linear's inputs; otherwise an `ExpandChannels`
    is put in front (zero-filling the dropped channels, as the masked model had them)."""
    server = copy.deepcopy(server)
    units = list(server.named_children())
    if not units:
        return server
    idx = keep.nonzero().flatten()
    name, first = units[0]
    if isinstance(first, BasicBlock) and len(first.shortcut) > 0:
        _slice_inputs(server, f"{name}.conv1", idx)
        _slice_inputs(server, f"{name}.shortcut.0", idx)
        return server
    if isinstance(first, Head):
        _slice_inputs(server, f"{name}.{_child(first, nn.Linear)}", idx)
        return server
    expand = ExpandChannels(keep).to(next(server.parameters()).device)
    if isinstance(server, nn.Sequential):
        return nn.Sequential(OrderedDict([("expand", expand), *units])).train(server.training)
    return nn.Sequential(expand, server)


def remove_pruned_channels(device_part: nn.Module, masks: ChannelMasks,
                           server: nn.Module | None = None) -> tuple[nn.Module, nn.Module | None]:
    """Copies of the device part with the masked channels physically removed (convs and BNs rebuilt with fewer
    channels, consumers with fewer inputs) and, when given, of the server adapted to the transmitted channels that
    remain. The originals are untouched; the result computes what the masked model computes."""
    groups = {g.name: g for g in prunable_groups(device_part)}
    unknown = [k for k in masks if k not in groups]
    if unknown:
        raise UserError(f"masks name groups this device part lacks: {', '.join(unknown)}; known: {', '.join(groups)}")
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    bn_idx: dict[str, torch.Tensor] = {}
    for name, keep in masks.items():
        g = groups[name]
        if keep.numel() != g.channels:
            raise UserError(f"mask {name!r} has {keep.numel()} channels, the group has {g.channels}")
        idx = keep.nonzero().flatten()
        for conv, bn in g.producers:
            out_idx[conv], bn_idx[bn] = idx, idx
        for c in g.consumers:
            in_idx[c] = idx
    new_device = copy.deepcopy(device_part)
    for path in {*out_idx, *in_idx}:
        m = _get(new_device, path)
        if isinstance(m, nn.Linear):
            _replace(new_device, path, _sliced_linear(m, in_idx[path]))
        else:
            _replace(new_device, path, _sliced_conv(m, out_idx.get(path), in_idx.get(path)))
    for path, idx in bn_idx.items():
        _replace(new_device, path, _sliced_bn(_get(new_device, path), idx))
    if server is None:
        return new_device, None
    out = next((g.name for g in groups.values() if g.is_output), None)
    return new_device, adapt_server(server, masks[out]) if out in masks else copy.deepcopy(server)
