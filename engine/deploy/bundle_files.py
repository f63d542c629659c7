"""A bundle's files read and checked without torch, for `engine.deploy.bundle` (TorchScript) and
`engine.deploy.onnx_device` (onnxruntime) alike: sizes from the archive's directory before reading, the manifest's
sha256 of every file, JSON tables finite and shallow, meta.json's shapes bounded, the codec rebuilt from its table,
ONNX programs checked to be self-contained protobuf models, and a device program's output coded into its payload."""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import VariantConfig
from engine.deploy.selection import MAX_SELECTION_BYTES, parse_selection, variant_config
from engine.entropy import CODECS, EntropyCodec, Payload, encode_payloads, fixed_bits
from engine.entropy.payload import pack_fixed
from engine.errors import UserError

BUNDLE_FORMAT = "coinfer-bundle"
BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 256 << 20  # all of a bundle's files together, as its zip directory or the file system gives them
MAX_TABLE_BYTES = 4 << 20  # codec.json, quantizer.json
MAX_INPUT_ELEMENTS = 1 << 22  # values of one input image (meta.json's input_shape): 3x1024x1024 fits
MAX_SENT_ELEMENTS = 1 << 22  # values the device program sends per image (meta.json's sent_shape)
CODINGS = ("entropy", "png", "label", "analog")
ONNX_OPSET = 17  # the opset of device.onnx and server.onnx (README: Export and real co-inference)
BUNDLE_FILES = ("device.pt", "server.pt", "device.onnx", "server.onnx", "codec.json", "quantizer.json", "meta.json",
                "selection.json")
SERVER_FILES = ("server.pt", "server.onnx")  # what a device never reads (`read_bundle(side="device")`)
FILE_LIMITS = {"manifest.json": MAX_SELECTION_BYTES, "meta.json": MAX_SELECTION_BYTES,
               "selection.json": MAX_SELECTION_BYTES, "codec.json": MAX_TABLE_BYTES, "quantizer.json": MAX_TABLE_BYTES,
               "device.pt": MAX_BUNDLE_BYTES, "server.pt": MAX_BUNDLE_BYTES, "device.onnx": MAX_BUNDLE_BYTES,
               "server.onnx": MAX_BUNDLE_BYTES}  # bytes each file may have


def json_bytes(obj: Any) -> bytes:
    """`obj` as a bundle's JSON file: indented, keys sorted, finite numbers only."""
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    """The sha256 of `data` in hex, as the manifest lists it."""
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


def _read_bundle_dir(path: Path, skip: Collection[str]) -> tuple[dict[str, bytes], dict[str, int]]:
    files = {p.name: p for p in path.iterdir()}
    odd = sorted(f for f, p in files.items() if not p.is_file())
    if odd:
        raise UserError(f"bundle {path.name}: {', '.join(odd[:5])} is not a regular file; export the bundle again")
    sizes = {f: p.stat().st_size for f, p in files.items()}
    _check_sizes(sizes, path.name)
    out = {}
    for file, p in files.items():
        if file in skip:
            continue
        with open(p, "rb") as f:
            out[file] = f.read(FILE_LIMITS[file] + 1)  # bounded even if the file grew since stat()
        if len(out[file]) > FILE_LIMITS[file]:
            raise UserError(f"bundle {path.name}: {file} grew past its limit while being read; export the bundle again")
    return out, {f: n for f, n in sizes.items() if f in skip}


def _read_bundle_zip(path: Path, skip: Collection[str]) -> tuple[dict[str, bytes], dict[str, int]]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len({i.filename for i in infos}) != len(infos):
                raise UserError(f"bundle {path.name}: a member appears twice in the archive; export it again")
            _check_sizes({i.filename: i.file_size for i in infos}, path.name)
            return ({i.filename: zf.read(i) for i in infos if i.filename not in skip},  # at most file_size bytes
                    {i.filename: i.file_size for i in infos if i.filename in skip})
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"bundle {path.name} is a damaged zip archive ({reason}); export it again") from None


def read_bundle_files(path: Path, skip: Collection[str] = ()) -> tuple[dict[str, bytes], dict[str, int]]:
    """The files of a bundle directory or .zip, refused before reading when any is unknown or too large, and the
    sizes of those in `skip`, which are not read."""
    if path.is_dir():
        return _read_bundle_dir(path, skip)
    if zipfile.is_zipfile(path):
        return _read_bundle_zip(path, skip)
    raise UserError(f"{path} is neither a bundle directory nor a bundle .zip; write one with "
                    "`python -m engine export --id ID --out PATH`")


