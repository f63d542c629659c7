"""Device memory as deployed: a fresh process per runtime measures the peak resident memory of loading a bundle's
device part and running one image; a device loads no server program; the latency model counts the figure the
device names, the model's own where a row has none."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from crafted import write_dir
from test_onnx_device import onnx_files

from engine.deploy.bundle import load_bundle
from engine.deploy.footprint import measure_footprint
from engine.deploy.onnx_device import load_onnx_device
from engine.errors import UserError
from engine.latency import DEVICES, MEMORY_FIGURES, custom_device, latency_table
from engine.store import ResultsStore


def test_each_runtime_is_measured_in_its_own_process(tmp_path: Path) -> None:
    bundle = write_dir(onnx_files(), tmp_path / "b")
    script = measure_footprint(bundle, "torchscript")
    onnx = measure_footprint(bundle, "onnx")
    for f in (script, onnx):
        assert f.threads == 1 and 0 < f.runtime_only <= f.peak and f.part == f.peak - f.runtime_only
    assert onnx.peak < script.runtime_only  # the ONNX device process never imports torch


def test_a_bundle_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    files = onnx_files()
    files["device.onnx"] = b"not a model"
    with pytest.raises(UserError, match="measuring b with onnx failed: .*device.onnx"):
        measure_footprint(write_dir(files, tmp_path / "b"), "onnx")
    with pytest.raises(UserError, match="unknown runtime"):
        measure_footprint(tmp_path / "b", "tflite")


def test_the_device_side_holds_no_server_program(tmp_path: Path) -> None:
    bundle = write_dir(onnx_files(), tmp_path / "b")
    device, both = load_bundle(bundle, side="device"), load_bundle(bundle)
    assert device.server is None and both.server is not None
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    assert device.encode(device.device_output(image)) == both.encode(both.device_output(image))
    with pytest.raises(ValueError, match="device side only"):
        device.logits(torch.zeros(1, 48, dtype=torch.int64))
    # the device never reads the server's programs: their sizes are checked, their bytes are not
    for program in ("server.pt", "server.onnx"):
        data = (bundle / program).read_bytes()
        (bundle / program).write_bytes(bytes(len(data)))
    assert load_bundle(bundle, side="device").id == both.id and load_onnx_device(bundle).id == both.id
    with pytest.raises(UserError, match="server.onnx does not match its sha256|server.pt does not match its sha256"):
        load_bundle(bundle)
    (bundle / "server.pt").write_bytes(b"short")
    with pytest.raises(UserError, match="server.pt does not match its size in the manifest"):
        load_bundle(bundle, side="device")


def test_the_device_names_the_memory_figure_it_is_held_to() -> None:
    rows = pd.DataFrame([
        {"device_flops": 1e6, "server_flops": 1e6, "bits_actual": 8.0, "device_memory_bytes": 1e6,
         MEMORY_FIGURES["onnx"]: 90e6, MEMORY_FIGURES["torchscript"]: 600e6},
        {"device_flops": 1e6, "server_flops": 1e6, "bits_actual": 8.0, "device_memory_bytes": 2e6,
         MEMORY_FIGURES["onnx"]: math.nan, MEMORY_FIGURES["torchscript"]: math.nan},  # not measured
    ])
    server = DEVICES.get("rtx2080ti")

    def fits(figure: str, memory: str = "100MB") -> list[bool]:
        device = dataclasses.replace(custom_device("1GFLOP/s", memory, label="d"), memory_figure=figure)
        return latency_table(rows, device, server, 1e6)["feasible"].tolist()

    assert fits("model") == [True, True]
    assert fits("onnx") == [True, True]  # 90 MB measured; the unmeasured row keeps its model figure
    assert fits("torchscript") == [False, True]
    assert fits("onnx", "1.5MB") == [False, False]
    with pytest.raises(UserError, match="memory figure 'tflite'"):
        type(server)("x", 1e9, 1e9, "", "tflite")


def test_a_later_measurement_keeps_when_the_row_was_measured(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.put({"id": "a", "method": "original", "split": "conv4_x", "accuracy": 0.5})
    before = store.get("a")
    store.update("a", {MEMORY_FIGURES["onnx"]: 9e7})
    after = store.get("a")
    assert after[MEMORY_FIGURES["onnx"]] == 9e7 and after["accuracy"] == 0.5
    assert after["created_at"] == before["created_at"]
    with pytest.raises(UserError, match="no row b"):
        store.update("b", {})
