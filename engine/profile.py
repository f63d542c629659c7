"""Per-split profile of a model, following the definitions of the design contract: device FLOPs counted by
`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add) at batch 1, device memory as fp32 parameter
bytes plus the measured peak of live activation bytes for one image, and the feature each split transmits."""

from __future__ import annotations

import math
import statistics
import time
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from engine.models import declared_points, part_info, split


def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass as FlopCounterMode counts them (convolutions and matmuls, 2 per MAC)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


def param_bytes(module: nn.Module) -> int:
    """fp32 bytes of the parameters (4 per parameter, whatever dtype they are held in)."""
    return 4 * sum(p.numel() for p in module.parameters())


class _LiveActivationBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages alive during a forward pass, and their peak."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude = exclude  # storages of parameters and buffers (views of weights are not activations)
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, live tensor objects]
        self.current = 0
        self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.exclude:
            return
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def peak_activation_bytes(module: nn.Module, x: torch.Tensor, passes: int = 5) -> int:
    """Peak bytes of live activations (input included) in an eager, no-grad forward pass of `x`.

    Measured, not estimated: every tensor an op returns is tracked until Python frees it. Backend scratch space
    (e.g. im2col buffers inside a convolution kernel) is not visible and not counted. The smallest peak of `passes`
    passes: a sampling profiler in another thread (a Dask worker's, a debugger's) that holds a frame for a moment
    keeps that frame's tensors alive and can only raise a pass's peak."""
    weights = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    peaks = []
    for _ in range(max(1, passes)):
        mode = _LiveActivationBytes(weights)
        y = x.clone()
        with torch.no_grad(), mode:
            mode.track(y)
            out = module(y)
            del y
        del out
        peaks.append(mode.peak)
    return min(peaks)


def label_bits(num_classes: int) -> int:
    """Bits of the label a device-only deployment sends: ceil(log2 classes), at least one (its fixed-length form,
    `engine.deploy.bundle_files.encode_sent`)."""
    return max(1, math.ceil(math.log2(num_classes)))


def device_seconds(module: nn.Module, x: torch.Tensor, repeats: int = 21, warmup: int = 3) -> float:
    """Median wall time of one no-grad forward pass of `x` on this machine's CPU (the measured latency beside the
    modelled one; calibrates a device preset against a machine the user owns)."""
    if len(list(module.children())) == 0 and not any(True for _ in module.parameters()):
        return 0.0
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            module(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_parts(device: nn.Module, server: nn.Module, point: str, input_shape: tuple[int, int, int],
                  num_classes: int, time_device: bool = True) -> dict:
    """Device/server FLOPs, device memory, measured device CPU time and the transmitted feature of a split model
    given as its two deployed parts (pruned or encoded parts included), at batch 1."""
    device, server = device.eval(), server.eval()
    x = torch.zeros(1, *input_shape)
    with torch.no_grad():
        feature = device(x)
    params = param_bytes(device)
    activations = peak_activation_bytes(device, x)
    row = {
        "split": point,
        "split_order": part_info(device).order,
        "device_flops": count_flops(device, x),
        "server_flops": count_flops(server, feature),
        "device_params_bytes": params,
        "device_activation_bytes": activations,
        "device_memory_bytes": params + activations,
        "device_cpu_seconds": device_seconds(device, x) if time_device else None,
        "cpu_threads": torch.get_num_threads(),
    }
    if point == "device_only":
        row.update(feature_shape=[1], feature_numel=1, bits_fp32=label_bits(num_classes),
                   bits_8bit=label_bits(num_classes))
    else:
        shape = list(feature.shape[1:])
        numel = math.prod(shape)
        row.update(feature_shape=shape, feature_numel=numel, bits_fp32=32 * numel, bits_8bit=8 * numel)
    return row


def profile_split(model: nn.Module, point: str, input_shape: tuple[int, int, int], num_classes: int,
                  time_device: bool = True) -> dict:
    """`profile_parts` of the unmodified model cut at `point`."""
    device, server = split(model.eval(), point)
    return profile_parts(device, server, point, input_shape, num_classes, time_device)


def profile_model(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
                  points: list[str] | None = None, time_device: bool = False) -> list[dict]:
    """`profile_split` for each split point (all the model's declared points by default), in order."""
    names = points or [p.name for p in declared_points(model)]
    return [profile_split(model, p, input_shape, num_classes, time_device) for p in names]