def bundle_json(data: bytes, file: str, name: str) -> Any:
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


def check_meta(meta: Any, name: str) -> None:
    """Refuse a meta.json whose shapes and counts are not small positive integers within the bundle limits."""
    problem = _meta_problem(meta)
    if problem:
        raise UserError(f"bundle {name}: meta.json is wrong ({problem}); export the bundle again")


def check_manifest(files: dict[str, bytes], name: str, unread: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The manifest (removed from `files`), every other file's size and sha256 checked against it; of the files
    left `unread` (name: size), only the size."""
    unread = unread or {}
    if "manifest.json" not in files:
        raise UserError(f"bundle {name} has no manifest.json; export it again")
    manifest = bundle_json(files.pop("manifest.json"), "manifest.json", name)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT \
            or manifest.get("version") != BUNDLE_VERSION or not isinstance(manifest.get("files"), dict):
        raise UserError(f"bundle {name}: not a {BUNDLE_FORMAT} version {BUNDLE_VERSION} manifest; export it again")
    listed, present = manifest["files"], {*files, *unread}
    if set(listed) != present:
        raise UserError(f"bundle {name}: files {sorted(present)[:8]} do not match the manifest's {sorted(listed)[:8]}; "
                        "export it again")
    for file, data in files.items():
        entry = listed[file]
        if not isinstance(entry, dict) or entry.get("bytes") != len(data) or entry.get("sha256") != sha256_hex(data):
            raise UserError(f"bundle {name}: {file} does not match its sha256 in the manifest (altered or "
                            "damaged); export the bundle again")
    for file, size in unread.items():
        if not isinstance(listed[file], dict) or listed[file].get("bytes") != size:
            raise UserError(f"bundle {name}: {file} does not match its size in the manifest; export the bundle again")
    for file in ("server.pt", "codec.json", "quantizer.json", "meta.json", "selection.json"):
        if file not in present:
            raise UserError(f"bundle {name} lacks {file}; export it again")
    onnx = [f for f in ("device.onnx", "server.onnx") if f in present]
    if onnx and ("server.onnx" not in present or ("device.onnx" in present) != ("device.pt" in present)):
        raise UserError(f"bundle {name}: its ONNX programs ({', '.join(onnx)}) do not match its TorchScript ones; "
                        "export it again")
    return manifest


def _load_codec(state: Any, name: str) -> EntropyCodec:
    try:
        return CODECS.get(state["codec"]).from_state(state)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError, UserError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"bundle {name}: codec.json is not a codec table ({reason}); export it again") from None


def load_codec(state: Any, name: str) -> EntropyCodec:
    """The entropy codec rebuilt from codec.json; a table that is not one is a UserError."""
    try:
        return CODECS.get(state["codec"]).from_state(state)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError, UserError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"bundle {name}: codec.json is not a codec table ({reason}); export it again") from None


def _onnx_graphs(graph: Any) -> list[Any]:
    """`graph` and every subgraph in its nodes' attributes."""
    out = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out += _onnx_graphs(sub)
    return out


def _external_tensors(model: Any) -> bool:
    """Whether any tensor of the model (initialisers, constants) points at data outside it."""
    for graph in _onnx_graphs(model.graph):
        tensors = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
        for node in graph.node:
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
        if any(t.data_location == 1 or len(t.external_data) for t in tensors):  # TensorProto.EXTERNAL
            return True
    return False


def check_onnx(data: bytes, file: str, name: str) -> None:
    """Refuse an ONNX program that is not a valid, self-contained ONNX model: a pickle or an archive (an ONNX model
    is protobuf and starts with its ir_version field), one that fails onnx's checker, or one whose tensors name
    external files (which a loader would read from the device's disk).

    Args:
        data: the file's bytes.
        file: its name in the bundle.
        name: the bundle's name, for the message.

    Raises:
        UserError: in one line, for any of these.
    """
    import onnx
    from google.protobuf.message import DecodeError

    what = f"bundle {name}: {file} is not an ONNX program"
    if not data.startswith(b"\x08"):
        raise UserError(f"{what} (no ir_version first: a pickle or an archive?); export the bundle again")
    try:
        model = onnx.load_model_from_string(data)
        if _external_tensors(model):  # before the checker, which would look for those files
            raise UserError(f"{what} that stands alone (its tensors name external data files); export the bundle "
                            "again")
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"{what} ({reason}); export the bundle again") from None


