"""Walk an SD-card folder: every recording, in sorted order, and every oddity listed with a reason.

Deterministic (names sorted at every level), recursive, survives unreadable folders and symlink
loops, and never silently drops a file: what is not a recording is returned in ``skipped``.
Whether a file with an audio extension really decodes is not decided here (``audio.probe`` does).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from monitor.remote import file_size, is_url, list_files, open_input

log = logging.getLogger(__name__)

# File extensions of each libsndfile major format (keys of ``soundfile.available_formats()``).
# RAW is left out on purpose: header-less audio has no sample rate to read.
_FORMAT_EXTENSIONS = {
    "WAV": (".wav", ".wave", ".bwf"), "WAVEX": (".wav",), "RF64": (".rf64",), "W64": (".w64",),
    "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3", ".mpga"),
    "AIFF": (".aif", ".aiff", ".aifc"), "AU": (".au", ".snd"), "CAF": (".caf",), "SD2": (".sd2",),
    "VOC": (".voc",), "IRCAM": (".sf", ".ircam"), "NIST": (".nist", ".sph"), "PAF": (".paf",),
    "PVF": (".pvf",), "XI": (".xi",), "HTK": (".htk",), "AVR": (".avr",), "SVX": (".svx", ".8svx", ".iff"),
    "MAT4": (".mat",), "MAT5": (".mat",), "MPC2K": (".mpc",), "SDS": (".sds",), "WVE": (".wve",),
}


@functools.lru_cache(maxsize=1)
def audio_extensions() -> frozenset[str]:
    """Lower-case extensions (with dot) of every format this soundfile/libsndfile can decode."""
    import soundfile as sf

    formats = sf.available_formats()
    exts = {e for name, group in _FORMAT_EXTENSIONS.items() if name in formats for e in group}
    return frozenset(exts | {".wav", ".flac"})


def __getattr__(name: str):  # ``AUDIO_EXTENSIONS`` without importing soundfile at module import
    if name == "AUDIO_EXTENSIONS":
        return audio_extensions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Found:
    path: Path | str  # a str: an fsspec URL (``monitor.remote``)
    rel: str  # posix path relative to the root
    size: int  # bytes
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str
    status: str = "skipped"  # "failed" when the file or folder could not be read


@dataclass
class Discovery:
    recordings: list[Found] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _reason_for(name: str, size: int) -> str | None:
    """Why a file is not a recording (None when it is one)."""
    if name.startswith("._"):
        return "macOS metadata file (AppleDouble '._' file), not a recording"
    if name.startswith("."):
        return "hidden file, not a recording"
    suffix = Path(name).suffix
    if suffix.lower() not in audio_extensions():
        return f"not an audio file ({suffix or 'no extension'})"
    if size == 0:
        return "empty file (0 bytes), not a recording"
    return None


def discover(root: Path | str) -> Discovery:
    """Recursively list ``root``; ``recordings`` and ``skipped`` are each sorted by ``rel``.

    Symlinks are followed, but every folder and file is visited once (keyed by device and inode), so
    a link that loops back or a second link to the same file is listed as skipped, not walked again.
    """
    if is_url(root):  # an fsspec URL (bucket, file://, memory://): listed through fsspec
        return discover_url(str(root))
    root = Path(root)
    out = Discovery()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: dict[tuple[int, int], str] = {}

    def rel_of(p: str) -> str:
        return Path(os.path.relpath(p, root)).as_posix()

    def failed(p: str, what: str, exc: OSError) -> None:
        why = exc.strerror or type(exc).__name__
        out.skipped.append(Skipped(rel_of(p), f"{what} could not be read ({why})", "failed"))

    def walk(folder: str) -> None:
        try:
            st = os.stat(folder)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            failed(folder, "folder", exc)
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            out.skipped.append(Skipped(rel_of(folder), "folder link that loops back (visited already)"))
            return
        seen_dirs.add(key)
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if e.name.startswith(".") and not e.is_symlink():
                    out.skipped.append(Skipped(rel_of(e.path), "hidden folder, not searched"))
                else:
                    walk(e.path)
                continue
            try:
                st = e.stat(follow_symlinks=True)
            except OSError as exc:  # dangling link, permission problem
                failed(e.path, "file", exc)
                continue
            rel = rel_of(e.path)
            reason = _reason_for(e.name, st.st_size)
            if reason is None and (st.st_dev, st.st_ino) in seen_files:
                reason = f"same file as {seen_files[(st.st_dev, st.st_ino)]} (a link), listed once"
            if reason:
                out.skipped.append(Skipped(rel, reason))
                continue
            seen_files[(st.st_dev, st.st_ino)] = rel
            out.recordings.append(Found(Path(e.path), rel, st.st_size, st.st_mtime_ns))

    walk(str(root))
    out.recordings.sort(key=lambda f: f.rel)
    out.skipped.sort(key=lambda s: s.rel)
    return out


def discover_url(url: str) -> Discovery:
    """``discover`` for an fsspec URL: every file under it, recursively, sorted; non-recordings listed in
    ``skipped`` with the same reasons as on a disk (hidden folders are not searched)."""
    out = Discovery()
    hidden: set[str] = set()
    for path, rel, size, mtime_ns in list_files(url):
        parts = rel.split("/")
        dot = next((i for i, part in enumerate(parts[:-1]) if part.startswith(".")), None)
        if dot is not None:
            folder = "/".join(parts[:dot + 1])
            if folder not in hidden:
                hidden.add(folder)
                out.skipped.append(Skipped(folder, "hidden folder, not searched"))
            continue
        reason = _reason_for(parts[-1], size)
        if reason:
            out.skipped.append(Skipped(rel, reason))
            continue
        out.recordings.append(Found(path, rel, size, mtime_ns))
    out.recordings.sort(key=lambda f: f.rel)
    out.skipped.sort(key=lambda s: s.rel)
    return out


FINGERPRINT_BYTES = 1 << 16


def fingerprint(path: Path | str, size: int | None = None) -> str:
    """A cheap content identity: sha256 of the size and the first and last 64 KiB (the header, with a
    recorder's ID and start time, and the end of the audio). Two recorders' files of one name differ;
    a copy of the same file, with a new mtime, does not. '' when the file cannot be read."""
    import hashlib

    try:
        if size is None:
            size = file_size(str(path)) if is_url(path) else os.path.getsize(path)
        h = hashlib.sha256(str(size).encode())
        with open_input(path, FINGERPRINT_BYTES) as fh:
            h.update(fh.read(FINGERPRINT_BYTES))
            if size > 2 * FINGERPRINT_BYTES:
                fh.seek(size - FINGERPRINT_BYTES)
                h.update(fh.read(FINGERPRINT_BYTES))
        return h.hexdigest()[:32]
    except OSError:
        return ""
