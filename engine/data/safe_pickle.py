"""Reading the pickled CIFAR-10 python batches without running code from them.

The batches are pickles by design (dicts of byte strings, lists of ints and one uint8 array). A pickle can name any
importable callable, so a crafted `batches.meta` would run code under plain `pickle.loads`. `load_cifar_pickle`
admits only the globals those batches reference: numpy's array and dtype reconstructors (under their numpy 1
`numpy.core` and numpy 2 `numpy._core` paths, for every pickle protocol) and `_codecs.encode` for latin-1 byte
strings (how Python 3 writes bytes at protocol 2). Anything else is refused before it is imported."""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

try:  # numpy 2; numpy 1 pickles still name numpy.core, which numpy 2 maps to numpy._core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global a CIFAR-10 batch never does."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of bytes use it: latin-1 only (no other codec runs)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode with {encoding!r} is not how a CIFAR-10 batch stores bytes")
    return text.encode("latin-1")


def _allowed() -> dict[tuple[str, str], Callable[..., Any]]:
    out: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        out[(f"{core}.multiarray", "scalar")] = _multiarray.scalar
        out[(f"{core}.numeric", "_frombuffer")] = _numeric._frombuffer
    return out


ALLOWED_GLOBALS = _allowed()


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"it references {module}.{name}, which a CIFAR-10 batch never does") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("it uses persistent ids, which a CIFAR-10 batch never does")


def load_cifar_pickle(data: bytes) -> Any:
    """A CIFAR-10 python batch (or batches.meta) from its bytes, read as torchvision does (latin-1 for Python 2
    strings) but admitting only numpy arrays, dtypes and plain containers.

    Args:
        data: the pickle's bytes.

    Returns:
        The unpickled object (a dict for a genuine batch).

    Raises:
        UnsafePickleError: the pickle references any other global; nothing of it was imported or called.
    """
    return _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
