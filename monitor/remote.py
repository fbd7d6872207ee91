"""Inputs beyond a local disk: fsspec URLs (``s3://``, ``gs://``, ``file://``, ``memory://``, ...) as the
input of ``monitor run``.

Only I/O lives here: a plain path (a local disk, a NAS mount) never comes here: it keeps the ``os``/``open``
code path and needs no fsspec. A URL is listed recursively (``list_files``; ``discover`` decides what is a
recording), its files' headers are read through a
file object (``open_input``: the RIFF walker and soundfile take file objects), and decoding seeks inside
the file through the same kind of object, opened with a read-ahead cache whose blocks are sized for
reading 10 s segments of long WAVs (a 384 kHz 16-bit segment is 7.7 MB). The input is only ever read.

fsspec (and the filesystem's own package: ``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://``) come with
the ``remote`` extra (``pip install 'monitor[remote]'``; the ``ray`` extra includes it). Credentials
are the filesystem's usual ones (``AWS_*`` variables or ``~/.aws`` for s3fs, ``GOOGLE_APPLICATION_
CREDENTIALS`` for gcsfs). With ``--engine ray`` every node opens the URL itself, so a bucket must be
reachable from every node; ``memory://`` exists only inside one process (the local engine with ``--workers 0``, tests).
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Any, BinaryIO

from monitor.errors import MonitorError

log = logging.getLogger(__name__)

READ_AHEAD_BYTES = 8 << 20  # fsspec block size: one request covers a 10 s 384 kHz 16-bit segment and more
INSTALL_HINT = "reading {what} needs fsspec: pip install 'monitor[remote]'"


def is_url(path: Any) -> bool:
    """True for an fsspec URL given as a string (``proto://...``); ``Path`` objects are local paths."""
    return isinstance(path, str) and "://" in path


def url_fs(url: str):
    """``(filesystem, path inside it)`` for a URL; a one-line ``MonitorError`` when fsspec or the
    filesystem's package is missing."""
    try:
        import fsspec
    except ImportError:
        raise MonitorError(INSTALL_HINT.format(what=url)) from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise MonitorError(f"cannot open {url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from None


def open_input(path: str | Path, block_size: int = READ_AHEAD_BYTES) -> BinaryIO:
    """A binary file object for reading: ``open`` for a local path, fsspec with read-ahead for a URL."""
    if not is_url(path):
        return open(path, "rb")
    fs, p = url_fs(str(path))
    return fs.open(p, "rb", block_size=block_size, cache_type="readahead")


def url_name(url: str) -> str:
    """The last component of a URL's path (the card folder's name)."""
    return posixpath.basename(url.split("://", 1)[1].rstrip("/")) or url


def url_parent(url: str) -> str:
    """The folder part of a file URL (``s3://b/x/f.wav`` -> ``s3://b/x``)."""
    return url.rsplit("/", 1)[0]


def check_input_url(url: str) -> str:
    """The URL of an existing folder, without a trailing slash; else a one-line ``MonitorError``."""
    fs, p = url_fs(url)
    try:
        ok = fs.isdir(p)
    except Exception as exc:  # noqa: BLE001 - credentials, network: one line
        raise MonitorError(f"cannot list {url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from None
    if not ok:
        raise MonitorError(f"input folder not found: {url}")
    return url.rstrip("/")


def _mtime_ns(info: dict[str, Any]) -> int:
    """A listing entry's modification time in ns (0 when the filesystem gives none)."""
    for key in ("mtime", "LastModified", "updated", "last_modified", "created"):
        v = info.get(key)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return int(v.timestamp() * 1e9)
        try:
            return int(float(v) * 1e9)
        except (TypeError, ValueError):
            try:
                from datetime import datetime

                return int(datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return 0


def list_files(url: str) -> list[tuple[str, str, int, int]]:
    """Every file under ``url``, recursively, sorted: ``(file URL, path relative to url, size bytes, mtime ns)``."""
    fs, root = url_fs(url)
    root = root.rstrip("/")
    try:
        listing = fs.find(root, withdirs=False, detail=True)
    except Exception as exc:  # noqa: BLE001 - credentials, network: one line
        raise MonitorError(f"cannot list {url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from None
    return [(fs.unstrip_protocol(p), posixpath.relpath(p, root) if root else p, int(info.get("size") or 0),
             _mtime_ns(info)) for p, info in sorted(listing.items())]


def file_size(url: str) -> int:
    fs, p = url_fs(url)
    return int(fs.size(p))
