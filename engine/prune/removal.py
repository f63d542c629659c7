"""Physical removal of pruned channels: physically smaller copies of a device part (or a whole model), pruned by
Torch-Pruning along the same dependency graph that found the groups (Fang et al. 2023, DepGraph), and the server
part's first layers adapted to the channels the device still sends (`ExpandChannels` zero-fills where the server
cannot drop inputs)."""

from __future__ import annotations

import copy
import re
from collections import OrderedDict

import torch
from torch import nn
from torch_pruning.ops import OPTYPE

from engine.errors import UserError
from engine.models import example_input
from engine.prune.groups import ChannelMasks, dependency_graph, eval_mode, prunable_groups

# operations (autograd names) that map 0 to 0 channel by channel: a masked channel stays 0 through them, as a removed
# one stays absent (T is a linear layer's weight transposed)
ZERO_PRESERVING = {"Relu", "Hardtanh", "MaxPool2DWithIndices", "AvgPool2D", "AdaptiveAvgPool2D", "Mean", "View",
                   "Reshape", "UnsafeView", "Flatten", "Clone", "T"}

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


def _group(dg, layer: nn.Module, pruned: list[int]):  # noqa: ANN001, ANN202 - torch_pruning objects
    """The Torch-Pruning group removing channels `pruned` of what `layer` produces, with every coupled layer."""
    return dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, idxs=pruned)


def _sent_removed(group) -> set[int]:  # noqa: ANN001 - a torch_pruning group
    """The channels of the module's output a group removes (in a concatenated output, at their own offsets)."""
    return {int(getattr(i, "idx", i)) for dep, idxs in group if dep.target.type == OPTYPE.OUTPUT for i in idxs}


def _slices_cleanly(group, probe: nn.Module, dg) -> bool:  # noqa: ANN001 - torch_pruning objects
    """Whether every layer a probe's channels reach only reads them (convolution or linear inputs, through
    zero-preserving pointwise operations): then dropping them equals zero-filling them."""
    for dep, _ in group:
        node = dep.target
        if node.module is probe:
            continue
        if node.type == OPTYPE.ELEMENTWISE:
            if re.sub(r"Backward\d*$", "", str(node.module._grad_fn)) not in ZERO_PRESERVING:
                return False
        elif node.type == OPTYPE.RESHAPE:
            continue
        elif not (node.type in (OPTYPE.CONV, OPTYPE.LINEAR) and dg.is_in_channel_pruning_fn(dep.handler)):
            return False
    return True


def adapt_server(server: nn.Module, keep: torch.Tensor, feature_shape: tuple[int, ...]) -> nn.Module:
    """The server part (a copy, modified) taking only the kept channels: where the received channels only feed
    convolution or linear inputs (a block with a projection shortcut, a classifier head), those inputs are cut;
    otherwise an `ExpandChannels` is put in front (zero-filling the dropped channels, as the masked model had them).

    Args:
        server: the server part; keep: the transmitted group's keep-mask; feature_shape: the unpruned feature's
        shape (C, ...).
    Returns:
        the adapted copy.
    """
    server = copy.deepcopy(server)
    if next(server.parameters(), None) is None or bool(keep.all()):
        return server
    pruned = (~keep).nonzero().flatten().tolist()
    channels = feature_shape[0]
    probe = nn.Conv2d(channels, channels, 1) if len(feature_shape) == 3 else nn.Linear(channels, channels)
    ref = next(server.parameters())
    wrapped = nn.Sequential(probe.to(ref.device, ref.dtype), server)
    dg = dependency_graph(wrapped, torch.zeros(1, *feature_shape, device=ref.device, dtype=ref.dtype))
    group = dg.get_pruning_group(probe, dg.get_pruner_of_module(probe).prune_out_channels, idxs=pruned)
    if _slices_cleanly(group, probe, dg):
        group.prune()
        return wrapped[1]
    expand = ExpandChannels(keep).to(ref.device)
    if isinstance(server, nn.Sequential):
        return nn.Sequential(OrderedDict([("expand", expand), *server.named_children()])).train(server.training)
    return nn.Sequential(expand, server)


def remove_pruned_channels(device_part: nn.Module, masks: ChannelMasks,
                           server: nn.Module | None = None) -> tuple[nn.Module, nn.Module | None]:
    """Copies of the device part (or whole model) with the masked channels physically removed (every layer of each
    group rebuilt with fewer channels, its consumers with fewer inputs) and, when given, of the server adapted to the
    transmitted channels that remain. The originals are untouched; the result computes what the masked model
    computes.

    Args:
        device_part: a device part or a model; masks: keep-masks by group name; server: the server part, or None.
    Returns:
        (the smaller device part, the adapted server or None).
    """
    groups = {g.name: g for g in prunable_groups(device_part)}
    unknown = [k for k in masks if k not in groups]
    if unknown:
        raise UserError(f"masks name groups this device part lacks: {', '.join(unknown)}; known: {', '.join(groups)}")
    for name, keep in masks.items():
        if keep.numel() != groups[name].channels:
            raise UserError(f"mask {name!r} has {keep.numel()} channels, the group has {groups[name].channels}")
    with torch.no_grad(), eval_mode(device_part):
        shape = tuple(device_part(example_input(device_part)).shape[1:])
    new_device = copy.deepcopy(device_part)
    pruned = {name: (~keep).nonzero().flatten().tolist() for name, keep in masks.items() if not keep.all()}
    sent: set[int] = set()
    if pruned:
        dg = dependency_graph(new_device)
        roots = {name: new_device.get_submodule(groups[name].producers[0]) for name in pruned}
        for name, idxs in pruned.items():  # the output's indices before any removal shifts them
            sent |= _sent_removed(_group(dg, roots[name], idxs))
        for name, idxs in pruned.items():
            _group(dg, roots[name], idxs).prune()
    if server is None:
        return new_device, None
    if not any(g.is_output and g.name in masks for g in groups.values()):
        return new_device, copy.deepcopy(server)
    keep = torch.ones(shape[0], dtype=torch.bool)
    keep[sorted(sent)] = False
    return new_device, adapt_server(server, keep, shape)
