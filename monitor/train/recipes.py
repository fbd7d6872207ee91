"""Training recipes by name: ``monitor recipes list | show | copy`` and ``monitor train NAME``.

Recipes are the YAML files in the packaged ``configs/`` folder (``monitor.resources.packaged``), addressed
by name (``rana_draytonii`` or ``rana_draytonii.yaml``). A packaged recipe's relative paths are read as
if the recipe were ``./configs/NAME.yaml`` in the current folder (so ``data.root: ../data`` means
``./data``, and ``monitor train NAME`` from a checkout's root does exactly what ``monitor train
configs/NAME.yaml`` does); only files that ship beside it (``demo_val.txt``) are read from the package.
No heavy imports: ``monitor recipes`` stays instant.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from monitor.config import load_yaml
from monitor.errors import MonitorError
from monitor.resources import packaged
from monitor.train.config import PATH_KEYS, build_config, load_config

log = logging.getLogger(__name__)


def recipes_dir() -> Path:
    """The packaged recipes' folder (``configs/``)."""
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
        rows.append({"name": name, "summary": first_clause(recipe_description(path)), "path": str(path)})
    return rows


def first_clause(text: str) -> str:
    """Text up to the first ``. `` or ``: `` outside parentheses (a colon inside them belongs to the clause)."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth <= 0 and ch in ".:" and text[i + 1:i + 2] == " ":
            return text[:i]
    return text.rstrip(".")


def _shipped_refs(path: Path) -> list[tuple[str, str, str, Path]]:
    """Files a recipe references that ship beside it (e.g. ``split.val_files: demo_val.txt``), as
    (section, key, value as written, file)."""
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
