"""Grouped, stratified, seeded splits: all segments of one group land in one split.

Groups are assigned greedily, rarest label first, each to the part whose per-label deficit it fills
best (iterative stratification at the group level); ties are broken by a seeded shuffle. Split
names: ``train``, ``val`` and (optional, held out first) ``test``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np

from monitor.errors import MonitorError

log = logging.getLogger(__name__)


def _group_counts(groups: Sequence[str], labels: Sequence[tuple[str, ...]], names: list[str]):
    """(group names, (n_groups, n_labels + 1) segment counts; the last column counts negatives)."""
    uniq = list(dict.fromkeys(groups))
    pos = {g: i for i, g in enumerate(uniq)}
    col = {n: j for j, n in enumerate(names)}
    counts = np.zeros((len(uniq), len(names) + 1))
    for g, lab in zip(groups, labels):
        row = counts[pos[g]]
        known = [col[x] for x in lab if x in col]
        if known:
            row[known] += 1
        else:
            row[-1] += 1
    return uniq, counts


def assign_groups(groups: Sequence[str], labels: Sequence[tuple[str, ...]], names: list[str],
                  fractions: Sequence[float], seed: int = 0) -> np.ndarray:
    """Part index (0..len(fractions)-1) of every row; a group's rows share one part."""
    uniq, counts = _group_counts(groups, labels, names)
    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    totals = counts.sum(0)
    rarity = np.where(totals > 0, totals, np.inf)
    # rarest label a group carries, then bigger groups first; the shuffle breaks remaining ties
    key = [(float(np.min(np.where(counts[i] > 0, rarity, np.inf))), -counts[i].sum()) for i in order]
    order = [order[k] for k in sorted(range(len(order)), key=lambda k: key[k])]
    want = fr[:, None] * totals[None, :]  # (parts, labels)
    have = np.zeros_like(want)
    n_groups_want = fr * len(uniq)
    n_groups = np.zeros(len(fr))
    part_of = np.empty(len(uniq), dtype=int)
    for i in order:
        c = counts[i]
        gain = ((np.minimum(have + c, want) - np.minimum(have, want)) * (c > 0)).sum(1)
        deficit = (want - have).clip(min=0) @ (c > 0)
        score = np.stack([gain, deficit, n_groups_want - n_groups, rng.random(len(fr))], 1)
        best = max(range(len(fr)), key=lambda p: tuple(score[p]))
        part_of[i] = best
        have[best] += c
        n_groups[best] += 1
    pos = {g: i for i, g in enumerate(uniq)}
    return np.array([part_of[pos[g]] for g in groups], dtype=int)


def read_list(path: str | Path) -> list[str]:
    """A file list (one relative path a line; ``#`` comments and blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise MonitorError(f"file list {p} does not exist")
    return [v.strip().replace("\\", "/") for v in p.read_text(encoding="utf-8").splitlines()
            if v.strip() and not v.lstrip().startswith("#")]


def match_files(files: Iterable[str], wanted: Sequence[str]) -> np.ndarray:
    """Rows whose path equals, or ends with ``/`` + , one of ``wanted`` (relative paths). Linear time:
    each path's suffixes are looked up in a set (a 100 000-file list against 10 000 names is instant)."""
    want = {w.strip().replace("\\", "/").strip("/") for w in wanted if w.strip()}
    out = []
    for f in files:
        parts = str(f).replace("\\", "/").split("/")
        out.append(any("/".join(parts[k:]) in want for k in range(len(parts))))
    return np.array(out, dtype=bool)


def train_val_split(table, names: list[str], val_fraction: float, seed: int = 0,
                    val_files: Sequence[str] | None = None) -> np.ndarray:
    """``'train'``/``'val'`` per row. ``val_files``: relative paths (suffix match) that form the validation split."""
    if val_files is not None:
        is_val = match_files(table["file"], [v for v in val_files if not v.lstrip().startswith("#")])
        if not is_val.any():
            log.warning("split.val_files names none of the data's files: no validation split")
        return np.where(is_val, "val", "train").astype(object)
    if val_fraction <= 0 or table["group"].nunique() < 2:
        if val_fraction > 0:
            log.warning("only one group: no validation split")
        return np.full(len(table), "train", dtype=object)
    part = assign_groups(list(table["group"]), list(table["labels"]), names, [1 - val_fraction, val_fraction], seed)
    return np.where(part == 1, "val", "train").astype(object)


