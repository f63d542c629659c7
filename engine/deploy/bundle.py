"""Reading a deployable bundle: `load_bundle` checks sizes from the archive's directory, the manifest's sha256 of
every file and each file's form before anything is deserialised; programs are TorchScript (restoring tensors and
TorchScript code only, no Python unpickling) and nothing in a bundle is loaded with pickle. `Bundle` runs the device
and server programs and the entropy coder, as real co-inference does."""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.coding.codecs import CODECS, EntropyCodec
from engine.config import VariantConfig
from engine.deploy.selection import MAX_SELECTION_BYTES, parse_selection, variant_config
from engine.errors import UserError

BUNDLE_FORMAT = "coinfer-bundle"
BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 256 << 20  # all of a bundle's files together, as its zip directory or the file system gives them
MAX_TABLE_BYTES = 4 << 20  # codec.json, quantizer.json
MAX_INPUT_ELEMENTS = 1 << 22  # values of one input image (meta.json's input_shape): 3x1024x1024 fits
MAX_SENT_ELEMENTS = 1 << 22  # values the device program sends per image (meta.json's sent_shape)
CODINGS = ("entropy", "png", "label", "analog")
BUNDLE_FILES = ("device.pt", "server.pt", "codec.json", "quantizer.json", "meta.json", "selection.json")
FILE_LIMITS = {"manifest.json": MAX_SELECTION_BYTES, "meta.json": MAX_SELECTION_BYTES,
               "selection.json": MAX_SELECTION_BYTES, "codec.json": MAX_TABLE_BYTES, "quantizer.json": MAX_TABLE_BYTES,
               "device.pt": MAX_BUNDLE_BYTES, "server.pt": MAX_BUNDLE_BYTES}  # bytes each file may have


def _jit_load(data: bytes) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_sizes(sizes: Mapping[str, int], name: str) -> None:
    """Refuse a bundle whose files (sizes as listed, before reading any) are unknown, over their limits or together
    over MAX_BUNDLE_BYTES."""
    extra = sorted(f for f in sizes if f not in FILE_LIMITS)
    if extra:
        raise UserError(f"bundle {name}: unexpected file(s) {', '.join(extra[:5])}; export the bundle again")
    for file, size in sizes.items():
        if size > FILE_LIMITS[file]:
            raise UserError(f"bundle {name}: {file} has {size:,} bytes, over its {FILE_LIMITS[file]:,}-byte limit; "
                            "export the bundle again")
    if sum(sizes.values()) > MAX_BUNDLE_BYTES:
        raise UserError(f"bundle {name}: its files hold {sum(sizes.values()):,} bytes, over the "
                        f"{MAX_BUNDLE_BYTES:,}-byte limit of a bundle; export a smaller variant")


def _read_bundle_dir(path: Path) -> dict[str, bytes]:
    files = {p.name: p for p in path.iterdir()}
    odd = sorted(f for f, p in files.items() if not p.is_file())
    if odd:
        raise UserError(f"bundle {path.name}: {', '.join(odd[:5])} is not a regular file; export the bundle again")
    _check_sizes({f: p.stat().st_size for f, p in files.items()}, path.name)
    out = {}
    for file, p in files.items():
        with open(p, "rb") as f:
            out[file] = f.read(FILE_LIMITS[file] + 1)  # bounded even if the file grew since stat()
        if len(out[file]) > FILE_LIMITS[file]:
            raise UserError(f"bundle {path.name}: {file} grew past its limit while being read; export the bundle again")
    return out


def _read_bundle_zip(path: Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len({i.filename for i in infos}) != len(infos):
                raise UserError(f"bundle {path.name}: a member appears twice in the archive; export it again")
            _check_sizes({i.filename: i.file_size for i in infos}, path.name)
            return {i.filename: zf.read(i) for i in infos}  # zipfile yields at most file_size bytes
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"bundle {path.name} is a damaged zip archive ({reason}); export it again") from None


def _read_bundle_files(path: Path) -> dict[str, bytes]:
    """The files of a bundle directory or .zip, refused before reading when any is unknown or too large."""
    if path.is_dir():
        return _read_bundle_dir(path)
    if zipfile.is_zipfile(path):
        return _read_bundle_zip(path)
    raise UserError(f"{path} is neither a bundle directory nor a bundle .zip; write one with "
                    "`python -m engine export --id ID --out PATH`")


def _bundle_json(data: bytes, file: str, name: str) -> Any:
    """A bundle's JSON file: valid, not nested past Python's recursion limit, finite numbers only."""
    def not_finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise UserError(f"bundle {name}: {file} holds {text}, not a finite number; export the bundle again")
        return value

    try:
        return json.loads(data, parse_constant=not_finite, parse_float=not_finite)
    except RecursionError:
        raise UserError(f"bundle {name}: {file} is nested too deeply to be a bundle table; export it again") from None
    except ValueError:
        raise UserError(f"bundle {name}: {file} is not valid JSON; export the bundle again") from None


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


