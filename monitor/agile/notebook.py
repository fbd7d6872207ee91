"""The agile loop as notebook 03 and 02 call it: search from a clip, mark what it found, train a head on the
stored embeddings in seconds, rescore the whole folder with it. Each function is one cell's work, prints what
it did, and never decides a verdict for the user: with nothing marked, training and rescoring say so and
skip (the cells still run with their default values)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from monitor.errors import MonitorError
from monitor.outdir import current_thresholds, harvest_reviews, open_out, write_outputs
from monitor.results import VERIFIED_CHOICES, RunInfo
from monitor.store import Review

log = logging.getLogger(__name__)

HEAD_RECIPE = "head_from_embeddings"


def has_embeddings(out_dir: str | Path) -> bool:
    with open_out(Path(out_dir)) as store:
        return bool(store.embedding_backbones())


def default_example(out_dir: str | Path) -> str:
    """``AUDIO@START_S`` of the first detection (else the first analysed recording's start): the default clip."""
    import pandas as pd

    out_dir = Path(out_dir)
    rec = pd.read_csv(out_dir / "recordings.csv", keep_default_na=False, dtype=str)
    where = {(d, f): i for d, f, i in zip(rec["deployment"], rec["file"], rec["input_dir"])}
    det = pd.read_csv(out_dir / "detections.csv", keep_default_na=False, dtype={"deployment": str, "file": str})
    if len(det):
        d, f, a = str(det["deployment"].iloc[0]), str(det["file"].iloc[0]), float(det["start_s"].iloc[0])
    else:
        ok = rec[rec["status"] == "ok"]
        if not len(ok):
            raise MonitorError(f"{out_dir} has no analysed recording to take an example from; set EXAMPLE")
        d, f, a = ok["deployment"].iloc[0], ok["file"].iloc[0], 0.0
    return f"{Path(where[(d, f)]) / f}@{a:g}"


def search(out_dir: str | Path, example: str = "", label: str = "", top: int = 10, name: str = ""):
    """``monitor search OUT --example EXAMPLE``; returns the list (the CSV) as a DataFrame and prints its files."""
    import pandas as pd

    from monitor.agile.search import search as _search

    out_dir = Path(out_dir)
    if not has_embeddings(out_dir):
        raise MonitorError(f"{out_dir} keeps no segment embeddings: run notebook 01 with EMBEDDINGS ticked (or "
                           "`monitor run ... --embeddings`), then search")
    example = str(example).strip() or default_example(out_dir)
    print(f"example: {example}")
    got = _search(out_dir, [example], int(top), str(label).strip() or None, str(name).strip() or None)
    print(f"{got.rows} most similar of {got.searched} segments ({got.seconds:.2f} s); the list: {got.xlsx.name} in "
          f"{got.xlsx.parent} (its Verified column counts too)")
    df = pd.read_csv(got.csv, keep_default_na=False)
    df.attrs["name"] = got.csv.stem
    return df


def mark(out_dir: str | Path, found, marks: Mapping[int, str], label: str = "",
         notes: Mapping[int, str] | None = None) -> int:
    """Verdicts for rows of a search list (``marks``: rank -> yes / no / unsure) on ``label`` (default: the list's)
    into the results store, as typed into its workbook; the reports are rebuilt. Returns verdicts written."""
    out_dir = Path(out_dir)
    notes = dict(notes or {})
    bad = [v for v in marks.values() if v not in VERIFIED_CHOICES]
    if bad:
        raise MonitorError(f"MARKS take {', '.join(VERIFIED_CHOICES)}, got {bad[0]!r}")
    rows = []
    for rank in sorted(set(marks) | set(notes)):
        hit = found[found["rank"] == int(rank)]
        if not len(hit):
            raise MonitorError(f"rank {rank} is not in the search list (ranks 1-{len(found)})")
        r = hit.iloc[0]
        lab = str(label).strip() or str(r.get("label", "") or "")
        if not lab:
            raise MonitorError("name the label these verdicts are about (SEARCH_LABEL)")
        rows.append(Review(str(r["deployment"]), str(r["file"]), lab, float(r["start_s"]), float(r["end_s"]),
                           marks.get(rank, ""), notes.get(rank, "")))
    if not rows:
        print("nothing marked: listen to the list, then give MARKS (rank -> yes / no / unsure) and run the cell again")
        return 0
    with open_out(out_dir) as store:
        found_books = harvest_reviews(store, out_dir)
        n = store.put_reviews(rows, source="notebook")
        info = RunInfo.from_json(store.get_meta("run_info"))
        write_outputs(out_dir, store, current_thresholds(store, info), info, found_books)
    print(f"{n} verdicts recorded")
    return n


def train_head(out_dir: str | Path, work: str | Path, name: str, extra: str = "") -> Path | None:
    """A head on the folder's stored embeddings and verdicts (recipe ``head_from_embeddings``) into
    ``WORK/runs/<name>``; returns its bundle, or None (saying why) while nothing is marked yes or no."""
    from monitor.train.recipes import load_recipe
    from monitor.train.reviews import verdict

    out_dir = Path(out_dir)
    run = Path(work) / "runs" / name
    if (run / "bundle" / "bundle.json").is_file():
        print(f"{run} already holds a head: {run / 'bundle'} (choose a new HEAD_NAME to train again)")
        return run / "bundle"
    with open_out(out_dir) as store:
        harvest_reviews(store, out_dir)
        judged = [r for r in store.reviews() if verdict(r.verified)]
    if not judged:
        print("no verdicts yet (yes / no): mark some search results (MARKS) or detections (VERDICTS), then run this "
              "cell again")
        return None
    from monitor.train.cli import train

    overrides = [f"data.out={out_dir}"] + [x.strip() for x in str(extra).split(";") if x.strip()]
    cfg = load_recipe(HEAD_RECIPE, overrides)
    res = train(cfg, run, name=name)
    m = res.get("metrics") or {}
    print(f"head trained in {res['fit_seconds']:.1f} s from {len(judged)} verdicts; bundle {res['bundle']}"
          + (f"; validation mAUC {m['mAUC']:.3f}" if m.get("mAUC") is not None else ""))
    return Path(res["bundle"])


def rescore(out_dir: str | Path, bundle: str | Path | None) -> Any:
    """``monitor report OUT --rescore BUNDLE``: every card of the folder scored by the new head; None to skip."""
    from monitor.agile.rescore import rescore as _rescore

    if bundle is None:
        print("nothing rescored: train a head (the cell above), then tick RESCORE and run this cell again")
        return None
    info = _rescore(Path(out_dir), bundle)
    print("\n".join(info.summary_lines()))
    return info


def review_next(out_dir: str | Path, label: str = "", top: int = 10):
    """The segments the folder's model is least sure of for ``label`` (default: its first), as a DataFrame."""
    import pandas as pd

    from monitor.agile.search import uncertain

    out_dir = Path(out_dir)
    if not str(label).strip():
        info = RunInfo.from_json(_meta(out_dir, "run_info"))
        label = info.labels[0] if info.labels else ""
    got = uncertain(out_dir, label, int(top))
    print(f"{got.rows} unreviewed segments nearest the threshold for {label}: {got.xlsx}")
    return pd.read_csv(got.csv, keep_default_na=False)


def _meta(out_dir: Path, key: str) -> Any:
    with open_out(out_dir) as store:
        return store.get_meta(key)
