"""Every coding on any feature shape: non-square maps and sides that are no power of two (or multiple of the
stride), on synthetic tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.coding.encoders import ENCODERS, EncodedSplit
from engine.coding.learned import EncodingConfig, build_quantizer
from engine.coding.quantizers import UniformRounding

SHAPES = [(16, 7, 7), (8, 14, 14), (12, 5, 5), (6, 6, 10), (4, 3, 32), (32, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("encoder", "kwargs"), [("bottleneck", {"channels": 3, "stride": 2}),
                                                 ("two_step", {"channels": 4, "d": 8, "stride": None}),
                                                 ("two_step", {"channels": 4, "d": 8, "stride": 2}),
                                                 ("two_step", {"channels": 4, "d": 0, "stride": 4})])
def test_encoders_restore_any_map(shape: tuple[int, int, int], encoder: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    enc, dec = ENCODERS.get(encoder)(shape, **kwargs)
    x = torch.randn(2, *shape)
    latent = enc(x)
    assert tuple(latent.shape[1:]) == tuple(enc.latent_shape)
    out = dec(latent)
    assert out.shape == x.shape
    out.sum().backward()  # trains: gradients reach the encoder's weights
    assert enc.conv.weight.grad is not None and enc.conv.weight.grad.abs().sum() > 0


def test_a_7x7_map_is_encoded_by_bottlenet_pp_end_to_end() -> None:  # refused before: "stride 2 must divide"
    torch.manual_seed(0)
    shape = (16, 7, 7)
    enc, dec = ENCODERS.get("bottleneck")(shape, 4, 2)
    assert enc.latent_shape == (4, 4, 4)  # 7 rounded up to 8, halved
    config = EncodingConfig(encoder="bottleneck", quantizer="uniform", bits=8)
    quantizer = build_quantizer(config, enc.latent_shape)
    assert isinstance(quantizer, UniformRounding)
    model = EncodedSplit(nn.Identity(), enc, quantizer, dec, nn.Sequential(nn.Flatten(), nn.Linear(16 * 49, 3)))
    model.eval()
    x = torch.randn(5, *shape)
    symbols = model.symbols(x)
    assert symbols.shape == (5, 64) and int(symbols.max()) < 256
    logits = model.from_symbols(symbols)
    assert logits.shape == (5, 3) and torch.allclose(logits, model(x)[0], atol=1e-5)
    traced = torch.jit.trace(nn.Sequential(enc), x[:1])  # deployable at batch 1, padding included
    assert torch.equal(traced(x[:1]), enc(x[:1]))
