"""Reading a dataset's tar archive (gzip, bzip2, xz or none) in one pass over its uncompressed stream, one member at
a time: only the members asked for are held, each size checked against the limits (`engine.data.limits`) before it
is read, an extended header past its limit is refused before tarfile reads it whole, and the stream itself stops at
MAX_STREAM_BYTES (a compression bomb costs seconds, not memory)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from engine.data.limits import (
    ENTRY_BYTES,
    MAX_FILE_BYTES,
    MAX_HEADER_BYTES,
    MAX_HELD_BYTES,
    MAX_IMAGES,
    MAX_STREAM_BYTES,
)
from engine.errors import UserError

_EXTENDED = {tarfile.XHDTYPE: "pax", tarfile.XGLTYPE: "pax", tarfile.SOLARIS_XHDTYPE: "pax",
             tarfile.GNUTYPE_LONGNAME: "long-name", tarfile.GNUTYPE_LONGLINK: "long-link"}
_BROKEN = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


class _Capped(io.RawIOBase):
    """A binary stream that refuses to yield more than `limit` bytes of `inner` (an archive that expands past it)."""

    def __init__(self, inner: BinaryIO, limit: int, refuse: Callable[[], Exception]) -> None:
        super().__init__()
        self.inner, self.limit, self.refuse, self.count = inner, limit, refuse, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self.inner.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n
        if self.count > self.limit:
            raise self.refuse()
        return n

    def close(self) -> None:
        self.inner.close()
        super().close()


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose extended records (pax, GNU long names) are refused past MAX_HEADER_BYTES before tarfile
    reads them whole into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"a {_EXTENDED[self.type]} header of {self.size:,} bytes, over the "
                                    f"{MAX_HEADER_BYTES:,}-byte limit")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _uncompressed(path: Path, hint: str) -> _Capped:
    """The archive's uncompressed stream (gzip, bzip2, xz or none, told by the magic bytes), capped."""
    with open(path, "rb") as f:
        magic = f.read(6)
    opener = (gzip.open if magic[:2] == b"\x1f\x8b" else bz2.open if magic[:3] == b"BZh"
              else lzma.open if magic == b"\xfd7zXZ\x00" else open)
    return _Capped(opener(path, "rb"), MAX_STREAM_BYTES, lambda: UserError(
        f"{path.name} expands past {MAX_STREAM_BYTES:,} bytes (a compression bomb?); {hint}"))


def _open(raw: _Capped) -> tarfile.TarFile:
    return tarfile.open(fileobj=raw, mode="r|", tarinfo=_BoundedTarInfo)  # type: ignore[call-overload]


def is_tar(path: Path) -> bool:
    """Whether the file is a tar archive (maybe compressed), from its first member.

    Args:
        path: the file.

    Returns:
        True when a tar header is read from it.
    """
    try:
        with _uncompressed(path, "") as raw, _open(raw) as tf:
            return tf.firstmember is not None
    except (*_BROKEN, UserError):
        return False


def normal_name(name: str) -> str | None:
    """A member's name as '/'-joined parts without empty and '.' parts; None for a hidden file or folder (a part
    starting with '.') or macOS's __MACOSX resource forks, which a dataset never means.

    Args:
        name: the member's name in the archive.

    Returns:
        The name, or None.
    """
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return "/".join(parts)


class _Budget:
    """What the members held so far cost, checked before each is read."""

    def __init__(self, archive: str, hint: str) -> None:
        self.archive, self.hint, self.held, self.count = archive, hint, 0, 0

    def take(self, member: tarfile.TarInfo, name: str) -> None:
        what = f"{self.archive}: {name}"
        if member.issparse():
            raise UserError(f"{what} is a sparse file, not an image or a batch; {self.hint}")
        if member.size > MAX_FILE_BYTES:
            raise UserError(f"{what} claims {member.size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit of one "
                            f"file; {self.hint}")
        self.held += member.size + ENTRY_BYTES
        self.count += 1
        if self.held > MAX_HELD_BYTES or self.count > MAX_IMAGES:
            raise UserError(f"{self.archive} holds more than {MAX_IMAGES:,} files or {MAX_HELD_BYTES:,} bytes of "
                            f"images and batches, the limits of a dataset; use a smaller one")


def read_members(path: Path, keep: Callable[[str], bool], hint: str) -> dict[str, bytes]:
    """The regular files of a tar archive whose normalised names (`normal_name`) `keep` accepts, read in one pass,
    one member at a time, each checked against the limits before it is read.

    Args:
        path: the archive.
        keep: which names to read; the others are skipped unread.
        hint: what to do instead, appended to the messages about a damaged archive.

    Returns:
        The members' bytes by normalised name.

    Raises:
        UserError: in one line, for a damaged archive or one past the limits.
    """
    out: dict[str, bytes] = {}
    budget = _Budget(path.name, hint)
    try:
        with _uncompressed(path, hint) as raw, _open(raw) as tf:
            while (member := tf.next()) is not None:
                tf.members.clear()  # a stream's headers are not kept: a million tiny members cost nothing
                name = normal_name(member.name)
                if name is None or not member.isfile() or not keep(name):
                    continue
                budget.take(member, name)
                data = tf.fileobj.read(member.size)  # the stream stands at its data: no file object per member
                if len(data) != member.size:
                    raise tarfile.ReadError(f"{name} ends after {len(data):,} of its {member.size:,} bytes")
                out[name] = data
    except _BROKEN as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(":")[:160]
        raise UserError(f"{path.name} is not a readable tar archive ({reason}); {hint}") from None
    return out
