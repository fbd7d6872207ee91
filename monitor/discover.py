"""Walk an SD-card folder: every recording, in sorted order, and every oddity listed with a reason.

Deterministic (names sorted at every level), recursive, survives unreadable folders and symlink
loops, and never silently drops a file: what is not a recording is returned in ``skipped``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Extensions of formats libsndfile decodes (soundfile.available_formats()), plus common aliases.
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".bwf", ".rf64", ".w64", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mpga", ".aif",
    ".aiff", ".aifc", ".au", ".snd", ".caf", ".raw", ".voc", ".sd2", ".ircam", ".sf", ".nist", ".sph",
    ".paf", ".pvf", ".xi", ".htk", ".avr", ".svx", ".8svx", ".mat", ".mpc", ".sds", ".wve",
})


@dataclass(frozen=True)
class Found:
    path: Path
    rel: str  # posix path relative to the root
    size: int
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
    if Path(name).suffix.lower() not in AUDIO_EXTENSIONS:
        return f"not an audio file ({Path(name).suffix or 'no extension'})"
    if size == 0:
        return "empty file (0 bytes)"
    return None


def discover(root: Path) -> Discovery:
    """Recursively list ``root``. Symlinked files are followed; a folder is visited once (loops cut)."""
    root = Path(root)
    out = Discovery()
    seen: set[tuple[int, int]] = set()

    def rel_of(p: str) -> str:
        return Path(os.path.relpath(p, root)).as_posix()

    def walk(folder: str) -> None:
        try:
            st = os.stat(folder)
        except OSError as exc:
            out.skipped.append(Skipped(rel_of(folder), f"folder could not be read ({exc.strerror})", "failed"))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:
            out.skipped.append(Skipped(rel_of(folder), "folder link that loops back (visited already)"))
            return
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.skipped.append(Skipped(rel_of(folder), f"folder could not be read ({exc.strerror})", "failed"))
            return
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if e.name.startswith(".") and not e.is_symlink():
                    out.skipped.append(Skipped(rel_of(e.path), "hidden folder, not searched"))
                    continue
                walk(e.path)
                continue
            try:
                st = e.stat(follow_symlinks=True)
            except OSError as exc:
                out.skipped.append(Skipped(rel_of(e.path), f"could not be read ({exc.strerror})", "failed"))
                continue
            reason = _reason_for(e.name, st.st_size)
            if reason:
                out.skipped.append(Skipped(rel_of(e.path), reason))
            else:
                out.recordings.append(Found(Path(e.path), rel_of(e.path), st.st_size, st.st_mtime_ns))

    walk(str(root))
    out.skipped.sort(key=lambda s: s.rel)
    return out