def assign_splits(table, names: list[str], cfg, fixed: np.ndarray | None = None) -> np.ndarray:
    """``train``/``val``/``test`` per row from a ``SplitConfig``. The test split is held out first
    (``test_files`` or ``test_fraction``; rows already marked in ``fixed`` are kept as they are), then
    validation among the rest (``val_files`` or ``val_fraction``). Raises if a group crosses splits."""
    split = np.full(len(table), "", dtype=object) if fixed is None else np.asarray(fixed, dtype=object).copy()
    free = split == ""
    pool = int(free.sum())  # the rows this split divides (a test_folder's rows come on top)
    if cfg.test_files:
        hit = match_files(table["file"], read_list(cfg.test_files)) & free
        if not hit.any():
            raise MonitorError(f"split.test_files {cfg.test_files} names none of the data's files")
        split[hit] = "test"
    elif cfg.test_fraction > 0:
        sub = table[free].reset_index(drop=True)
        if sub["group"].nunique() < 3:
            raise MonitorError("split.test_fraction needs at least 3 groups (recordings); the data has "
                               f"{sub['group'].nunique()}")
        part = assign_groups(list(sub["group"]), list(sub["labels"]), names, [1 - cfg.test_fraction,
                                                                               cfg.test_fraction], cfg.seed + 7919)
        idx = np.flatnonzero(free)
        split[idx[part == 1]] = "test"
    free = split == ""
    if (split == "val").any():  # a fixed validation set (data.val_manifest): the rest trains
        split[free] = "train"
    elif free.any():
        sub = table[free].reset_index(drop=True)
        val_files = read_list(cfg.val_files) if cfg.val_files else None
        frac = cfg.val_fraction * pool / free.sum()  # a share of the data, beside a test part taken from it
        split[np.flatnonzero(free)] = train_val_split(sub, names, min(frac, 0.9), cfg.seed, val_files)
    check_disjoint(table, split, listed=bool(cfg.val_files or cfg.test_files))
    return split


def kfold(table, names: list[str], k: int, seed: int = 0, exclude: np.ndarray | None = None) -> np.ndarray:
    """Grouped, stratified K-fold: the fold (0..k-1) of every row; -1 for ``exclude``d rows (the test split)."""
    use = np.ones(len(table), dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    sub = table[use]
    if sub["group"].nunique() < k:
        raise MonitorError(f"--folds {k} needs at least {k} groups; the data has {sub['group'].nunique()}")
    fold = np.full(len(table), -1, dtype=int)
    fold[use] = assign_groups(list(sub["group"]), list(sub["labels"]), names, [1.0] * k, seed)
    return fold


def check_disjoint(table, split: Sequence[str], listed: bool = False) -> None:
    """Raise ``MonitorError`` if one group has rows in two splits (``listed``: the split came from file lists)."""
    seen: dict[str, str] = {}
    for g, s in zip(table["group"], split):
        if seen.setdefault(g, s) != s:
            fix = ("a file list (split.val_files / split.test_files) must name every file of a group; add the "
                   "rest of it, or change data.group_regex" if listed else "check data.group_regex")
            raise MonitorError(f"group {g!r} has segments in both the {seen[g]} and the {s} split; {fix}")


# --- clips cut from one recording ----------------------------------------------------------------------

_TAIL = re.compile(r"[_\-. ](?:\d{1,3}|\d+(?:\.\d+)?s|[A-Za-z]|(?:part|seg|segment|clip|chunk|cut)\d+)$", re.I)
GROUP_REGEX_HINT = r"([^/]+?)(?:[_\-. ](?:\d{1,3}|\d+(?:\.\d+)?s|[A-Za-z]))*\.\w+$"


def clip_base(path: str) -> str | None:
    """The recording a clip's file name suggests it was cut from (``rec_03.wav`` -> ``rec``,
    ``1-100032-A-0.wav`` -> ``1-100032``, ``x_nohash_2.wav`` -> ``x_nohash``), or None when the
    name carries no clip counter. Counters: up to 3 digits, a time (``12.5s``), one letter, ``partN``."""
    stem = PurePosixPath(str(path).replace("\\", "/")).name.split(".")[0]
    base = stem
    for _ in range(3):
        m = _TAIL.search(base)
        if not m or m.start() == 0:
            break
        base = base[:m.start()]
    return base if base != stem and base else None


def leaking_families(table, split: Sequence[str]) -> list[list[str]]:
    """Families of file names that look cut from one recording (``clip_base``) but lie in several
    groups *and* several splits: lists of their file names (largest first)."""
    fam: dict[str, dict[str, set]] = {}
    for f, g, s in zip(table["file"], table["group"], split):
        b = clip_base(f)
        if b is None:
            continue
        d = fam.setdefault(b, {"files": set(), "groups": set(), "splits": set()})
        d["files"].add(PurePosixPath(str(f).replace("\\", "/")).name)
        d["groups"].add(g)
        d["splits"].add(s)
    out = [sorted(d["files"]) for d in fam.values() if len(d["groups"]) > 1 and len(d["splits"]) > 1]
    return sorted(out, key=lambda x: (-len(x), x))


def warn_leaks(table, split: Sequence[str]) -> list[list[str]]:
    """Log one warning when file names suggest clips of one recording on both sides of a split."""
    fams = leaking_families(table, split)
    if fams:
        ex = ", ".join(fams[0][:3])
        log.warning("%d groups of files look like clips cut from one recording (e.g. %s) but lie in different "
                    "splits, which would leak; if they are, set data.group_regex so each recording is one group "
                    "(for names like these: '%s')", len(fams), ex, GROUP_REGEX_HINT)
    return fams


def save_split(table, split: Sequence[str], path: Path) -> None:
    """Write ``splits.csv`` (file, start_s, end_s, labels, group, unknown, split)."""
    df = table.copy()
    df["labels"] = [";".join(t) for t in df["labels"]]
    if "unknown" in df:
        df["unknown"] = [";".join(t) for t in df["unknown"]]
    df["split"] = list(split)
    df.to_csv(path, index=False)


def load_split(path: Path) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False)["split"].to_numpy(dtype=object)
