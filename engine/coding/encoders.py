"""Feature encoders at the split: the two-step encoding of Shao & Zhang 2020 ("Dimension reduction": a conv layer that
removes channels, then, for the reshaped spatial feature, a fully connected layer to d dimensions; the server's
decoder is the complement) and BottleNet++'s conv autoencoder (Shao & Zhang 2020, ICC workshops: channel and stride-2
spatial reduction, sigmoid). `EncodedSplit` chains device part -> encoder -> quantiser -> channel -> decoder -> server
part; the channel slot is an identity here (a noisy channel layer goes there for JSCC).

Any map works, non-square and with sides that are no multiple of the stride (7x7, 14x14, 5x5): the encoder pads it
with zeros to the next multiple, the decoder crops its output back. Both encoders keep the paper's bound of < 1 %
extra computation for their default knobs: the conv's kernel equals its stride (a patchify conv, as many MACs as a
1x1 conv on the full map), the default keeps a quarter of the channels and shrinks the map to at most 8x8 before the
FC layer (tests/integration/test_encoders.py checks the bound at every split and width).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from engine.coding.quantizers import LatentQuantizer
from engine.errors import UserError
from engine.registry import Registry

Shape = tuple[int, int, int]


@torch.no_grad()
def feature_shape(device: nn.Module, input_shape: Shape) -> Shape:
    """(C, H, W) of what a (possibly pruned) device part outputs for one image."""
    was = device.training
    device.eval()
    out = device(torch.zeros(1, *input_shape))
    device.train(was)
    if out.dim() != 4:
        raise UserError(f"the split feature must be a [C, H, W] map, got shape {tuple(out.shape[1:])}")
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def default_stride(h: int, w: int, target: int = 8) -> int:
    """The largest power-of-2 stride dividing the map that leaves it at least `target` pixels on each side."""
    s = 1
    while h % (2 * s) == 0 and w % (2 * s) == 0 and h // (2 * s) >= target and w // (2 * s) >= target:
        s *= 2
    return s


def default_channels(c: int) -> int:
    return max(1, c // 4)


def _check_stride(shape: Shape, stride: int) -> tuple[int, int]:
    """The (height, width) of a map of `shape` reduced by `stride`: every side rounded up, so any map (non-square,
    odd, 7x7) is covered; the encoder pads it to a multiple of the stride, the decoder crops back."""
    _, h, w = shape
    if stride < 1:
        raise UserError(f"stride must be >= 1, got {stride}")
    return -(-h // stride), -(-w // stride)


def _padding(shape: Shape, stride: int) -> tuple[int, int, int, int]:
    """The zero padding (left, right, top, bottom) that makes a map's sides multiples of `stride`."""
    rows, cols = _check_stride(shape, stride)
    return 0, cols * stride - shape[2], 0, rows * stride - shape[1]


class _Down(nn.Conv2d):
    """A patchify convolution (kernel = stride) over the map padded with zeros to a multiple of the stride."""

    def __init__(self, shape: Shape, c_out: int, stride: int) -> None:
        super().__init__(shape[0], c_out, kernel_size=stride, stride=stride, bias=False)
        self.pad = _padding(shape, stride)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(nn.functional.pad(x, self.pad) if any(self.pad) else x)


class _Up(nn.Module):
    """The transposed patchify convolution (a 1x1 convolution at stride 1), cropped back to the map's size."""

    def __init__(self, c_in: int, shape: Shape, stride: int) -> None:
        super().__init__()
        self.size = shape[1:]
        self.conv = (nn.Conv2d(c_in, shape[0], kernel_size=1, bias=False) if stride == 1
                     else nn.ConvTranspose2d(c_in, shape[0], kernel_size=stride, stride=stride, bias=False))
        self.crop = any(_padding(shape, stride))

    def forward(self, z: Tensor) -> Tensor:
        y = self.conv(z)
        return y[:, :, : self.size[0], : self.size[1]] if self.crop else y


