"""Exports of chosen configurations: a selection (a small versioned JSON naming one variant, its measured figures and
the environment it was chosen for) and a deployable bundle (the variant's device and server programs, its quantiser
and codec tables, the selection, and a manifest of sha256 digests).

API
    selection_json(row, environment) -> dict      the selection document of a results row
    parse_selection(raw) -> dict                  a validated selection from untrusted bytes or text (JSON only)
    variant_config(selection) -> VariantConfig    the variant a validated selection names
    write_bundle(cfg, ctx, out) -> Path           a bundle directory, or a .zip when `out` ends in .zip
    load_bundle(path) -> Bundle                   hashes checked before anything is deserialised

Bundle layout: `device.pt` (uint8 image [1, C, H, W] -> what the device sends) and `server.pt` (what arrives ->
logits [1, classes]) are TorchScript programs traced at batch 1 (one image per message, as co-inference runs them);
`codec.json`, `quantizer.json`, `meta.json` and `selection.json` are plain JSON; `manifest.json` lists every other
file with its size and sha256. TorchScript rather than torch.export: `torch.jit.load` restores tensors and TorchScript
code only and runs no Python unpickling, whereas `torch.export.load` falls back to unrestricted pickle for weights.
Nothing in a bundle is loaded with pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
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
from torch import nn

import engine
from engine.coding.codecs import CODECS, EntropyCodec
from engine.config import BaseModelConfig, VariantConfig, frozen_value
from engine.data import normalize
from engine.errors import UserError
from engine.knobs import is_knob_value
from engine.profiles import PROFILES

SELECTION_FORMAT = "coinfer-selection"
SELECTION_VERSION = 1
BUNDLE_FORMAT = "coinfer-bundle"
BUNDLE_VERSION = 1
MAX_SELECTION_BYTES = 1 << 20
MAX_BUNDLE_BYTES = 256 << 20  # all of a bundle's files together, as its zip directory or the file system gives them
MAX_TABLE_BYTES = 4 << 20  # codec.json, quantizer.json
MAX_INPUT_ELEMENTS = 1 << 22  # values of one input image (meta.json's input_shape): 3x1024x1024 fits
MAX_SENT_ELEMENTS = 1 << 22  # values the device program sends per image (meta.json's sent_shape)
CODINGS = ("entropy", "png", "label", "analog")
BUNDLE_FILES = ("device.pt", "server.pt", "codec.json", "quantizer.json", "meta.json", "selection.json")
_BASE_FIELDS = {f.name: f for f in dataclasses.fields(BaseModelConfig)}
FILE_LIMITS = {"manifest.json": MAX_SELECTION_BYTES, "meta.json": MAX_SELECTION_BYTES,
               "selection.json": MAX_SELECTION_BYTES, "codec.json": MAX_TABLE_BYTES, "quantizer.json": MAX_TABLE_BYTES,
               "device.pt": MAX_BUNDLE_BYTES, "server.pt": MAX_BUNDLE_BYTES}  # bytes each file may have

# ------------------------------------------------------------------------------------------------------ selection


def _finite_json(value: Any, where: str) -> Any:
    """`value` as plain JSON with finite numbers only: NaN and infinities are dropped from mappings (a missing figure)
    and become None inside lists; numpy and torch scalars become numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            item = _finite_json(v, f"{where}.{k}")
            if item is not None or v is None:
                out[str(k)] = item
        return out
    if isinstance(value, (list, tuple)):
        return [_finite_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _finite_json(dataclasses.asdict(value), where)
    if hasattr(value, "tolist"):
        return _finite_json(value.tolist(), where)
    return str(value)


def _row_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in row.items()}  # a dict or a pandas Series


