"""``data.source: embeddings``: training rows from the stored embeddings of a ``monitor run --embeddings`` output
folder (``data.out``) and its reviewers' verdicts (the report's and the search workbooks', read in first).

A verdict spans a detection (or one segment of a search list): every stored segment that starts inside it
gets the verdict for that label only (``yes`` present, ``no`` absent); labels nobody judged there are unknown,
as ``train.reviews`` does for audio. ``data.weak_negatives``: that many segments without any verdict, drawn at
random (seed ``split.seed``), count as absent for every label with weight ``data.weak_negative_weight`` (as
perch-hoplite's weak negatives); they only ever train, never validate. The rows carry their embedding, so
training needs no audio and no backbone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.backbone import check_backbone, run_bundle
from monitor.errors import MonitorError
from monitor.train.reviews import verdict
from monitor.train.table import group_of, make_table

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """The training rows of an embeddings source: ``table`` (the usual segment table; ``file`` is
    ``deployment/file``), ``labels``, each row's float16 ``vectors`` and loss ``weight``, which rows are weak
    negatives (``weak``), the ``bundle`` whose backbone made the embeddings and the folder ``out``."""

    table: Any
    labels: list[str]
    vectors: np.ndarray
    weight: np.ndarray
    weak: np.ndarray
    bundle: Any
    out: Path


def source_bundle(store, checkpoint: str | None):
    """The bundle whose backbone made the stored embeddings (``model.checkpoint``: another with that backbone)."""
    b = run_bundle(store, checkpoint, "model.checkpoint")
    check_backbone(store, b, "set model.checkpoint to the model of the run")
    return b


def load_embedded(cfg) -> Embedded:
    """Rows, targets and embeddings of ``cfg.data`` (source ``embeddings``)."""
    from monitor.outdir import harvest_reviews, open_out

    d = cfg.data
    if not d.out:
        raise MonitorError("data.source: embeddings needs data.out (a `monitor run --embeddings` output folder)")
    out = Path(d.out)
    with open_out(out) as store:
        harvest_reviews(store, out)  # verdicts typed into the report or a search list since monitor last read them
        bundle = source_bundle(store, cfg.model.checkpoint)
        emb = store.load_embeddings(bundle.backbone())
        reviews = store.reviews()
    keyed = [(r.deployment, r.file, r.label, float(r.start_s), float(r.end_s), verdict(r.verified)) for r in reviews]
    keyed = [k for k in keyed if k[5]]
    if not keyed:
        raise MonitorError(f"{out}: no segments marked yes or no (Verified) yet; review a search list or the report")
    found = sorted({k[2] for k in keyed})
    labels = list(d.labels) if d.labels is not None else found
    if d.extend_head:
        labels = list(bundle.labels) + [x for x in labels if x not in bundle.labels]
    rows_of: dict[tuple[str, str], np.ndarray] = {}
    order = np.lexsort((emb.segment, emb.file.astype(str), emb.deployment.astype(str)))
    keys = list(zip(emb.deployment[order], emb.file[order]))
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            rows_of[keys[start]] = order[start:i]
            start = i
    judged: dict[int, dict[str, set[str]]] = {}
    for dep, f, lab, a, b, v in keyed:
        if lab not in labels:
            continue
        rows = rows_of.get((dep, f))
        if rows is None:
            continue
        s = emb.start_s[rows]
        hit = rows[(s >= a - 1e-6) & (s < max(b, a + 1e-3) - 1e-6)]
        for r in hit:
            judged.setdefault(int(r), {}).setdefault(lab, set()).add(v)
    table_rows, vec_rows, conflicts = [], [], 0
    for r in sorted(judged):
        per = judged[r]
        pos = {lab for lab, v in per.items() if v == {"yes"}}
        neg = {lab for lab, v in per.items() if v == {"no"}}
        conflicts += sum(len(v) > 1 for v in per.values())
        if not pos and not neg:
            continue
        name = f"{emb.deployment[r]}/{emb.file[r]}"
        table_rows.append(dict(file=name, start_s=float(emb.start_s[r]), end_s=float(emb.end_s[r]),
                               labels=tuple(sorted(pos)), group=group_of(name, d.group_regex),
                               unknown=tuple(x for x in labels if x not in pos and x not in neg)))
        vec_rows.append(r)
    if conflicts:
        log.warning("%d label verdicts on one segment were both yes and no; they are left unknown", conflicts)
    if not table_rows:
        raise MonitorError(f"{out}: the verdicts point at no stored segment with embeddings")
    n_judged = len(table_rows)
    free = np.setdiff1d(np.arange(len(emb)), np.array(sorted(judged), np.int64))
    if d.weak_negatives and len(free):
        rng = np.random.default_rng(cfg.split.seed)
        weak = np.sort(rng.choice(free, size=min(int(d.weak_negatives), len(free)), replace=False))
        for r in weak:
            name = f"{emb.deployment[r]}/{emb.file[r]}"
            table_rows.append(dict(file=name, start_s=float(emb.start_s[r]), end_s=float(emb.end_s[r]), labels=(),
                                   group="weak:" + group_of(name, d.group_regex), unknown=()))
            vec_rows.append(int(r))
    table = make_table(table_rows)
    is_weak = np.arange(len(table)) >= n_judged
    weight = np.where(is_weak, float(d.weak_negative_weight), 1.0)
    log.info("embeddings source %s: %d judged segments, %d weak negatives, labels %s", out, n_judged,
             int(is_weak.sum()), labels)
    return Embedded(table, labels, emb.vectors[np.array(vec_rows, np.int64)], weight, is_weak, bundle, out)
