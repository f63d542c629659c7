import math
import sys
import threading
import time

import torch
from torch import nn

from engine.models import CifarResNet18, split
from engine.profile import count_flops, label_bits, param_bytes, peak_activation_bytes, profile_model, profile_split


def test_width_one_totals_the_paper_flops() -> None:
    flops = count_flops(CifarResNet18(1.0).eval(), torch.zeros(1, 3, 32, 32))
    assert abs(flops - 1.111e9) / 1.111e9 < 0.005
    assert abs(flops / 2 - 0.5554e9) / 0.5554e9 < 0.005  # MACs


def test_conv_flops_match_the_formula() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.zeros(1, 3, 16, 16)) == 2 * 8 * 16 * 16 * 3 * 3 * 3


def test_device_and_server_flops_add_up_and_grow_with_the_split() -> None:
    model = CifarResNet18(0.25)
    total = count_flops(model.eval(), torch.zeros(1, 3, 32, 32))
    rows = profile_model(model, (3, 32, 32), 10)
    for row in rows:
        assert row["device_flops"] + row["server_flops"] == total, row["split"]
    device = [r["device_flops"] for r in rows]
    assert device == sorted(device) and device[0] == 0 and device[-1] == total


def test_feature_bits_and_end_points() -> None:
    rows = {r["split"]: r for r in profile_model(CifarResNet18(0.25), (3, 32, 32), 10)}
    assert rows["conv4_x"]["feature_shape"] == [64, 8, 8]
    assert rows["conv4_x"]["bits_8bit"] == 8 * 64 * 8 * 8
    assert rows["conv4_x"]["bits_fp32"] == 32 * 64 * 8 * 8
    assert rows["device_only"]["bits_8bit"] == 4 == label_bits(10)
    assert rows["server_only"]["device_params_bytes"] == 0
    assert label_bits(2) == 1 and label_bits(1000) == 10


def test_param_bytes_is_fp32() -> None:
    assert param_bytes(nn.Linear(10, 5)) == 4 * (10 * 5 + 5)


def test_peak_activation_is_measured() -> None:
    # Two chained linears: input (4 B x 100), hidden (400), output (40). Peak: the hidden layer's output lives
    # together with its input while it is computed, then the input may be freed.
    net = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10)).eval()
    peak = peak_activation_bytes(net, torch.zeros(1, 100))
    assert peak >= 4 * (100 + 100)
    assert peak <= 4 * (100 + 100 + 10)
    # a device part that holds the shortcut input during the block costs more than the bare conv chain
    model = CifarResNet18(0.25).eval()
    device, _ = split(model, "conv2_x")
    x = torch.zeros(1, 3, 32, 32)
    feature_bytes = 4 * 16 * 32 * 32
    assert peak_activation_bytes(device, x) >= 3 * feature_bytes


def test_peak_activation_ignores_a_sampling_profiler() -> None:
    """A thread that samples the other threads' frames (as Dask workers do every 10 ms) keeps a frame, and its
    tensors, alive for a moment if the call returns meanwhile: the measured peak must not depend on it."""
    device, _ = split(CifarResNet18(0.125).eval(), "conv4_x")
    x = torch.zeros(1, 3, 32, 32)
    quiet = peak_activation_bytes(device, x)
    stop = threading.Event()

    def sample() -> None:  # every 10 ms, hold the other threads' frames for 1 ms
        me = threading.get_ident()
        while not stop.wait(0.01):
            held = [f for ident, f in sys._current_frames().items() if ident != me]
            time.sleep(0.001)
            del held

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert {peak_activation_bytes(device, x) for _ in range(20)} == {quiet}
    finally:
        stop.set()
        sampler.join()


def test_profile_memory_is_params_plus_activations() -> None:
    row = profile_split(CifarResNet18(0.25), "conv3_x", (3, 32, 32), 10)
    assert row["device_memory_bytes"] == row["device_params_bytes"] + row["device_activation_bytes"]
    assert row["feature_numel"] == math.prod(row["feature_shape"])
