"""Uniform `bits`-bit quantisation of the split output, calibrated on training features, with a Huffman code built on
them: the `original` baseline's coding in Shao & Zhang 2020 (Fig. 3), and `three_step`'s `encoder="none"`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.coding.base import CodedSplit, CodingEnv, Deployed, FeatureCoding, register_coding
from engine.config import VariantConfig
from engine.data import normalize
from engine.entropy.huffman import HuffmanCodec
from engine.entropy.payload import payload_bits


class UniformQuantizer:
    """Uniform scalar quantiser with 2**bits levels spanning [lo, hi], range calibrated on training features
    (the 8-bit quantisation of the paper's `original` baseline). Rounds to the nearest level, clamps outside."""

    def __init__(self, bits: int = 8, lo: float = 0.0, hi: float = 1.0) -> None:
        if not 1 <= bits <= 16:
            raise ValueError(f"bits must be in [1, 16], got {bits}")
        if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
            raise ValueError(f"need finite lo <= hi, got [{lo}, {hi}]")
        self.bits = int(bits)
        self.lo = float(lo)
        self.hi = float(hi)

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def step(self) -> float:
        """Distance between adjacent levels; 1.0 for a degenerate range so that everything maps to level 0."""
        return (self.hi - self.lo) / (self.levels - 1) if self.hi > self.lo else 1.0

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.bits <= 8 else torch.int64

    def fit(self, features: Tensor) -> UniformQuantizer:
        """Calibrate [lo, hi] to the min and max of `features` (ReLU features give lo = 0)."""
        if features.numel() == 0:
            raise ValueError("cannot calibrate a quantiser on an empty tensor")
        self.lo = float(features.min())
        self.hi = float(features.max())
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise ValueError(f"non-finite features: range [{self.lo}, {self.hi}]")
        return self

    def quantize(self, x: Tensor) -> Tensor:
        """Integer symbols in [0, 2**bits): uint8 for bits <= 8, int64 otherwise."""
        q = torch.round((x.detach().float().clamp(self.lo, self.hi) - self.lo) / self.step)
        return q.clamp_(0, self.levels - 1).to(self.dtype)

    def dequantize(self, q: Tensor) -> Tensor:
        return q.float() * self.step + self.lo

    def state_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UniformQuantizer:
        return cls(bits=int(state["bits"]), lo=float(state["lo"]), hi=float(state["hi"]))


def fit_uniform_huffman(device: nn.Module, cfg: VariantConfig,
                        env: CodingEnv) -> tuple[UniformQuantizer, HuffmanCodec, torch.Tensor]:
    """The `bits`-bit uniform quantiser and the Huffman code of the split output of `device`, both fitted on the
    calibration (training) images.

    Returns:
        the quantiser, the code and the calibration features.
    """
    bits = int(cfg.knob("bits", 8))
    with torch.no_grad():
        calib = torch.cat([device.eval()(normalize(xb, env.data.mean, env.data.std))
                           for xb in env.calibration_images(cfg.base).split(500)])
    quantizer = UniformQuantizer(bits).fit(calib)
    q = quantizer.quantize(calib)
    codec = HuffmanCodec.fit(q.reshape(len(q), -1).numpy().astype(np.int64), alphabet_size=2**bits)
    return quantizer, codec, calib


def coded_accuracy(device: nn.Module, server: nn.Module, quantizer: UniformQuantizer, x: torch.Tensor,
                   y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> float:
    """Top-1 accuracy of uint8 images `x` through the quantised feature (what the Huffman code carries losslessly).

    Returns:
        the fraction of `y` the server part predicts (NaN for no images).
    """
    correct = 0
    with torch.no_grad():
        for xb, yb in zip(x.split(500), y.split(500), strict=True):
            q = quantizer.quantize(device(normalize(xb, mean, std)))
            correct += int((server(quantizer.dequantize(q)).argmax(1) == yb).sum())
    return correct / len(y) if len(y) else float("nan")


class UniformSymbols(nn.Module):
    """Deployed device side of 8-bit + Huffman: the split output quantised to flat int64 symbols [B, n]."""

    def __init__(self, device: nn.Module, quantizer: UniformQuantizer) -> None:
        super().__init__()
        self.device_part, self.bits, self.lo, self.hi = device, quantizer.bits, quantizer.lo, quantizer.hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return UniformQuantizer(self.bits, self.lo, self.hi).quantize(self.device_part(x)).flatten(1).long()


class UniformValues(nn.Module):
    """Deployed server side of 8-bit + Huffman: flat symbols back to the feature map, then the server part."""

    def __init__(self, quantizer: UniformQuantizer, shape: tuple[int, ...], server: nn.Module) -> None:
        super().__init__()
        self.bits, self.lo, self.hi, self.shape, self.server_part = quantizer.bits, quantizer.lo, quantizer.hi, \
            tuple(shape), server

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        values = UniformQuantizer(self.bits, self.lo, self.hi).dequantize(symbols)
        return self.server_part(values.unflatten(1, self.shape))


@register_coding("none")
class UniformHuffman(FeatureCoding):
    """The split output sent as it is: uniform `bits`-bit quantisation (knob `bits`, 8 by default) and a Huffman
    code, both fitted on training features; nothing is trained."""

    def measure(self, device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv) -> CodedSplit:
        """Bits and accuracy from every test image's bitstream (see `FeatureCoding.measure`)."""
        data, bits = env.data, int(cfg.knob("bits", 8))
        mean, std = data.mean, data.std
        device, server = device.eval(), server.eval()
        quantizer, codec, calib = fit_uniform_huffman(device, cfg, env)
        correct, actual, ideal, first = 0, [], [], None  # first: the first batch's symbols, to time the coding on
        with torch.no_grad():
            for xb, yb in zip(data.test_x.split(500), data.test_y.split(500), strict=True):
                q = quantizer.quantize(device(normalize(xb, mean, std)))
                symbols = q.reshape(len(q), -1).numpy().astype(np.int64)
                actual.append(payload_bits(codec, symbols))
                ideal.append(codec.ideal_bits_per_image(symbols))
                correct += int((server(quantizer.dequantize(q)).argmax(1) == yb).sum())
                first = symbols if first is None else first
        val_x, val_y = env.validation_images(cfg.base)
        val = coded_accuracy(device, server, quantizer, val_x, val_y, mean, std)
        return CodedSplit(device, server, correct / len(data.test_y), val, {
            "bits_actual": float(np.concatenate(actual).mean()),
            "bits_ideal": float(np.concatenate(ideal).mean()),
            "bits_raw": float(bits * calib[0].numel()),
        }, {"coding_cpu_seconds": codec.coding_seconds(first)})

    def deploy(self, device: nn.Module, server: nn.Module, cfg: VariantConfig, env: CodingEnv) -> Deployed:
        """Image -> flat symbols on the device, symbols -> logits on the server (see `FeatureCoding.deploy`)."""
        quantizer, codec, calib = fit_uniform_huffman(device, cfg, env)
        shape = tuple(calib.shape[1:])
        tables = {"kind": "uniform", **quantizer.state_dict(), "feature_shape": list(shape)}
        return Deployed(UniformSymbols(device.eval(), quantizer).eval(),
                        UniformValues(quantizer, shape, server.eval()).eval(), "entropy", codec, tables,
                        int(calib[0].numel()), quantizer.levels)
