"""Grouped, stratified, seeded splits: all segments of one group land in one split.

Groups are assigned greedily, rarest label first, each to the part whose per-label deficit it fills
best (iterative stratification at the group level); ties are broken by a seeded shuffle.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

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


def train_val_split(table, names: list[str], val_fraction: float, seed: int = 0,
                    val_files: Sequence[str] | None = None) -> np.ndarray:
    """``'train'``/``'val'`` per row. ``val_files``: relative paths (suffix match) that form the validation split."""
    if val_files is not None:
        wanted = {v.strip().replace("\\", "/") for v in val_files if v.strip() and not v.lstrip().startswith("#")}
        is_val = np.array([any(str(f).replace("\\", "/").endswith("/" + w) or str(f) == w for w in wanted)
                           for f in table["file"]])
        if not is_val.any():
            log.warning("split.val_files names none of the data's files: no validation split")
        return np.where(is_val, "val", "train")
    if val_fraction <= 0 or table["group"].nunique() < 2:
        if val_fraction > 0:
            log.warning("only one group: no validation split")
        return np.full(len(table), "train", dtype=object)
    part = assign_groups(list(table["group"]), list(table["labels"]), names, [1 - val_fraction, val_fraction], seed)
    return np.where(part == 1, "val", "train")


def kfold(table, names: list[str], k: int, seed: int = 0) -> np.ndarray:
    """Grouped, stratified K-fold: the fold (0..k-1) of every row."""
    if table["group"].nunique() < k:
        from monitor.errors import MonitorError

        raise MonitorError(f"--folds {k} needs at least {k} groups; the data has {table['group'].nunique()}")
    return assign_groups(list(table["group"]), list(table["labels"]), names, [1.0] * k, seed)


def check_disjoint(table, split: Sequence[str]) -> None:
    """Raise if one group appears in two splits."""
    seen: dict[str, str] = {}
    for g, s in zip(table["group"], split):
        if seen.setdefault(g, s) != s:
            raise AssertionError(f"group {g!r} is in both {seen[g]!r} and {s!r}")


def save_split(table, split: Sequence[str], path: Path) -> None:
    """Write ``splits.csv`` (file, start_s, end_s, labels, group, split)."""
    df = table.copy()
    df["labels"] = [";".join(t) for t in df["labels"]]
    df["split"] = list(split)
    df.to_csv(path, index=False)


def load_split(path: Path) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False)["split"].to_numpy(dtype=object)
