"""What ships inside the package: the default model bundle, the training recipes and the example SD card.

An installed wheel holds them under ``monitor/_data/`` (``models/``, ``configs/``, ``examples/``; see
``setup.py``); a checkout holds the same folders at its top level. Every lookup goes through
:func:`packaged`, so ``monitor run`` without ``--model``, ``monitor train NAME`` and
``monitor example-card DIR`` work from any working directory either way.

Recipes are addressed by name (``rana_draytonii`` or ``rana_draytonii.yaml``). A packaged recipe's
relative paths are read as if the recipe were ``./configs/NAME.yaml`` in the current folder (so
``data.root: ../data`` means ``./data``, and ``monitor train NAME`` from a checkout's root does exactly
what ``monitor train configs/NAME.yaml`` does); only files that ship beside it (``demo_val.txt``) are
read from the package.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
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


def models_dir() -> Path:
    """Folder of the bundled model bundles (the default ``demo-frog-bird`` lives here)."""
    return packaged("models")


def example_card_source() -> Path:
    """The packaged example SD card (read-only: write a copy with :func:`example_card`)."""
    return packaged("examples") / CARD


# --- recipes ------------------------------------------------------------------------------------------

def recipes_dir() -> Path:
    return packaged("configs")


def recipe_names() -> list[str]:
    """Names of the packaged recipes, sorted."""
    d = recipes_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _packaged_recipe(name: str) -> Path | None:
    stem = name[:-5] if name.endswith(".yaml") else name
    if not stem or "/" in stem or os.sep in stem or stem.startswith("."):
        return None
    p = recipes_dir() / f"{stem}.yaml"
    return p if p.is_file() else None


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, else the packaged recipe of that name (one-line error otherwise)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    found = _packaged_recipe(str(name_or_path))
    if found is not None:
        return found
    names = ", ".join(recipe_names()) or "(none: the package is incomplete, reinstall monitor)"
    raise MonitorError(f"no recipe file {str(name_or_path)!r} and no packaged recipe of that name; packaged recipes: "
                       f"{names} (`monitor recipes copy NAME DIR` gives you one to edit)")


def is_packaged_recipe(name_or_path: str | Path) -> bool:
    """True when ``name_or_path`` resolves to a packaged recipe (by name), not to a file of the user's."""
    return not Path(name_or_path).expanduser().is_file() and _packaged_recipe(str(name_or_path)) is not None


def recipe_description(path: Path) -> str:
    """The recipe's leading comment block as one paragraph (its first sentence is the summary)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith(("monitor ", "python ")):
            continue
        lines.append(text)
    return " ".join(x for x in lines if x)


def list_recipes() -> list[dict[str, str]]:
    """One row per packaged recipe: name, what it is (first sentence of its comment), path."""
    rows = []
    for name in recipe_names():
        path = recipes_dir() / f"{name}.yaml"
        desc = recipe_description(path)
        first = re.split(r"\. |: ", desc, maxsplit=1)[0].rstrip(".")  # the first clause
        rows.append({"name": name, "summary": first, "path": str(path)})
    return rows


def _shipped_refs(path: Path) -> list[tuple[str, str, str, Path]]:
    """Files a recipe references that ship beside it (e.g. ``split.val_files: demo_val.txt``), as
    (section, key, value as written, file)."""
    from monitor.config import load_yaml
    from monitor.train.config import PATH_KEYS

    raw = load_yaml(path) or {}
    base = path.parent.resolve()
    out = []
    for section, keys in PATH_KEYS.items():
        sec = raw.get(section)
        if not isinstance(sec, dict):
            continue
        for key in keys:
            val = sec.get(key)
            if isinstance(val, str) and val and not Path(val).is_absolute():
                cand = (base / val).resolve()
                if cand.is_file() and cand.is_relative_to(base):
                    out.append((section, key, val, cand))
    return out


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None):
    """A ``TrainConfig`` from a recipe file, or from a packaged recipe by name (see the module doc for how
    a packaged recipe's relative paths resolve). ``overrides``: ``SECTION.KEY=VALUE`` (relative to the cwd)."""
    from monitor.config import load_yaml
    from monitor.train.config import build_config, load_config

    if not is_packaged_recipe(name_or_path):
        return load_config(recipe_path(name_or_path), list(overrides or []))
    path = recipe_path(name_or_path)
    raw = load_yaml(path) or {}
    for section, key, _, file in _shipped_refs(path):
        raw[section][key] = str(file)
    return build_config(raw, Path.cwd() / "configs", list(overrides or []))


def copy_recipe(name: str, dest: str | Path, overwrite: bool = False) -> Path:
    """Copy packaged recipe ``name`` (and the files it references that ship with it) for editing.

    ``dest`` is a folder (created) or a ``.yaml`` file name. An existing file is replaced only with
    ``overwrite``. Returns the written recipe's path.
    """
    src = _packaged_recipe(name)
    if src is None:
        raise MonitorError(f"no packaged recipe {name!r}; packaged recipes: {', '.join(recipe_names())}")
    dest = Path(dest).expanduser()
    target = dest if dest.suffix in (".yaml", ".yml") else dest / src.name
    files = [(src, target)] + [(f, target.parent / val) for _, _, val, f in _shipped_refs(src)]
    clash = [t for _, t in files if t.exists()]
    if clash and not overwrite:
        raise MonitorError(f"{clash[0]} exists; choose another destination or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    for s, t in files:
        shutil.copyfile(s, t)
    return target


def recipes_command(args) -> int:
    """``monitor recipes list | show NAME | copy NAME DEST [--force]``."""
    action = getattr(args, "recipes_command", None) or "list"
    if action == "list":
        rows = list_recipes()
        width = max((len(r["name"]) for r in rows), default=4)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['summary']}")
        print("\nshow one: monitor recipes show NAME; edit one: monitor recipes copy NAME DIR; "
              "train: monitor train NAME --out DIR")
        return 0
    if action == "show":
        path = recipe_path(args.name)
        print(path.read_text(encoding="utf-8"), end="")
        for _, _, val, _ in _shipped_refs(path):
            print(f"# ships with it: {val}")
        return 0
    if action == "copy":
        target = copy_recipe(args.name, args.dest, overwrite=args.force)
        print(f"wrote {target}; edit it, then: monitor train {target} --out runs/{target.stem}")
        return 0
    raise MonitorError(f"unknown recipes action {action!r}")


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
