"""``monitor search OUT``: segments to listen to, as ``OUT/search/<name>.csv`` and ``.xlsx`` (``sheets``).

- ``--example AUDIO[@START_S]`` (repeatable): the stored segments most similar to the example(s), by the
  cosine similarity of their embeddings (``index``), with the bundle that made the embeddings.
- ``--uncertain LABEL``: the segments the current head is least sure of (margin sampling: nearest the label's
  threshold, in logits), leaving out those with a verdict already.
- ``--sample LABEL``: a random sample stratified by score (one stratum below the threshold, four above it),
  with each stratum's size, so the verdicts estimate precision (and what the threshold misses).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from monitor.agile.examples import example_embeddings, parse_example
from monitor.agile.index import SegmentIndex
from monitor.agile.sheets import reviewed_mask, sheet_name, write_list
from monitor.backbone import check_backbone, run_bundle
from monitor.detect import match_label
from monitor.errors import MonitorError
from monitor.logs import plural
from monitor.outdir import current_thresholds, harvest_reviews, open_out
from monitor.results import RunInfo

log = logging.getLogger(__name__)

STRATA_ABOVE = 4  # equal-width score strata from the threshold to 1


@dataclass
class Listed:
    """What a search wrote: the CSV and workbook, how many rows, over how many segments, in how long."""

    csv: Path
    xlsx: Path
    rows: int
    searched: int
    seconds: float


def _label(store, label: str | None) -> str | None:
    """A label as the folder spells it when it has one of that name (any case), else as given (a new species)."""
    if label is None:
        return None
    names = list(store.get_meta("labels") or [])
    hit = [n for n in names if n.lower() == label.strip().lower()]
    return hit[0] if hit else label.strip()


def search(out_dir: Path | str, examples: Sequence[str], top: int = 100, label: str | None = None,
           name: str | None = None, model: str | None = None) -> Listed:
    """``monitor search OUT --example ...``: see the module docstring."""
    import pandas as pd

    out_dir = Path(out_dir)
    if not examples:
        raise MonitorError("give at least one --example AUDIO[@START_S]")
    parsed = [parse_example(e) for e in examples]
    with open_out(out_dir) as store:
        harvest_reviews(store, out_dir)
        bundle = run_bundle(store, model, "--model")
        bb = check_backbone(store, bundle, "search with the model of the run (--model)")
        info = RunInfo.from_json(store.get_meta("run_info"))
        q = example_embeddings(bundle, parsed, info.batch_size if isinstance(info.batch_size, int) and
                               info.batch_size > 0 else 16)
        emb = store.load_embeddings(bb)
        t0 = time.perf_counter()
        index = SegmentIndex(emb.vectors, emb.norms)
        rows, sim = index.search(q, int(top))
        seconds = time.perf_counter() - t0
        label = _label(store, label)
        picks = pd.DataFrame({"deployment": emb.deployment[rows], "file": emb.file[rows],
                              "start_s": emb.start_s[rows], "end_s": emb.end_s[rows], "similarity": sim})
        name = sheet_name(name or label or parsed[0].path.stem)
        about = [("examples", ", ".join(str(e.path) + f"@{e.start_s:g}" for e in parsed)),
                 ("model", f"{bundle.name} {bundle.version} (backbone {bb[:12]})"),
                 ("similarity", "mean cosine similarity of the segment's embedding to the examples'"),
                 ("searched", f"{len(emb)} segments in {seconds:.2f} s")]
        csv, xlsx = write_list(store, out_dir, name, picks, label, "similarity", about)
    log.info("search %s: %d segments searched in %.2f s", name, len(emb), seconds)
    return Listed(csv, xlsx, len(picks), len(emb), seconds)


def _scores(store, label: str):
    labels = list(store.get_meta("labels") or [])
    if not labels:
        raise MonitorError(f"no results in {store.path.parent} yet")
    lab = match_label(label, labels, "--uncertain/--sample")
    deps, files, _, s0, s1, scores = store.segments()
    thr = current_thresholds(store, RunInfo.from_json(store.get_meta("run_info")))[lab]
    return lab, np.asarray(deps, object), np.asarray(files, object), s0, s1, scores[:, labels.index(lab)], thr


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def uncertain(out_dir: Path | str, label: str, top: int = 100, name: str | None = None) -> Listed:
    """The ``top`` unreviewed segments nearest ``label``'s threshold (smallest logit margin), nearest first."""
    import pandas as pd

    out_dir = Path(out_dir)
    with open_out(out_dir) as store:
        harvest_reviews(store, out_dir)
        lab, deps, files, s0, s1, score, thr = _scores(store, label)
        margin = np.abs(_logit(score) - _logit(np.array([thr])))
        margin[reviewed_mask(deps, files, s0, store, lab)] = np.inf
        order = np.lexsort((np.arange(len(margin)), margin))
        order = order[np.isfinite(margin[order])][:int(top)]
        picks = pd.DataFrame({"deployment": deps[order], "file": files[order], "start_s": s0[order],
                              "end_s": s1[order], "score": score[order], "margin": margin[order]})
        name = sheet_name(name or f"uncertain-{lab}")
        about = [("how", f"margin sampling: the unreviewed segments whose {lab} score is nearest its threshold "
                         f"{thr:g} (|logit(score) - logit(threshold)|), nearest first"),
                 ("segments", f"{len(score)} scored, {int(np.isinf(margin).sum())} already reviewed")]
        csv, xlsx = write_list(store, out_dir, name, picks, lab, "score", about, extra=("margin",))
    return Listed(csv, xlsx, len(picks), len(score), 0.0)


