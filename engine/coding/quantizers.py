"""Learned quantisation of an encoder's latent, the second step of the two-step feature encoding of Shao & Zhang 2020
("learning-driven source coding"): the network learns the codewords instead of rounding to fixed levels.

Every quantiser maps a latent [B, ...] to integer symbols [B, n] (what is entropy-coded and sent) and to the values
the decoder receives. In training, the values carry a straight-through gradient (the encoder sees the gradient of
the quantised value as its own), and `loss` is the VQ-VAE codebook + commitment term (van den Oord et al. 2017):
||sg(y) - e||^2 + beta ||y - sg(e)||^2, as the paper's code trains its codewords.

    ScalarCodebook(d, bits)            2**bits learned codewords per dimension (one symbol per dimension)
    VectorCodebook(d, size, groups)    a learned codebook per group of d/groups dimensions (one symbol per group);
                                       groups=1 is the paper's code for deep splits (one symbol per image)
    UniformRounding(shape, bits)       2**bits fixed levels spanning [lo, hi]: the ablation the learned ones must beat,
                                       and BottleNet++'s 8-bit quantiser

`enabled = False` passes the latent through unquantised (the paper's warm-up) while still training the codewords.
`init_from(y)` places the codewords on data (quantiles / k-means) before quantisation is switched on."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import UserError
from engine.registry import Registry


class Quantized(NamedTuple):
    values: Tensor  # what the decoder receives, shaped like the latent (straight-through in training)
    symbols: Tensor  # int64 [B, n]: the symbols sent
    loss: Tensor  # codebook + commitment loss, a scalar (0 without learned codewords)


class LatentQuantizer(nn.Module):
    """Common interface: forward(y) -> Quantized; quantize(y) -> symbols; dequantize(symbols) -> values."""

    alphabet_size: int
    symbols_per_image: int

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True

    def forward(self, y: Tensor) -> Quantized:
        raise NotImplementedError

    @torch.no_grad()
    def quantize(self, y: Tensor) -> Tensor:
        """The symbols [B, n] for a latent, as int64."""
        return self._assign(y.float())[0]

    def dequantize(self, symbols: Tensor) -> Tensor:
        """The values the decoder receives for symbols [B, n] (shaped like the latent)."""
        raise NotImplementedError

    def _assign(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(symbols [B, n], nearest codeword values shaped like y)."""
        raise NotImplementedError

    def init_from(self, y: Tensor) -> None:
        """Place learned codewords on a sample of latents (no-op for fixed levels)."""

    def contexts(self) -> np.ndarray:
        """The entropy model index of each of the n symbols (one model per symbol position by default)."""
        return np.arange(self.symbols_per_image)

    @property
    def raw_bits(self) -> float:
        """Bits per image of a fixed-length code: n * log2(alphabet)."""
        return self.symbols_per_image * math.log2(self.alphabet_size)

    def _straight_through(self, y: Tensor, e: Tensor, beta: float) -> tuple[Tensor, Tensor]:
        codebook = F.mse_loss(e, y.detach())
        if not self.enabled:
            return y, codebook
        return y + (e - y).detach(), codebook + beta * F.mse_loss(y, e.detach())


QUANTIZERS: Registry[type[LatentQuantizer]] = Registry("quantizer")