def _down(shape: Shape, c_out: int, stride: int) -> nn.Conv2d:
    return _Down(shape, c_out, stride) if any(_padding(shape, stride)) else nn.Conv2d(
        shape[0], c_out, kernel_size=stride, stride=stride, bias=False)


def _up(c_in: int, shape: Shape, stride: int) -> nn.Module:
    if any(_padding(shape, stride)):
        return _Up(c_in, shape, stride)
    if stride == 1:
        return nn.Conv2d(c_in, shape[0], kernel_size=1, bias=False)
    return nn.ConvTranspose2d(c_in, shape[0], kernel_size=stride, stride=stride, bias=False)


class TwoStepEncoder(nn.Module):
    """Dimension reduction of Shao & Zhang 2020: conv (C -> channels, kernel = stride) + BN + ReLU, then, when d > 0,
    the flattened map through an FC layer to d dimensions; tanh bounds the latent to (-1, 1) for the quantiser."""

    def __init__(self, in_shape: Shape, channels: int | None = None, d: int | None = 32,
                 stride: int | None = None) -> None:
        super().__init__()
        c, h, w = in_shape
        self.in_shape = in_shape
        self.channels = default_channels(c) if channels is None else int(channels)
        self.stride = default_stride(h, w) if stride is None else int(stride)
        self.d = int(d or 0)
        if self.channels < 1 or self.d < 0:
            raise UserError(f"encoder channels must be >= 1 and d >= 0, got {self.channels}, {self.d}")
        self.map_shape = (self.channels, *_check_stride(in_shape, self.stride))
        self.conv = _down(in_shape, self.channels, self.stride)
        self.bn = nn.BatchNorm2d(self.channels)
        self.fc = nn.Linear(math.prod(self.map_shape), self.d) if self.d else None

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.d,) if self.d else self.map_shape

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        if self.fc is not None:
            y = self.fc(y.flatten(1))
        return torch.tanh(y)


class TwoStepDecoder(nn.Module):
    """The complement on the server: FC d -> map + ELU, then a transposed conv back to the feature's channels and
    size, BN and ReLU (the server part expects a block's post-ReLU output)."""

    def __init__(self, out_shape: Shape, channels: int, d: int, stride: int) -> None:
        super().__init__()
        self.out_shape = out_shape
        self.map_shape = (channels, *_check_stride(out_shape, stride))
        self.fc = nn.Linear(d, math.prod(self.map_shape)) if d else None
        self.up = _up(channels, out_shape, stride)
        self.bn = nn.BatchNorm2d(out_shape[0])

    def forward(self, z: Tensor) -> Tensor:
        if self.fc is not None:
            z = nn.functional.elu(self.fc(z)).reshape(len(z), *self.map_shape)
        return torch.relu(self.bn(self.up(z)))


class BottleneckEncoder(nn.Module):
    """BottleNet++'s encoder: conv (C -> channels, kernel 2, stride 2) + BN + sigmoid, so the latent lies in (0, 1)
    for its 8-bit quantiser."""

    def __init__(self, in_shape: Shape, channels: int, stride: int = 2) -> None:
        super().__init__()
        self.in_shape = in_shape
        self.channels, self.stride = int(channels), int(stride)
        if self.channels < 1:
            raise UserError(f"encoder channels must be >= 1, got {self.channels}")
        self.map_shape = (self.channels, *_check_stride(in_shape, self.stride))
        self.conv = _down(in_shape, self.channels, self.stride)
        self.bn = nn.BatchNorm2d(self.channels)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.map_shape

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.bn(self.conv(x)))


class BottleneckDecoder(nn.Module):
    """BottleNet++'s decoder: transposed conv (kernel 2, stride 2) back to C channels, BN, ReLU."""

    def __init__(self, out_shape: Shape, channels: int, stride: int = 2) -> None:
        super().__init__()
        self.up = _up(channels, out_shape, stride)
        self.bn = nn.BatchNorm2d(out_shape[0])

    def forward(self, z: Tensor) -> Tensor:
        return torch.relu(self.bn(self.up(z)))


