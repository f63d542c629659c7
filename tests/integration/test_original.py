"""The `original` baseline: 8-bit quantisation + Huffman at each split, measured on the test set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.coding.uniform import UniformQuantizer
from engine.data import ImageData, normalize
from engine.entropy import decode_payload, encode_payloads
from engine.entropy.huffman import HuffmanCodec
from engine.methods import METHODS, RunContext
from engine.models import split, split_names
from engine.profiles import PROFILES
from engine.provenance import describe_environments, training_environment


@pytest.fixture(scope="module")
def rows(small_data: ImageData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    cache = tmp_path_factory.mktemp("original")
    profile = PROFILES.get("smoke")
    ctx = RunContext(small_data, profile, cache)
    method = METHODS.get("original")
    base = profile.base_config(small_data.fingerprint)
    eight = [v for v in method.variants(base, split_names()) if v.knob("bits") == 8]  # one row per split
    return {v.split: method.run(v, ctx) for v in eight} | {"_ctx": ctx, "_base": base}


def test_rows_follow_the_definitions(rows: dict) -> None:
    ctx: RunContext = rows["_ctx"]
    for name in split_names():
        row = rows[name]
        assert row["method"] == "original" and row["split"] == name
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["test_images"] == 400
        assert row["png_bits"] == pytest.approx(ctx.png_bits())
        assert row["trained_on"] == describe_environments([[training_environment(torch.device("cpu"))]])
    assert rows["server_only"]["bits_actual"] == pytest.approx(ctx.png_bits())
    assert rows["server_only"]["device_flops"] == 0
    label = rows["device_only"]  # the label the protocol carries in ceil(log2 classes) bits; log2(classes) its ideal
    assert label["bits_actual"] == 4.0 and label["bits_raw"] == 4
    assert label["bits_ideal"] == pytest.approx(math.log2(10))
    assert 0.0 <= label["bits_entropy"] <= math.log2(10)
    assert rows["server_only"]["accuracy"] == rows["device_only"]["accuracy"] == rows["stem"]["base_test_accuracy"]
    for name in ("stem", "conv2_x", "conv3_x", "conv4_x", "conv5_x"):
        row = rows[name]
        assert row["bits_raw"] == 8 * np.prod(row["feature_shape"])
        assert row["bits_ideal"] <= row["bits_actual"] <= row["bits_raw"] + 8


def test_bits_are_the_real_bitstream(rows: dict, small_data: ImageData) -> None:
    """Rebuild the conv4_x codec independently and check the reported mean equals the encoded streams' length."""
    ctx: RunContext = rows["_ctx"]
    model, _ = ctx.base(rows["_base"])
    device, server = split(model, "conv4_x")
    with torch.no_grad():
        calib = device(normalize(ctx.calibration_images(rows["_base"]), small_data.mean, small_data.std))
        quantizer = UniformQuantizer(8).fit(calib)
        codec = HuffmanCodec.fit(quantizer.quantize(calib).reshape(len(calib), -1).numpy().astype(np.int64), 256)
        q = quantizer.quantize(device(normalize(small_data.test_x, small_data.mean, small_data.std)))
    symbols = q.reshape(len(q), -1).numpy().astype(np.int64)
    streams = encode_payloads(codec, symbols)
    assert np.mean([p.bits for p in streams]) == pytest.approx(rows["conv4_x"]["bits_actual"])
    assert np.array_equal(decode_payload(codec, streams[0], symbols.shape[1]), symbols[0])
    with torch.no_grad():
        acc = float((server(quantizer.dequantize(q)).argmax(1) == small_data.test_y).float().mean())
    assert acc == pytest.approx(rows["conv4_x"]["accuracy"])