@QUANTIZERS.register("scalar")
class ScalarCodebook(LatentQuantizer):
    """2**bits learned scalar codewords per latent dimension; each dimension goes to its nearest codeword."""

    def __init__(self, d: int, bits: int = 2, beta: float = 0.25, lo: float = -1.0, hi: float = 1.0) -> None:
        super().__init__()
        if d < 1 or not 1 <= bits <= 16:
            raise UserError(f"scalar codebook needs d >= 1 and 1 <= bits <= 16, got d={d}, bits={bits}")
        self.d, self.bits, self.beta = d, bits, beta
        self.alphabet_size = 1 << bits
        self.symbols_per_image = d
        self.codewords = nn.Parameter(torch.linspace(lo, hi, self.alphabet_size).repeat(d, 1))  # [d, K]

    def _assign(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codeword per dimension by binary search in the sorted codewords (memory O(B d), not O(B d K));
        traced for a bundle, by comparing with every codeword (sort and searchsorted have no ONNX export)."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self._assign_dense(y)
        v = y.reshape(len(y), self.d).t().contiguous()  # [d, B]
        ordered, order = self.codewords.detach().sort(dim=1, stable=True)
        hi = torch.searchsorted(ordered, v.detach()).clamp_(max=self.alphabet_size - 1)
        lo = (hi - 1).clamp_(min=0)
        closer_hi = (ordered.gather(1, hi) - v.detach()).abs() < (v.detach() - ordered.gather(1, lo)).abs()
        idx = order.gather(1, torch.where(closer_hi, hi, lo))  # [d, B]
        e = self.codewords.gather(1, idx)
        return idx.t(), e.t().reshape(y.shape)

    def _assign_dense(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest codeword per dimension against all K at once (memory O(B d K): the deployed programs, batch 1)."""
        v = y.reshape(len(y), self.d)
        idx = (v[:, :, None] - self.codewords.detach()[None]).abs().argmin(-1)  # [B, d]
        return idx, self.codewords.gather(1, idx.t()).t().reshape(y.shape)

    def forward(self, y: Tensor) -> Quantized:
        idx, e = self._assign(y)
        values, loss = self._straight_through(y, e, self.beta)
        return Quantized(values, idx, loss)

    def dequantize(self, symbols: Tensor) -> Tensor:
        return self.codewords.gather(1, symbols.long().t()).t()

    @torch.no_grad()
    def init_from(self, y: Tensor, iterations: int = 10) -> None:
        """Per dimension: codewords at the latent's quantiles, refined by Lloyd iterations (1-d k-means)."""
        flat = y.detach().float().reshape(len(y), self.d)
        k = self.alphabet_size
        q = (torch.arange(k, dtype=torch.float32) + 0.5) / k
        cw = torch.quantile(flat, q, dim=0).t().contiguous()  # [d, K]
        for _ in range(iterations):
            idx = torch.cat([(chunk[:, :, None] - cw[None]).abs().argmin(-1)
                             for chunk in flat.split(max(1, (1 << 24) // (self.d * k)))]).t()  # [d, N]
            sums = torch.zeros(self.d, k).scatter_add_(1, idx, flat.t())
            counts = torch.zeros(self.d, k).scatter_add_(1, idx, torch.ones_like(flat.t()))
            cw = torch.where(counts > 0, sums / counts.clamp_min(1), cw)
        self.codewords.copy_(cw)


@QUANTIZERS.register("vector")
class VectorCodebook(LatentQuantizer):
    """A learned codebook of `size` vectors for each of `groups` slices of the latent (product quantisation); each
    slice is sent as the index of its nearest codeword, log2(size) bits. groups = 1 is the paper's code."""

    def __init__(self, d: int, size: int = 256, groups: int = 1, beta: float = 0.25) -> None:
        super().__init__()
        if d < 1 or groups < 1 or d % groups or not 2 <= size <= 1 << 16:
            raise UserError(f"vector codebook needs groups dividing d and 2 <= size <= 65536, got d={d}, "
                            f"groups={groups}, size={size}")
        self.d, self.groups, self.beta = d, groups, beta
        self.dim = d // groups
        self.alphabet_size = size
        self.symbols_per_image = groups
        self.codewords = nn.Parameter(torch.empty(groups, size, self.dim).uniform_(-1, 1))  # [G, K, m]

    def _assign(self, y: Tensor) -> tuple[Tensor, Tensor]:
        flat = y.reshape(len(y), self.groups, self.dim).transpose(0, 1)  # [G, B, m]
        dist = (flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ self.codewords.transpose(1, 2)
                + self.codewords.pow(2).sum(-1)[:, None, :])  # [G, B, K]
        idx = dist.argmin(-1)  # [G, B]
        e = torch.gather(self.codewords, 1, idx[:, :, None].expand(-1, -1, self.dim))  # [G, B, m]
        return idx.t(), e.transpose(0, 1).reshape(y.shape)

    def forward(self, y: Tensor) -> Quantized:
        idx, e = self._assign(y)
        values, loss = self._straight_through(y, e, self.beta)
        return Quantized(values, idx, loss)

    def dequantize(self, symbols: Tensor) -> Tensor:
        s = symbols.long().t()  # [G, B]
        e = torch.gather(self.codewords, 1, s[:, :, None].expand(-1, -1, self.dim))
        return e.transpose(0, 1).reshape(len(symbols), self.d)

    @torch.no_grad()
    def init_from(self, y: Tensor, iterations: int = 15, seed: int = 0) -> None:
        """k-means per group from distinct random latents; an emptied cluster is re-seeded to a random latent."""
        flat = y.detach().float().reshape(len(y), self.groups, self.dim).transpose(0, 1)  # [G, N, m]
        n, k = flat.shape[1], self.alphabet_size
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(n, generator=g)[: k] if n >= k else torch.randint(0, n, (k,), generator=g)
        cw = flat[:, pick].clone()
        if n < k:
            cw += 1e-3 * torch.randn(cw.shape, generator=g)
        for _ in range(iterations):
            idx = torch.cdist(flat, cw).argmin(-1)  # [G, N]
            sums = torch.zeros_like(cw).scatter_add_(1, idx[:, :, None].expand(-1, -1, self.dim), flat)
            counts = torch.zeros(self.groups, k).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
            empty = counts == 0
            cw = torch.where(empty[:, :, None], flat[:, torch.randint(0, n, (k,), generator=g)], sums /
                             counts.clamp_min(1)[:, :, None])
        self.codewords.copy_(cw)


@QUANTIZERS.register("uniform")
class UniformRounding(LatentQuantizer):
    """2**bits evenly spaced, fixed levels on [lo, hi] (rounding with a straight-through gradient); the ablation of
    the learned codewords, and BottleNet++'s 8-bit quantiser of a sigmoid output (lo 0, hi 1). `shape` is the
    latent's shape without the batch; `contexts` "position" gives each symbol its own entropy model, "channel" one
    per channel of a [C, H, W] latent."""

    def __init__(self, shape: int | tuple[int, ...], bits: int = 2, lo: float = -1.0, hi: float = 1.0,
                 contexts: str = "position") -> None:
        super().__init__()
        if not 1 <= bits <= 16 or not hi > lo:
            raise UserError(f"uniform rounding needs 1 <= bits <= 16 and lo < hi, got {bits}, [{lo}, {hi}]")
        if contexts not in ("position", "channel"):
            raise UserError(f"contexts must be 'position' or 'channel', got {contexts!r}")
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.bits, self.lo, self.hi, self.context_kind = bits, lo, hi, contexts
        self.alphabet_size = 1 << bits
        self.symbols_per_image = math.prod(self.shape)
        self.step = (hi - lo) / (self.alphabet_size - 1)

    def _assign(self, y: Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.round((y.clamp(self.lo, self.hi) - self.lo) / self.step)
        return idx.reshape(len(y), -1).long(), idx * self.step + self.lo

    def forward(self, y: Tensor) -> Quantized:
        idx, e = self._assign(y)
        values = y + (e - y).detach() if self.enabled else y
        return Quantized(values, idx, y.new_zeros(()))

    def dequantize(self, symbols: Tensor) -> Tensor:
        return (symbols.float() * self.step + self.lo).reshape(len(symbols), *self.shape)

    def contexts(self) -> np.ndarray:
        if self.context_kind == "channel" and len(self.shape) > 1:
            return np.repeat(np.arange(self.shape[0]), math.prod(self.shape[1:]))
        return np.arange(self.symbols_per_image)
