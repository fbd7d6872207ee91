"""Files written whole or not at all, and file digests (no heavy imports).

``atomic_path`` / ``atomic_write``: the new content goes to ``.NAME.PID.tmp`` beside the target, is
flushed to disk and renamed over it, so a reader (or a run resumed after a crash) sees the old file
or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds the temp file replaces ``path``
    (flushed to disk first, and the rename after, unless ``fsync=False``); on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if fsync:
        fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], Any], fsync: bool = True) -> None:
    """``write(tmp_path)``, then ``tmp_path`` replaces ``path`` (see ``atomic_path``)."""
    with atomic_path(path, fsync) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data``, atomically and flushed to disk."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``text``, atomically and flushed to disk."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))
