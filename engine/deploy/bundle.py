"""Reading a deployable bundle: `load_bundle` checks sizes from the archive's directory, the manifest's sha256 of
every file and each file's form before anything is deserialised; programs are TorchScript (restoring tensors and
TorchScript code only, no Python unpickling), define no code that runs at load and call no operator that reaches
outside the process, and nothing in a bundle is loaded with pickle. `Bundle` runs the device
and server programs and the entropy coder, as real co-inference does."""

from __future__ import annotations

import io
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.deploy.bundle_files import (  # noqa: F401 - the bundle's constants, importable from here as before
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    CODINGS,
    FILE_LIMITS,
    MAX_BUNDLE_BYTES,
    MAX_INPUT_ELEMENTS,
    MAX_SENT_ELEMENTS,
    MAX_TABLE_BYTES,
    ONNX_OPSET,
    BundleIdentity,
    encode_sent,
    json_bytes,
    label_alphabet,
    read_bundle,
    sha256_hex,
)
from engine.entropy import EntropyCodec, Payload, decode_payload, fixed_bits
from engine.entropy.payload import unpack_fixed
from engine.errors import UserError

# What a program's forward may call: torch's operators (aten, prim, quantized) but none that reach outside the
# process (read or write files, call other machines, run Python); a program that names one is refused before it runs.
PROGRAM_NAMESPACES = ("aten", "prim", "quantized")
FORBIDDEN_OPS = frozenset({"aten::from_file", "aten::save", "prim::rpc_async", "prim::rpc_sync", "prim::rpc_remote",
                           "prim::PythonOp", "prim::IgnoredPythonOp"})


def _jit_load(data: bytes) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

def _check_torchscript(data: bytes, file: str, name: str) -> None:
    """Refuse a program that is not a TorchScript archive (a pickle, a torch.save archive) before any loader sees
    it, and one whose members expand past MAX_BUNDLE_BYTES."""
    what = f"bundle {name}: {file} is not a TorchScript program"
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise UserError(f"{what} (not a zip archive: a pickle?); export the bundle again") from None
    names = {i.filename for i in infos}
    prefix = next(iter(names), "").split("/", 1)[0]
    required = {f"{prefix}/data.pkl", f"{prefix}/constants.pkl", f"{prefix}/version"}
    if not all(n.startswith(f"{prefix}/") for n in names) or not required <= names \
            or not any(n.startswith(f"{prefix}/code/") for n in names):
        raise UserError(f"{what} (no TorchScript code or constants: a torch.save archive?); export the bundle again")
    if sum(i.file_size for i in infos) > MAX_BUNDLE_BYTES:
        raise UserError(f"{what} of a sensible size (its members expand past {MAX_BUNDLE_BYTES:,} bytes); export "
                        "the bundle again")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        code = [i for i in infos if f"{prefix}/code/" in i.filename and i.filename.endswith(".py")]
        if any(b"__setstate__" in zf.read(i) for i in code):  # torch.jit.load would run it
            raise UserError(f"{what} that only computes (its code defines __setstate__, which runs when it is "
                            "loaded); export the bundle again")


def _ops(block: Any) -> set[str]:
    """The kinds of every node of a TorchScript graph or block, its nested blocks and subgraphs included."""
    kinds = set()
    for node in block.nodes():
        kinds.add(node.kind())
        for sub in node.blocks():
            kinds |= _ops(sub)
        for attr in node.attributeNames():
            if node.kindOf(attr) == "g":
                kinds |= _ops(node.g(attr))
    return kinds


def _check_ops(program: torch.jit.ScriptModule, file: str, name: str) -> None:
    """Refuse a program whose forward (every call in it inlined) names an operator outside PROGRAM_NAMESPACES or in
    FORBIDDEN_OPS, before it runs."""
    bad = sorted(k for k in _ops(program.inlined_graph)
                 if k.split("::")[0] not in PROGRAM_NAMESPACES or k in FORBIDDEN_OPS)
    if bad:
        raise UserError(f"bundle {name}: {file} calls {', '.join(bad[:3])}, which a model never needs (files, "
                        "other machines or Python); export the bundle again")


