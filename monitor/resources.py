"""What ships inside the package: the default model bundle, the training recipes and the example SD card.

An installed wheel holds them under ``monitor/_data/`` (``models/``, ``configs/``, ``examples/``; see
``setup.py``); a checkout holds the same folders at its top level. Every lookup goes through
:func:`packaged`, so ``monitor run`` without ``--model``, ``monitor train NAME`` and
``monitor example-card DIR`` work from any working directory either way. Recipes by name:
``monitor.train.recipes``.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
from pathlib import Path

from monitor.errors import MonitorError

log = logging.getLogger(__name__)

KINDS = ("models", "configs", "examples")
CARD = "sdcard"


def packaged(kind: str) -> Path:
    """The folder of packaged ``kind`` (models, configs or examples): in the wheel, else the checkout's."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    here = Path(__file__).resolve().parent
    inside = here / "_data" / kind
    return inside if inside.is_dir() else here.parent / kind


def monitor_cache() -> Path:
    """Where downloads and exports are cached: ``$MONITOR_CACHE`` or ``~/.cache/monitor``."""
    return Path(os.environ.get("MONITOR_CACHE") or Path.home() / ".cache" / "monitor")


def models_dir() -> Path:
    """Folder of the bundled model bundles (the default ``demo-frog-bird`` lives here)."""
    return packaged("models")


def example_card_source() -> Path:
    """The packaged example SD card (read-only: write a copy with :func:`example_card`)."""
    return packaged("examples") / CARD


# --- example card -------------------------------------------------------------------------------------

def _card_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _holds_card(dest: Path, src: Path) -> bool:
    """True when ``dest`` holds exactly the packaged card's files, byte for byte, and nothing else."""
    if _card_files(dest) != _card_files(src):
        return False
    return all(filecmp.cmp(src / rel, dest / rel, shallow=False) for rel in _card_files(src))


def example_card(dest: str | Path, overwrite: bool = False) -> Path:
    """Write the packaged example SD card into folder ``dest`` and return its path.

    ``dest`` must be missing or empty; a folder that already holds exactly this card is returned as it
    is (re-running a notebook cell is harmless). Anything else is refused unless ``overwrite``, which
    writes the card's files over it and leaves other files alone (nothing is deleted).
    """
    src = example_card_source()
    if not src.is_dir():
        raise MonitorError(f"the example card is not installed here ({src} is missing); reinstall monitor")
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise MonitorError(f"{dest} is a file; give a folder for the example card")
    if dest.is_dir() and any(dest.iterdir()):
        if _holds_card(dest, src):
            log.debug("%s already holds the example card", dest)
            return dest
        if not overwrite:
            raise MonitorError(f"{dest} is not empty; choose a new or empty folder, or pass --force to write the "
                               "card's files over it (other files are kept)")
    for rel in _card_files(src):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)
    return dest


def example_card_command(args) -> int:
    """``monitor example-card DIR [--force]``."""
    dest = example_card(args.dir, overwrite=args.force)
    n = len(_card_files(dest))
    print(f"example SD card ({n} files) in {dest}; sources and licences: "
          f"{packaged('examples') / 'ATTRIBUTION.md'}")
    print(f"next: monitor run {dest} --out reports/example")
    return 0
