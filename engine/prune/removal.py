"""Physical removal of pruned channels: physically smaller copies of the device part, and the server part's first
layer adapted to the channels the device still sends (`ExpandChannels` zero-fills where the server cannot drop
inputs)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from engine.errors import UserError
from engine.models import BasicBlock, Head
from engine.prune.groups import ChannelMasks, child_name, get_module, prunable_groups

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
    m = get_module(root, path)
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
        _slice_inputs(server, f"{name}.{child_name(first, nn.Linear)}", idx)
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
        m = get_module(new_device, path)
        if isinstance(m, nn.Linear):
            _replace(new_device, path, _sliced_linear(m, in_idx[path]))
        else:
            _replace(new_device, path, _sliced_conv(m, out_idx.get(path), in_idx.get(path)))
    for path, idx in bn_idx.items():
        _replace(new_device, path, _sliced_bn(get_module(new_device, path), idx))
    if server is None:
        return new_device, None
    out = next((g.name for g in groups.values() if g.is_output), None)
    return new_device, adapt_server(server, masks[out]) if out in masks else copy.deepcopy(server)
