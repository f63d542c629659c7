"""Finding the dataset to use: an explicit path (--data), $COINFER_DATA, what is under `<cache>/data/`, or
torchvision's CIFAR-10 download; each decoded once and read from the cache afterwards."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

from engine.data.cache import load_source, scan_cache
from engine.data.images import ImageData
from engine.data.sources import CIFAR_DIR, LAYOUTS, resolve_source
from engine.errors import DataNotFoundError, UserError
from engine.paths import PROJECT_ROOT
from engine.paths import cache_dir as default_cache_dir

log = logging.getLogger(__name__)

CIFAR_URL_HOST = "www.cs.toronto.edu"
DOWNLOAD_TIMEOUT_S = 10.0


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout` seconds (DNS included), else the reason."""
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(str(exc) or type(exc).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return result[0] if result else f"no answer from {host} in {timeout:.0f} s"


def _download_cifar(data_dir: Path) -> Path:
    """Download CIFAR-10 with torchvision into data_dir; returns the cifar-10-batches-py folder. Fails fast
    (about DOWNLOAD_TIMEOUT_S at most) when the host is unreachable."""
    if reason := _reachable(CIFAR_URL_HOST, 443, DOWNLOAD_TIMEOUT_S):
        raise OSError(f"cannot reach {CIFAR_URL_HOST}: {reason}")
    from torchvision.datasets import CIFAR10

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60.0)
    try:
        log.warning("downloading CIFAR-10 (170 MB) into %s", data_dir)
        CIFAR10(str(data_dir), train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous)
    return data_dir / CIFAR_DIR


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix() + "/"
    except ValueError:
        return f"{path}/"


def load_data(path: str | os.PathLike[str] | None = None, *, cache_dir: Path | None = None,
              download: bool = True) -> ImageData:
    """The dataset at `path` (else $COINFER_DATA, else whatever is under <cache>/data/, else torchvision's CIFAR-10
    download into <cache>/data/), decoded once and cached there by content hash.

    Args:
        path: a CIFAR-10 root, an ImageFolder directory with train/ and test/, or a tar archive of either.
        cache_dir: the cache root; None: engine.paths.cache_dir().
        download: whether to download CIFAR-10 when no dataset is found.

    Returns:
        The decoded dataset.

    Raises:
        UserError: a named source is missing or unreadable.
        DataNotFoundError: no dataset anywhere, and no download.
    """
    data_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "data"
    env = os.environ.get("COINFER_DATA", "").strip()
    if path is not None and str(path).strip():
        return load_source(resolve_source(Path(path).expanduser(), "--data"), data_dir)
    if env:
        return load_source(resolve_source(Path(env).expanduser(), "COINFER_DATA"), data_dir)
    if (data := scan_cache(data_dir)) is not None:
        return data
    reason = "disabled"
    if download:
        try:
            root = _download_cifar(data_dir)
            return load_source(resolve_source(root, "download"), data_dir)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            reason = f"failed: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}"
    raise DataNotFoundError(
        f"no dataset found: pass --data PATH ({LAYOUTS}), set COINFER_DATA=PATH, or place one under "
        f"{_display(data_dir)} (torchvision's CIFAR-10 download {reason})"
    )