def strata(thr: float) -> list[tuple[float, float]]:
    """Score strata: [0, thr) and ``STRATA_ABOVE`` equal-width ones from ``thr`` to 1 (the last includes 1)."""
    edges = np.linspace(thr, 1.0, STRATA_ABOVE + 1)
    return [(0.0, thr)] + [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


def sample(out_dir: Path | str, label: str, top: int = 100, name: str | None = None, seed: int = 0) -> Listed:
    """About ``top`` segments in equal parts from each score stratum of ``label`` (``strata``), at random
    (``seed``); each row carries its stratum and the stratum's size, the weight its verdict gets in a
    precision estimate: precision = sum(size * yes / (yes + no)) / sum(size) over the strata above the
    threshold."""
    import pandas as pd

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    with open_out(out_dir) as store:
        harvest_reviews(store, out_dir)
        lab, deps, files, s0, s1, score, thr = _scores(store, label)
        bands = strata(thr)
        per = max(1, int(top) // len(bands))
        chosen, names, sizes = [], [], []
        for k, (a, b) in enumerate(bands):
            inside = np.flatnonzero((score >= a) & ((score < b) if k < len(bands) - 1 else (score <= b)))
            take = np.sort(rng.choice(inside, size=min(per, len(inside)), replace=False)) if len(inside) else inside
            chosen.append(take)
            names += [f"{a:.3f}-{b:.3f}" + (" (below threshold)" if k == 0 else "")] * len(take)
            sizes += [len(inside)] * len(take)
        rows = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
        picks = pd.DataFrame({"deployment": deps[rows], "file": files[rows], "start_s": s0[rows], "end_s": s1[rows],
                              "score": score[rows], "stratum": names, "stratum_size": sizes})
        name = sheet_name(name or f"sample-{lab}")
        about = [("how", f"stratified random sample of {lab} scores (seed {seed}): {per} per stratum; "
                         "precision = sum(stratum_size * yes / (yes + no)) / sum(stratum_size) over the strata at or "
                         f"above the threshold {thr:g}"),
                 ("segments", plural(len(score), "segment"))]
        csv, xlsx = write_list(store, out_dir, name, picks, lab, "score", about, extra=("stratum", "stratum_size"))
    return Listed(csv, xlsx, len(picks), len(score), 0.0)