def _load_program(data: bytes, file: str, name: str) -> torch.jit.ScriptModule:
    """A bundle's program, checked to be a TorchScript archive and loaded as one (no Python unpickling)."""
    _check_torchscript(data, file, name)
    try:
        return _jit_load(data)
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"bundle {name}: {file} does not load as a TorchScript program ({reason}); export the "
                        "bundle again") from None


@dataclass
class Bundle:
    """A loaded bundle: the device and server programs (batch 1), the entropy codec, and its JSON documents."""

    path: Path
    manifest: dict[str, Any]
    meta: dict[str, Any]
    selection: dict[str, Any]
    quantizer: dict[str, Any]
    device: torch.jit.ScriptModule | None
    server: torch.jit.ScriptModule
    codec: EntropyCodec | None

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def coding(self) -> str:
        return str(self.meta["coding"])

    def config(self) -> VariantConfig:
        return variant_config(self.selection)

    @torch.no_grad()
    def device_output(self, image: torch.Tensor) -> torch.Tensor:
        """What the device program makes of one uint8 image [C, H, W] (or [1, C, H, W])."""
        x = image if image.dim() == 4 else image.unsqueeze(0)
        if self.device is None:
            return x
        return self.device(x)

    def encode(self, sent: torch.Tensor) -> tuple[bytes, int]:
        """(payload bytes, count) of one image's device output: the entropy-coded symbols, the PNG, the label byte
        or the raw float32 values."""
        if self.coding == "entropy":
            assert self.codec is not None
            symbols = sent.reshape(1, -1).numpy().astype(np.int64)
            return self.codec.encode(symbols)[0], int(symbols.shape[1])
        if self.coding == "png":
            from PIL import Image

            img = sent[0].permute(1, 2, 0).numpy()
            buf = io.BytesIO()
            Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buf, format="PNG", optimize=False)
            return buf.getvalue(), 1
        if self.coding == "label":
            return bytes([int(sent.reshape(-1)[0])]), 1
        values = sent.reshape(-1).float().numpy()
        return values.astype("<f4").tobytes(), int(values.size)

    def received(self, payload: bytes, count: int) -> torch.Tensor:
        """The server program's input rebuilt from a payload; raises ValueError when the payload is malformed."""
        if self.coding == "entropy":
            assert self.codec is not None
            if count != int(self.meta["symbols_per_image"]):
                raise ValueError(f"{count} symbols announced, this variant sends {self.meta['symbols_per_image']}")
            symbols = self.codec.decode(payload, count).astype(np.int64)
            return torch.from_numpy(symbols).reshape(1, -1).reshape(1, *self.meta["sent_shape"])
        if self.coding == "png":
            from PIL import Image

            try:
                with Image.open(io.BytesIO(payload)) as im:
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
            if len(payload) != 1 or payload[0] >= int(self.meta["num_classes"]):
                raise ValueError("a label message is one byte below the number of classes")
            return torch.tensor([[payload[0]]], dtype=torch.int64)
        n = int(np.prod(self.meta["sent_shape"]))
        if count != n or len(payload) != 4 * n:
            raise ValueError(f"{len(payload)} bytes / {count} values, this variant sends {n} float32 values")
        values = np.frombuffer(payload, dtype="<f4").astype(np.float32)
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


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with meta.json's shapes and counts (they size the tensors built at warm-up and from messages),
    or None."""
    def small_ints(v: Any, lo: int) -> bool:
        return isinstance(v, list) and len(v) <= 8 and all(type(i) is int and lo <= i <= 1 << 16 for i in v)

    if not isinstance(meta, dict) or not small_ints(meta.get("input_shape"), 1) or len(meta["input_shape"]) != 3 \
            or not small_ints(meta.get("sent_shape"), 1) or not small_ints([meta.get("symbols_per_image")], 0) \
            or not small_ints([meta.get("num_classes")], 2) or meta["num_classes"] > 65535:
        return "it does not describe the programs' shapes"
    for key, limit in (("input_shape", MAX_INPUT_ELEMENTS), ("sent_shape", MAX_SENT_ELEMENTS)):
        if math.prod(meta[key]) > limit:
            return f"its {key} {meta[key]} holds {math.prod(meta[key]):,} values, over the {limit:,} a bundle may have"
    if meta.get("coding") == "entropy" and math.prod(meta["sent_shape"]) != meta["symbols_per_image"]:
        return f"its sent_shape {meta['sent_shape']} does not hold its {meta['symbols_per_image']} symbols per image"
    return None


def _check_meta(meta: Any, name: str) -> None:
    """Refuse a meta.json whose shapes and counts are not small positive integers within the bundle limits."""
    problem = _meta_problem(meta)
    if problem:
        raise UserError(f"bundle {name}: meta.json is wrong ({problem}); export the bundle again")


def _check_programs(bundle: Bundle, name: str) -> None:
    """One zero image through device program, encoder, decoder and server program: a sent_shape, codec or class
    count that does not match the programs is refused at load, not at the first image."""
    meta = bundle.meta
    try:
        sent = bundle.device_output(torch.zeros([1, *meta["input_shape"]], dtype=torch.uint8))
        if bundle.coding != "png" and list(sent.shape) != [1, *meta["sent_shape"]]:
            raise ValueError(f"the device program sends shape {list(sent.shape[1:])}, meta.json's sent_shape is "
                             f"{meta['sent_shape']}")
        logits = bundle.logits(bundle.received(*bundle.encode(sent)))
        if list(logits.shape) != [1, meta["num_classes"]]:
            raise ValueError(f"the server program gives shape {list(logits.shape)}, not [1, {meta['num_classes']}]")
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"bundle {name}: its programs do not run as meta.json describes ({reason}); export the "
                        "bundle again") from None


def _check_manifest(files: dict[str, bytes], name: str) -> dict[str, Any]:
    """The manifest (removed from `files`), every other file's size and sha256 checked against it."""
    if "manifest.json" not in files:
        raise UserError(f"bundle {name} has no manifest.json; export it again")
    manifest = _bundle_json(files.pop("manifest.json"), "manifest.json", name)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT \
            or manifest.get("version") != BUNDLE_VERSION or not isinstance(manifest.get("files"), dict):
        raise UserError(f"bundle {name}: not a {BUNDLE_FORMAT} version {BUNDLE_VERSION} manifest")
    listed = manifest["files"]
    if set(listed) != set(files):
        raise UserError(f"bundle {name}: files {sorted(files)} do not match the manifest's {sorted(listed)}")
    for file, data in files.items():
        entry = listed[file]
        if not isinstance(entry, dict) or entry.get("bytes") != len(data) or entry.get("sha256") != sha256_hex(data):
            raise UserError(f"bundle {name}: {file} does not match its sha256 in the manifest (altered or "
                            "damaged); export the bundle again")
    for file in ("server.pt", "codec.json", "quantizer.json", "meta.json", "selection.json"):
        if file not in files:
            raise UserError(f"bundle {name} lacks {file}; export it again")
    return manifest