def base_of_row(row: Mapping[str, Any]) -> BaseModelConfig:
    """The base model config a results row was built on: the profile whose base config at the row's data, width and
    seed has the row's `base_id`."""
    for name in PROFILES:
        try:
            base = PROFILES.get(name).base_config(str(row["dataset_fingerprint"]), width=float(row["width"]),
                                                  seed=int(row["seed"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"row {row.get('id')!r} lacks its dataset fingerprint, width or seed: re-measure it "
                            "with `python -m engine run`") from None
        if base.id == row.get("base_id"):
            return base
    raise UserError(f"row {row.get('id')!r}: no profile ({', '.join(PROFILES)}) gives its base model "
                    f"{row.get('base_id')!r}; it was measured with another budget and cannot be exported")


def row_config(row: Mapping[str, Any]) -> VariantConfig:
    """The VariantConfig of a results row, checked against the row's id."""
    row = _row_dict(row)
    knobs = row.get("knobs") or {}
    if not isinstance(knobs, Mapping):
        raise UserError(f"row {row.get('id')!r} has no knobs mapping: re-measure it")
    cfg = VariantConfig.make(str(row["method"]), str(row["split"]), base_of_row(row), **frozen_value(dict(knobs)))
    if cfg.id != row.get("id"):
        raise UserError(f"row {row.get('id')!r} does not hash to its config (got {cfg.id}); it was written by another "
                        "version of the engine: re-measure it")
    return cfg


def _metrics(row: Mapping[str, Any]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for k, v in row.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            continue
        if math.isfinite(float(v)) and k not in ("seed", "width", "schema_version"):
            out[str(k)] = int(v) if isinstance(v, (int, np.integer)) else float(v)
    return out


def selection_document(cfg: VariantConfig, metrics: Mapping[str, Any] | None = None,
                       environment: Any = None) -> dict[str, Any]:
    """The versioned selection document of a variant (what `selection_json` returns for a row); of `metrics` (e.g.
    its results row) only the finite numbers are kept."""
    env = environment if environment is not None else {}
    if dataclasses.is_dataclass(env) and not isinstance(env, type):
        env = dataclasses.asdict(env)
    return {
        "format": SELECTION_FORMAT,
        "version": SELECTION_VERSION,
        "config": {"method": cfg.method, "split": cfg.split, "knobs": _finite_json(dict(cfg.knobs), "knobs"),
                   "base": dataclasses.asdict(cfg.base)},
        "id": cfg.id,
        "metrics": _metrics(dict(metrics or {})),
        "trained_on": (metrics or {}).get("trained_on"),  # engine.provenance: where its trained parts were computed
        "environment": _finite_json(dict(env), "environment"),
        "code_version": engine.__version__,
        "torch_version": torch.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def selection_json(row: Mapping[str, Any], environment: Mapping[str, Any]) -> dict:
    """The selection document of a results row (a dict or a table row) chosen for `environment` (the sidebar's
    device, server, rate, ...): JSON-serialisable, finite numbers only."""
    row = _row_dict(row)
    return selection_document(row_config(row), row, environment)


def _reject(message: str) -> UserError:
    return UserError(f"invalid selection file: {message}")


def _reject_constant(name: str) -> Any:
    raise _reject(f"{name} is not a number JSON allows; export the selection again from the dashboard")


def _read_json(raw: bytes | str) -> dict:
    """The JSON object in at most MAX_SELECTION_BYTES of UTF-8 (never pickle)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    if not isinstance(raw, (bytes, bytearray)):
        raise _reject(f"expected bytes or text, got {type(raw).__name__}")
    if len(raw) > MAX_SELECTION_BYTES:
        raise _reject(f"{len(raw):,} bytes is over the {MAX_SELECTION_BYTES:,}-byte limit; a selection is a small "
                      "JSON file exported by coinfer")
    try:
        doc = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _reject("not UTF-8 text; upload the .json file coinfer exported") from None
    except RecursionError:
        raise _reject("nested too deeply; upload the .json file coinfer exported") from None
    except json.JSONDecodeError as exc:
        raise _reject(f"not JSON ({exc.msg} at line {exc.lineno}); upload the .json file coinfer exported") from None
    if not isinstance(doc, dict):
        raise _reject("the top level must be a JSON object")
    return doc


def _check_config(config: Any) -> None:
    """A selection's `config`: a known method and split, plain knobs, and a base of the right fields and types."""
    from engine.methods import METHODS
    from engine.models import SPLIT_POINTS

    if not isinstance(config, dict):
        raise _reject("'config' must be an object with method, split, knobs and base")
    method, split = config.get("method"), config.get("split")
    if not isinstance(method, str) or method not in METHODS:
        raise _reject(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if not isinstance(split, str) or split not in SPLIT_POINTS:
        raise _reject(f"unknown split {split!r}; known: {', '.join(SPLIT_POINTS)}")
    knobs = config.get("knobs", {})
    if not isinstance(knobs, dict):
        raise _reject("'config.knobs' must be an object")
    for k, v in knobs.items():
        if not is_knob_value(v):
            raise _reject(f"knob {k!r} must be a number, string, boolean, null or a flat list of them")
    _check_base(config.get("base"))


def _check_base(base: Any) -> None:
    """A selection's `config.base`: the fields of BaseModelConfig (those added later optional), each of its type."""
    required = set(_BASE_FIELDS) - set(BaseModelConfig.ID_OPTIONAL)  # an export of an earlier release lacks those
    if not isinstance(base, dict) or not required <= set(base) <= set(_BASE_FIELDS):
        raise _reject(f"'config.base' must have the fields {', '.join(_BASE_FIELDS)} (optional: "
                      f"{', '.join(BaseModelConfig.ID_OPTIONAL)})")
    for k, v in base.items():
        kind = _BASE_FIELDS[k].type
        if kind in ("tuple[int, ...]", "tuple[float, ...]"):
            numbers = int if kind == "tuple[int, ...]" else (int, float)
            ok = isinstance(v, list) and len(v) <= 10_000 and all(isinstance(x, numbers) and not isinstance(x, bool)
                                                                   for x in v)
        elif kind == "str":
            ok = isinstance(v, str)
        elif kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            raise _reject(f"base field {k!r} must be of type {kind}, got {v!r}")


def parse_selection(raw: bytes | str) -> dict:
    """A selection read from untrusted bytes or text: at most 1 MB of UTF-8 JSON (never pickle), the right format and
    version, a known method and split, knobs of JSON scalars (or flat lists of them), finite numbers, and an id that
    is the hash of its config.

    Args:
        raw: the file's bytes, or its text.

    Returns:
        The selection document.

    Raises:
        UserError: saying what is wrong, for anything else.
    """
    doc = _read_json(raw)
    if doc.get("format") != SELECTION_FORMAT:
        raise _reject(f"format is {doc.get('format')!r}, expected {SELECTION_FORMAT!r}")
    version = doc.get("version")
    if type(version) is not int or version != SELECTION_VERSION:
        raise _reject(f"version {version!r} is not supported (this coinfer reads version {SELECTION_VERSION}); "
                      "export it again with this version")
    config = doc.get("config")
    _check_config(config)
    if not isinstance(doc.get("trained_on"), (str, type(None))):
        raise _reject("'trained_on' must be text or null")
    metrics = doc.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in metrics.values()):
        raise _reject("'metrics' must map names to numbers")
    if not isinstance(doc.get("environment", {}), dict):
        raise _reject("'environment' must be an object")
    try:
        cfg = VariantConfig.make(config["method"], config["split"], BaseModelConfig(**config["base"]),
                                 **frozen_value(dict(config.get("knobs", {}))))
    except UserError as exc:
        raise _reject(str(exc)) from None
    if doc.get("id") != cfg.id:
        raise _reject(f"id {doc.get('id')!r} is not the hash of its config ({cfg.id}): the file was edited or damaged; "
                      "export it again")
    return doc


def variant_config(selection: dict) -> VariantConfig:
    """The VariantConfig a validated selection names (checked against its id)."""
    config = selection["config"]
    cfg = VariantConfig.make(config["method"], config["split"], BaseModelConfig(**config["base"]),
                             **frozen_value(dict(config["knobs"])))
    if cfg.id != selection.get("id"):
        raise _reject(f"id {selection.get('id')!r} is not the hash of its config ({cfg.id})")
    return cfg


# ------------------------------------------------------------------------------------------------------ bundles


class _Normalised(nn.Module):
    """A deployed part fed the uint8 image: normalised as in training, then `inner`."""

    def __init__(self, inner: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(normalize(x, self.mean, self.std))


def _trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module.eval(), example, check_trace=False)


def _jit_bytes(program: torch.jit.ScriptModule) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(program, buf)
    return buf.getvalue()


def _jit_load(data: bytes) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_files(cfg: VariantConfig, ctx: Any, metrics: Mapping[str, Any] | None = None,
                 environment: Any = None) -> dict[str, bytes]:
    """The files of a variant's bundle, in memory (see the module docstring)."""
    from engine.methods import METHODS

    method = METHODS.get(cfg.method)
    if not hasattr(method, "deploy"):
        raise UserError(f"method {cfg.method!r} cannot be exported: it has no deploy hook")
    deployed = method.deploy(cfg, ctx)
    data = ctx.data
    if deployed.coding not in CODINGS:
        raise ValueError(f"unknown coding {deployed.coding!r}")
    image = data.test_x[:1].clone()
    mean, std = data.mean, data.std
    files: dict[str, bytes] = {}
    if deployed.coding == "png":
        server = _trace(_Normalised(deployed.server, mean, std), image)
        sent_example = None
    else:
        device = _trace(_Normalised(deployed.device, mean, std), image)
        files["device.pt"] = _jit_bytes(device)
        with torch.no_grad():
            sent_example = device(image)
        server = _trace(deployed.server, sent_example)
    files["server.pt"] = _jit_bytes(server)
    files["codec.json"] = _json_bytes(deployed.codec.state_dict() if deployed.codec is not None else {})
    files["quantizer.json"] = _json_bytes(_finite_json(deployed.quantizer, "quantizer"))
    profile = next((n for n in PROFILES if PROFILES.get(n).base_config(cfg.base.dataset, width=cfg.base.width,
                                                                       seed=cfg.base.seed) == cfg.base), None)
    meta = {
        "id": cfg.id,
        "method": cfg.method,
        "split": cfg.split,
        "coding": deployed.coding,
        "symbols_per_image": int(deployed.symbols_per_image or (sent_example[0].numel() if sent_example is not None
                                                                else 0)),
        "alphabet_size": int(deployed.alphabet_size),
        "sent_shape": list(sent_example.shape[1:]) if sent_example is not None else [],
        "sent_dtype": str(sent_example.dtype).removeprefix("torch.") if sent_example is not None else "uint8",
        "input_shape": [data.channels, *data.image_size],
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "dataset": data.fingerprint,
        "profile": profile,
        "channel": deployed.channel,
        "batch": 1,
    }
    files["meta.json"] = _json_bytes(meta)
    files["selection.json"] = _json_bytes(selection_document(cfg, metrics, environment))
    return files


def write_bundle(cfg: VariantConfig, ctx: Any, out: Path, metrics: Mapping[str, Any] | None = None,
                 environment: Any = None) -> Path:
    """Build the variant's deployed parts from the cached models (no retraining when cached) and write its bundle to
    `out`: a directory, or a zip archive when `out` ends in .zip. Written atomically; an existing bundle is
    replaced. `metrics` (e.g. its results row) and `environment` go into selection.json."""
    out = Path(out)
    files = bundle_files(cfg, ctx, metrics, environment)
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "id": cfg.id,
                "files": {name: {"bytes": len(b), "sha256": _sha256(b)} for name, b in sorted(files.items())}}
    files["manifest.json"] = _json_bytes(manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if out.suffix == ".zip":
            target = tmp / "bundle.zip"
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, b in files.items():
                    zf.writestr(name, b)
        else:
            target = tmp / "bundle"
            target.mkdir()
            for name, b in files.items():
                (target / name).write_bytes(b)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists() and target.is_dir():
            out.unlink()
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


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
        if not isinstance(entry, dict) or entry.get("bytes") != len(data) or entry.get("sha256") != _sha256(data):
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