def _load_program(data: bytes, file: str, name: str) -> torch.jit.ScriptModule:
    """A bundle's program, checked to be a TorchScript archive that defines no load-time code, loaded as one (no
    Python unpickling), and its operators checked before it runs."""
    _check_torchscript(data, file, name)
    try:
        program = _jit_load(data)
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"bundle {name}: {file} does not load as a TorchScript program ({reason}); export the "
                        "bundle again") from None
    _check_ops(program, file, name)
    return program


@dataclass
class Bundle(BundleIdentity):
    """A loaded bundle: the device and server programs (batch 1), the entropy codec, and its JSON documents."""

    path: Path
    manifest: dict[str, Any]
    meta: dict[str, Any]
    selection: dict[str, Any]
    quantizer: dict[str, Any]
    device: torch.jit.ScriptModule | None
    server: torch.jit.ScriptModule | None  # None: loaded for the device side only
    codec: EntropyCodec | None

    @torch.no_grad()
    def device_output(self, image: torch.Tensor) -> torch.Tensor:
        """What the device program makes of one uint8 image [C, H, W] (or [1, C, H, W])."""
        x = image if image.dim() == 4 else image.unsqueeze(0)
        if self.device is None:
            return x
        return self.device(x)

    def encode(self, sent: torch.Tensor) -> tuple[Payload, int]:
        """(payload, count) of one image's device output: the symbols' shorter payload, the PNG, the label or the
        raw float32 values (`engine.deploy.bundle_files.encode_sent`)."""
        return encode_sent(self.coding, self.codec, sent.detach().cpu().numpy(), int(self.meta["num_classes"]))

    def received(self, payload: Payload, count: int) -> torch.Tensor:
        """The server program's input rebuilt from a payload; raises ValueError when the payload is malformed."""
        if self.coding == "entropy":
            assert self.codec is not None
            if count != int(self.meta["symbols_per_image"]):
                raise ValueError(f"{count} symbols announced, this variant sends {self.meta['symbols_per_image']}")
            symbols = decode_payload(self.codec, payload, count).astype(np.int64)
            return torch.from_numpy(symbols).reshape(1, -1).reshape(1, *self.meta["sent_shape"])
        if self.coding == "png":
            from PIL import Image

            try:
                with Image.open(io.BytesIO(payload.data)) as im:
                    if im.format != "PNG" or im.size[0] * im.size[1] > 1 << 22:
                        raise ValueError("not a PNG of a sensible size")
                    arr = np.asarray(im.convert("RGB" if self.meta["input_shape"][0] == 3 else "L"))
            except (OSError, SyntaxError) as exc:
                raise ValueError(f"undecodable PNG ({exc})") from None
            arr = arr[:, :, None] if arr.ndim == 2 else arr
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)
            if list(x.shape[1:]) != list(self.meta["input_shape"]):
                raise ValueError(f"image of shape {list(x.shape[1:])}, expected {self.meta['input_shape']}")
            return x
        if self.coding == "label":
            classes = int(self.meta["num_classes"])
            alphabet = label_alphabet(classes)
            if payload.coded or count != 1 or payload.bits != fixed_bits(1, alphabet):
                raise ValueError(f"a label message is one class index in {fixed_bits(1, alphabet)} bits")
            label = int(unpack_fixed(payload.data, 1, alphabet)[0])
            if label >= classes:
                raise ValueError(f"label {label} is not below the number of classes, {classes}")
            return torch.tensor([[label]], dtype=torch.int64)
        raw = payload.data  # float32 values, whole bytes
        n = int(np.prod(self.meta["sent_shape"]))
        if count != n or len(raw) != 4 * n:
            raise ValueError(f"{len(raw)} bytes / {count} values, this variant sends {n} float32 values")
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("non-finite values")
        return torch.from_numpy(values.copy()).reshape(1, *self.meta["sent_shape"])

    @torch.no_grad()
    def warm_up(self, side: str = "both", calls: int = 3) -> None:
        """Run the programs on zeros a few times: TorchScript optimises a program over its first calls, which would
        otherwise land in the first images' latency."""
        shape = [1, *self.meta["input_shape"]]
        for _ in range(calls):
            sent = self.device_output(torch.zeros(shape, dtype=torch.uint8))
            if side in ("both", "server"):
                self.logits(sent)

    @torch.no_grad()
    def logits(self, received: torch.Tensor) -> torch.Tensor:
        if self.server is None:
            raise ValueError("this bundle was loaded for its device side only")
        return self.server(received)

    @torch.no_grad()
    def coding_seconds(self, images: torch.Tensor, idle_s: float = 0.0) -> float:
        """Mean seconds per image to encode the device output into its payload and rebuild the server's input from
        it (entropy coding, PNG or label), one image at a time: the coding term of `engine.latency.Overheads`. With
        `idle_s`, each image's coding follows that long a sleep, as in a session that codes once per image (coding
        is Python over small tables: after 10 ms asleep it takes about 3x its back-to-back time, BENCHMARKS.md)."""
        sent = [self.device_output(image) for image in images]
        total = 0.0
        for s in sent:
            if idle_s > 0:
                time.sleep(idle_s)
            start = time.perf_counter()
            self.received(*self.encode(s))
            total += time.perf_counter() - start
        return total / max(1, len(sent))

    @torch.no_grad()
    def program_seconds(self, images: torch.Tensor) -> tuple[float, float]:
        """Median seconds per image of the device program and of the server program (on what the bitstream
        rebuilds), one image at a time and warm: the compute terms measured instead of modelled from FLOPs."""
        device_s, server_s = [], []
        for image in images:
            start = time.perf_counter()
            sent = self.device_output(image)
            device_s.append(time.perf_counter() - start)
            received = self.received(*self.encode(sent))
            start = time.perf_counter()
            self.logits(received)
            server_s.append(time.perf_counter() - start)
        return float(np.median(device_s)) if device_s else 0.0, float(np.median(server_s)) if server_s else 0.0

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Labels of uint8 images [N, C, H, W], each one through device program, bitstream and server program."""
        out = []
        for image in images:
            payload, count = self.encode(self.device_output(image))
            out.append(int(self.logits(self.received(payload, count)).argmax(1)))
        return torch.tensor(out, dtype=torch.int64)


def _check_programs(bundle: Bundle, name: str) -> None:
    """One zero image through device program, encoder, decoder and server program: a sent_shape, codec or class
    count that does not match the programs is refused at load, not at the first image."""
    meta = bundle.meta
    try:
        sent = bundle.device_output(torch.zeros([1, *meta["input_shape"]], dtype=torch.uint8))
        if bundle.coding != "png" and list(sent.shape) != [1, *meta["sent_shape"]]:
            raise ValueError(f"the device program sends shape {list(sent.shape[1:])}, meta.json's sent_shape is "
                             f"{meta['sent_shape']}")
        received = bundle.received(*bundle.encode(sent))
        if bundle.server is None:
            return
        logits = bundle.logits(received)
        if list(logits.shape) != [1, meta["num_classes"]]:
            raise ValueError(f"the server program gives shape {list(logits.shape)}, not [1, {meta['num_classes']}]")
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"bundle {name}: its programs do not run as meta.json describes ({reason}); export the "
                        "bundle again") from None


def load_bundle(path: Path | str, side: str = "both") -> Bundle:
    """A bundle directory or .zip, checked before and while it loads: file sizes from the directory (each within
    FILE_LIMITS, all within MAX_BUNDLE_BYTES) before reading, every file's size and sha256 against the manifest
    before any is parsed, JSON tables finite and shallow, meta.json's shapes bounded (MAX_INPUT_ELEMENTS,
    MAX_SENT_ELEMENTS), programs TorchScript archives (no Python unpickling) and ONNX programs self-contained
    protobuf models, and one zero image run through the whole pipeline. Every refusal is one UserError line.

    Args:
        path: the bundle directory or .zip.
        side: "both", or "device": what a device holds, its program and coder only (the server's programs are not
            read, their sizes checked against the manifest; the zero image stops at the decoder; the selection's
            method and split are not looked up in the registries, whose imports would cost the device more than its
            part).

    Returns:
        The loaded bundle.
    """
    path = Path(path)
    tables = read_bundle(path, known=side == "both", side=side)  # the registries cost a device ~240 MB of imports
    files, name = tables.files, path.name
    device = _load_program(files.pop("device.pt"), "device.pt", name) if "device.pt" in files else None
    server = _load_program(files.pop("server.pt"), "server.pt", name) if side == "both" else None
    files.clear()  # the programs' bytes: nothing else reads them
    bundle = Bundle(path, tables.manifest, tables.meta, tables.selection, tables.quantizer, device, server,
                    tables.codec)
    _check_programs(bundle, name)
    return bundle