def _load_codec(state: Any, name: str) -> EntropyCodec:
    try:
        return CODECS.get(state["codec"]).from_state(state)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError, UserError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"bundle {name}: codec.json is not a codec table ({reason}); export it again") from None


def load_bundle(path: Path | str) -> Bundle:
    """A bundle directory or .zip, checked before and while it loads: file sizes from the directory (each within
    FILE_LIMITS, all within MAX_BUNDLE_BYTES) before reading, every file's size and sha256 against the manifest
    before any is parsed, JSON tables finite and shallow, meta.json's shapes bounded (MAX_INPUT_ELEMENTS,
    MAX_SENT_ELEMENTS), programs TorchScript archives (no Python unpickling), and one zero image run through the
    whole pipeline. Every refusal is one UserError line.

    Args:
        path: the bundle directory or .zip.

    Returns:
        The loaded bundle.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"no bundle at {path}; write one with `python -m engine export --id ID --out PATH`")
    name = path.name
    files = _read_bundle_files(path)
    manifest = _check_manifest(files, name)
    selection = parse_selection(files["selection.json"])
    meta, codec_state, quantizer = (_bundle_json(files[f], f, name) for f in ("meta.json", "codec.json",
                                                                             "quantizer.json"))
    _check_meta(meta, name)
    if not isinstance(quantizer, dict):
        raise UserError(f"bundle {name}: quantizer.json is not a table; export it again")
    if meta.get("id") != selection["id"] or manifest.get("id") != selection["id"]:
        raise UserError(f"bundle {name}: its files name different variants; export it again")
    if meta.get("coding") not in CODINGS or (meta["coding"] != "png") != ("device.pt" in files):
        raise UserError(f"bundle {name}: unknown coding {meta.get('coding')!r} or a missing device program")
    codec = _load_codec(codec_state, name) if meta["coding"] == "entropy" else None
    device = _load_program(files.pop("device.pt"), "device.pt", name) if "device.pt" in files else None
    server = _load_program(files.pop("server.pt"), "server.pt", name)
    bundle = Bundle(path, manifest, meta, selection, quantizer, device, server, codec)
    _check_programs(bundle, name)
    return bundle