class BundleIdentity:
    """What a loaded bundle says of itself, from its meta.json and selection.json (`meta` and `selection`)."""

    meta: dict[str, Any]
    selection: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def coding(self) -> str:
        return str(self.meta["coding"])

    def config(self) -> VariantConfig:
        """The variant the bundle deploys."""
        return variant_config(self.selection)


@dataclass
class BundleTables:
    """A bundle's files after every torch-free check: the manifest, the parsed JSON documents, the entropy codec
    (for "entropy") and the remaining files' bytes (programs), keyed by name."""

    manifest: dict[str, Any]
    meta: dict[str, Any]
    selection: dict[str, Any]
    quantizer: dict[str, Any]
    codec: EntropyCodec | None
    files: dict[str, bytes]


def read_bundle(path: Path, known: bool = True, side: str = "both") -> BundleTables:
    """Read a bundle directory or .zip and check all but its programs' contents: sizes before reading, the manifest
    (sizes, sha256, files present), the selection, meta.json's shapes, quantizer.json a table, every file naming
    one variant, the coding known with its device programs present, the codec table, and any ONNX program.

    Args:
        path: the bundle directory or .zip.
        known: check the selection's method and split against the registries (they import torch; see
            `parse_selection`).
        side: "both", or "device": the server's programs (`SERVER_FILES`) are neither read nor checked beyond
            their sizes: a device runs none of them, and reading and checking them cost it more memory than its own
            part (a width-1.0 ResNet18's server programs are 88 MB).

    Returns:
        The checked tables and the programs' bytes (device.pt, server.pt, device.onnx, server.onnx as present and
        read).
    """
    if side not in ("both", "device"):
        raise ValueError(f"side is 'both' or 'device', got {side!r}")
    if not path.exists():
        raise UserError(f"no bundle at {path}; write one with `python -m engine export --id ID --out PATH`")
    name = path.name
    files, unread = read_bundle_files(path, SERVER_FILES if side == "device" else ())
    manifest = check_manifest(files, name, unread)
    selection = parse_selection(files.pop("selection.json"), known)
    meta, codec_state, quantizer = (bundle_json(files.pop(f), f, name) for f in ("meta.json", "codec.json",
                                                                                "quantizer.json"))
    check_meta(meta, name)
    if not isinstance(quantizer, dict):
        raise UserError(f"bundle {name}: quantizer.json is not a table; export it again")
    if meta.get("id") != selection["id"] or manifest.get("id") != selection["id"]:
        raise UserError(f"bundle {name}: its files name different variants; export it again")
    if meta.get("coding") not in CODINGS or (meta["coding"] != "png") != ("device.pt" in files):
        raise UserError(f"bundle {name}: unknown coding {str(meta.get('coding'))[:40]!r} or a missing device "
                        "program; export it again")
    codec = load_codec(codec_state, name) if meta["coding"] == "entropy" else None
    for file in ("device.onnx", "server.onnx"):
        if file in files:
            check_onnx(files[file], file, name)
    return BundleTables(manifest, meta, selection, quantizer, codec, files)


def encode_sent(coding: str, codec: EntropyCodec | None, sent: np.ndarray, num_classes: int) -> tuple[Payload, int]:
    """(payload, count) of one image's device output [1, ...]: the symbols' payload (the shorter of their
    fixed-length and entropy-coded forms, `engine.entropy.payload`), the PNG, the label in ceil(log2 classes) bits
    or the raw float32 values.

    Args:
        coding: the bundle's coding (meta.json).
        codec: its entropy codec, for "entropy".
        sent: what the device program made of one image (for "png", the uint8 image [1, C, H, W]).
        num_classes: the model's classes (meta.json), which size a label.

    Returns:
        The payload and the count a FEATURE message announces.
    """
    if coding == "entropy":
        assert codec is not None
        symbols = np.asarray(sent).reshape(1, -1).astype(np.int64)
        return encode_payloads(codec, symbols)[0], int(symbols.shape[1])
    if coding == "png":
        from PIL import Image

        img = np.asarray(sent)[0].transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buf, format="PNG", optimize=False)
        return Payload.of_bytes(buf.getvalue()), 1
    if coding == "label":
        alphabet = label_alphabet(num_classes)
        label = np.asarray(sent, dtype=np.int64).reshape(1, 1)
        return Payload(pack_fixed(label, alphabet)[0], fixed_bits(1, alphabet)), 1
    values = np.asarray(sent, dtype=np.float32).reshape(-1)
    return Payload.of_bytes(values.astype("<f4").tobytes()), int(values.size)


def label_alphabet(num_classes: int) -> int:
    """The alphabet a label is sent in: the classes, at least two (one bit)."""
    return max(2, int(num_classes))