EncoderPair = tuple[nn.Module, nn.Module]
ENCODERS: Registry[Callable[..., EncoderPair]] = Registry("encoder")


@ENCODERS.register("two_step")
def two_step(in_shape: Shape, channels: int | None = None, d: int | None = 32,
             stride: int | None = None) -> EncoderPair:
    """The paper's two-step encoder and its complementary decoder."""
    enc = TwoStepEncoder(in_shape, channels, d, stride)
    return enc, TwoStepDecoder(in_shape, enc.channels, enc.d, enc.stride)


@ENCODERS.register("bottleneck")
def bottleneck(in_shape: Shape, channels: int, stride: int = 2) -> EncoderPair:
    """BottleNet++'s conv autoencoder."""
    return BottleneckEncoder(in_shape, channels, stride), BottleneckDecoder(in_shape, channels, stride)


class _SymbolsOut(nn.Module):
    def __init__(self, quantizer: LatentQuantizer) -> None:
        super().__init__()
        self.quantizer = quantizer

    def forward(self, y: Tensor) -> Tensor:
        return self.quantizer.quantize(y)


class _SymbolsIn(nn.Module):
    def __init__(self, quantizer: LatentQuantizer) -> None:
        super().__init__()
        self.quantizer = quantizer

    def forward(self, s: Tensor) -> Tensor:
        return self.quantizer.dequantize(s)


class EncodedSplit(nn.Module):
    """device part -> encoder -> quantiser -> channel -> decoder -> server part. Without a quantiser the encoder's
    output goes to the channel as it is (the JSCC layout); the channel defaults to an identity (noiseless link)."""

    def __init__(self, device: nn.Module, encoder: nn.Module, quantizer: LatentQuantizer | None, decoder: nn.Module,
                 server: nn.Module, channel: nn.Module | None = None) -> None:
        super().__init__()
        self.device_part = device
        self.encoder = encoder
        self.quantizer = quantizer
        self.channel = channel if channel is not None else nn.Identity()
        self.decoder = decoder
        self.server_part = server

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, quantiser loss); quantised values carry the straight-through gradient."""
        return self.decode(self.encoder(self.device_part(x)))

    def decode(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, quantiser loss) from the encoder's output; the codeword search runs in fp32 under autocast."""
        loss = y.new_zeros((), dtype=torch.float32)
        if self.quantizer is not None:
            with torch.autocast(y.device.type, enabled=False):
                y, _, loss = self.quantizer(y.float())
        return self.server_part(self.decoder(self.channel(y))), loss

    @torch.no_grad()
    def latent(self, x: Tensor) -> Tensor:
        return self.encoder(self.device_part(x)).float()

    @torch.no_grad()
    def symbols(self, x: Tensor) -> Tensor:
        """The int64 symbols [B, n] the device sends."""
        if self.quantizer is None:
            raise ValueError("no quantiser: this split sends the encoder's output through its channel")
        return self.quantizer.quantize(self.latent(x))

    @torch.no_grad()
    def from_symbols(self, symbols: Tensor) -> Tensor:
        """Server side: logits from received symbols."""
        assert self.quantizer is not None
        return self.server_part(self.decoder(self.channel(self.quantizer.dequantize(symbols))))

    def deployed_parts(self) -> tuple[nn.Sequential, nn.Sequential]:
        """(device: image -> symbols, server: symbols -> logits), sharing this model's modules: what runs on each
        side, for profiling (the encoder counts on the device, the decoder on the server)."""
        if self.quantizer is None:
            return (nn.Sequential(self.device_part, self.encoder),
                    nn.Sequential(self.channel, self.decoder, self.server_part))
        return (nn.Sequential(self.device_part, self.encoder, _SymbolsOut(self.quantizer)),
                nn.Sequential(_SymbolsIn(self.quantizer), self.channel, self.decoder, self.server_part))
