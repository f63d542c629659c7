"""The device part of co-inference without torch: a bundle read with the checks `load_bundle` makes (sizes before
reading, manifest sha256, JSON tables, meta.json's shapes, the codec table, ONNX programs self-contained protobuf),
its device.onnx run by onnxruntime at batch 1, what it sends entropy-coded with the bundle's codec
(`engine.entropy`), and the frames sent by `engine.deploy.client.DeviceClient` through the paced link. Nothing here,
nor anything it imports, imports torch: a device needs numpy, onnxruntime, onnx (the model checks), dahuffman and
constriction (the codecs), and pillow only for a bundle that sends the PNG image."""

from __future__ import annotations

import math
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.deploy.bundle_files import BundleIdentity, BundleTables, encode_sent, read_bundle
from engine.entropy.payload import Payload
from engine.errors import UserError

MAX_INPUT_FILE_BYTES = 512 << 20  # an --inputs archive, its arrays uncompressed: 30,000 CIFAR images are 92 MB


class OnnxDevice(BundleIdentity):
    """A bundle's device part run by onnxruntime (batch 1) with its entropy coder: what `DeviceClient` drives in
    place of a TorchScript `Bundle`. A bundle that sends the PNG image has no device program."""

    def __init__(self, path: Path, tables: BundleTables, session: Any) -> None:
        self.path, self.tables, self.session = path, tables, session
        self.meta, self.selection, self.codec = tables.meta, tables.selection, tables.codec
        self.input_name = session.get_inputs()[0].name if session is not None else ""

    def device_output(self, image: np.ndarray) -> np.ndarray:
        """What the device program makes of one uint8 image [C, H, W] (or [1, C, H, W]).

        Args:
            image: the uint8 image.

        Returns:
            The program's output at batch 1 (the image itself for a PNG bundle).
        """
        x = np.asarray(image, dtype=np.uint8)
        x = x if x.ndim == 4 else x[None]
        if self.session is None:
            return x
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]

    def encode(self, sent: np.ndarray) -> tuple[Payload, int]:
        """(payload, count) of one image's device output, coded as the TorchScript bundle codes it."""
        return encode_sent(self.coding, self.codec, sent, int(self.meta["num_classes"]))

    def warm_up(self, side: str = "device", calls: int = 3) -> None:
        """Run the device program on zeros a few times, so that its first calls do not land in the first images."""
        for _ in range(calls):
            self.device_output(np.zeros(self.meta["input_shape"], dtype=np.uint8))

    def program_seconds(self, images: np.ndarray) -> float:
        """Median seconds per image of the device program, one image at a time and warm.

        Args:
            images: uint8 images [N, C, H, W].

        Returns:
            The median over the images (0 for none).
        """
        times = []
        for image in images:
            start = time.perf_counter()
            self.device_output(image)
            times.append(time.perf_counter() - start)
        return float(np.median(times)) if times else 0.0


def _session(data: bytes, threads: int | None, name: str) -> Any:
    """An onnxruntime session of the CPU provider on a checked ONNX program; a model it refuses is a UserError."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("the onnx runtime needs onnxruntime: pip install onnxruntime (see requirements.txt)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors share no base class below Exception
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"bundle {name}: onnxruntime refuses device.onnx ({reason}); export the bundle again") from None


def _check_device(device: OnnxDevice, name: str) -> None:
    """The program's input is the uint8 image at batch 1, and one zero image runs through program and encoder into
    meta.json's sent_shape."""
    meta = device.meta
    if device.session is not None:
        inputs = device.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or list(inputs[0].shape) != [1, *meta["input_shape"]]:
            raise UserError(f"bundle {name}: device.onnx does not take one uint8 image of shape "
                            f"{[1, *meta['input_shape']]}; export the bundle again")
    try:
        sent = device.device_output(np.zeros(meta["input_shape"], dtype=np.uint8))
        if device.coding != "png" and list(sent.shape) != [1, *meta["sent_shape"]]:
            raise ValueError(f"device.onnx sends shape {list(sent.shape[1:])}, meta.json's sent_shape is "
                             f"{meta['sent_shape']}")
        device.encode(sent)
    except Exception as exc:  # onnxruntime's run errors, or a codec refusing the symbols
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"bundle {name}: its ONNX device part does not run as meta.json describes ({reason}); "
                        "export the bundle again") from None


def load_onnx_device(path: Path | str, threads: int | None = None) -> OnnxDevice:
    """A bundle's device part for onnxruntime, read with `load_bundle`'s checks and run once on a zero image.

    Args:
        path: the bundle directory or .zip.
        threads: onnxruntime's intra-op threads (default: its own choice).

    Returns:
        The device part, ready for `DeviceClient`.
    """
    path = Path(path)
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    tables = read_bundle(path, known=False, side="device")  # the method and split registries import torch
    needs_program = tables.meta["coding"] != "png"
    if needs_program and "device.onnx" not in tables.files:
        raise UserError(f"bundle {path.name} has no ONNX device part (exported before ONNX was); export it again "
                        "or use --runtime torchscript")
    session = _session(tables.files["device.onnx"], threads, path.name) if needs_program else None
    tables.files.clear()  # every program's bytes, the server's included: a device holds none of them
    device = OnnxDevice(path, tables, session)
    _check_device(device, path.name)
    return device


def _check_npz(path: Path) -> None:
    """Refuse a .npz whose arrays, as its zip directory and their .npy headers claim them, hold more than
    MAX_INPUT_FILE_BYTES or more than their members' bytes, before numpy allocates them."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if sum(i.file_size for i in infos) > MAX_INPUT_FILE_BYTES:
            raise ValueError(f"its arrays expand past {MAX_INPUT_FILE_BYTES:,} bytes")
        for info in infos:
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
            if math.prod(shape) * dtype.itemsize > info.file_size:
                raise ValueError(f"{info.filename} claims shape {list(shape)}, more than its {info.file_size:,} bytes")


def read_inputs(path: Path | str, input_shape: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Test images for a device without torch: a .npz with `images` (uint8 [N, C, H, W]) and optionally `labels`
    (integers [N]), as `python -m engine export --test-images` writes it; read without pickle.

    Args:
        path: the .npz file.
        input_shape: the bundle's [C, H, W].

    Returns:
        The images and the labels (None when the file has none).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no --inputs file at {path}; write one with `python -m engine export --test-images PATH`")
    if path.stat().st_size > MAX_INPUT_FILE_BYTES:
        raise UserError(f"{path.name} has {path.stat().st_size:,} bytes, over the {MAX_INPUT_FILE_BYTES:,} of an "
                        "--inputs file")
    try:
        _check_npz(path)
        with np.load(path, allow_pickle=False) as npz:
            images = np.asarray(npz["images"])
            labels = np.asarray(npz["labels"]) if "labels" in npz.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"{path.name} is not an --inputs .npz with an `images` array ({reason})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or list(images.shape[1:]) != list(input_shape) or not len(images):
        raise UserError(f"{path.name}: images must be uint8 [N, {', '.join(map(str, input_shape))}], got "
                        f"{images.dtype} {list(images.shape)}")
    if labels is not None and (labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"{path.name}: labels must be {len(images)} integers, got {labels.dtype} {list(labels.shape)}")
    return images, labels
