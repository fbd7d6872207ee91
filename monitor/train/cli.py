"""``monitor train CONFIG.yaml [--out DIR] [--resume] [--folds K] [--plan] [--set SECTION.KEY=VALUE ...]``.

One run (``single.run_one``): load data -> grouped split (saved) -> fit -> calibrate thresholds on
validation -> score the held-out test split -> export a bundle. ``--plan`` writes ``plan.csv`` (every
training window with its group, split and per-label target, and every recording left out with the
reason) and prints counts, without training. ``--folds K``: grouped K-fold cross-validation
(``crossval``): fold bundles, an ensemble bundle of them in ``<out>/bundle`` with thresholds from the
out-of-fold scores, the test split scored by the ensemble and by each fold; ``split.final_model``
then also trains one model on all the (non-test) data.

A finished run is marked by ``train_done.json``; ``--resume`` on it returns its results, and
``--resume`` before any checkpoint exists starts the run (a notebook cell re-run after a disconnect).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError
from monitor.logs import add_log_file, set_console_level, warn
from monitor.train.crossval import choose_epoch, cross_validate, fold_rows  # noqa: F401 (choose_epoch re-exported)
from monitor.train.metrics import SUMMARY_KEYS
from monitor.train.recipes import load_recipe
from monitor.train.single import DONE, fmt, run_one
from monitor.train.sources import load_source, load_test_folder
from monitor.train.splits import assign_splits, load_split, save_split, warn_leaks
from monitor.train.table import LeftOut, same_audio, summary, target_matrix

log = logging.getLogger(__name__)

LEFT_OUT = "left out: "  # plan.csv's split for a recording not used, followed by the reason


# --- data and splits -----------------------------------------------------------------------------------

def load_data(cfg, left_out: LeftOut | None = None):
    """(table, labels, fixed): every row of the recipe's data; ``fixed`` marks rows whose split is given
    by the data itself (``val`` from ``data.val_manifest``, ``test`` from ``split.test_folder``), else ''.
    Recordings left out (too short, unreadable) are added to ``left_out``."""
    import numpy as np
    import pandas as pd

    table, labels, fixed_val = load_source(cfg, left_out=left_out)
    fixed = [""] * len(table)
    if fixed_val is not None:
        table = pd.concat([table, fixed_val], ignore_index=True)
        fixed += ["val"] * len(fixed_val)
    if cfg.split.test_folder:
        test = load_test_folder(cfg, labels, left_out)
        test["group"] = ["test:" + g for g in test["group"]]  # never the same group name as a training file's
        canon = same_audio(sorted({Path(f) for f in table["file"]} | {Path(f) for f in test["file"]}))
        ours = {canon[Path(f)] for f in table["file"]}
        both = sorted({str(f) for f in test["file"] if canon[Path(f)] in ours})
        if both:
            raise MonitorError(f"{len(both)} recordings of split.test_folder are also in the training data (e.g. "
                               f"{both[0]}); a test split must be new audio")
        table = pd.concat([table, test], ignore_index=True)
        fixed += ["test"] * len(test)
    no_positive = [lab for lab, n in summary(table, labels)["per_label"].items() if n == 0]
    if no_positive:
        warn(f"label(s) {', '.join(no_positive)} have no positive segment in the data: the model cannot learn "
             "them (they are exported with the default threshold)")
    return table, labels, np.array(fixed, dtype=object)


def say_left_out(cfg, left_out: LeftOut) -> None:
    """One console line counting the recordings left out, by reason (each one is in the log and plan.csv)."""
    if left_out.rows:
        warn(left_out.text(cfg.data.min_clip_s) + "; each one is listed in train.log (and plan.csv with --plan)")


def split_rows(cfg, table, labels, fixed, out_dir: Path | None = None, resume: bool = False):
    """``train``/``val``/``test`` per row; saved to ``splits.csv`` and reloaded on resume (it never changes)."""

    path = Path(out_dir) / "splits.csv" if out_dir is not None else None
    if resume and path is not None and path.is_file():
        split = load_split(path)
        if len(split) != len(table):
            raise MonitorError(f"--resume: the data changed since {path} was written ({len(split)} vs {len(table)} "
                               "segments); start a new run")
    else:
        split = assign_splits(table, labels, cfg.split, fixed)
        if cfg.split.warn_clip_names:
            warn_leaks(table, split)
    if path is not None:
        save_split(table, split, path)
    return split


# --- the plan ------------------------------------------------------------------------------------------

def plan_table(table, labels, split, left_out: LeftOut | None = None):
    """One row per training window: ``file, start_s, end_s, group, split`` and per label 1, 0 or '' (unknown);
    then one row per recording left out, its split ``left out: <reason> (<detail>)``, no window or target."""
    import numpy as np
    import pandas as pd

    y = target_matrix(table, labels)
    df = pd.DataFrame({"file": table["file"], "start_s": table["start_s"], "end_s": table["end_s"],
                       "group": table["group"], "split": list(split)})
    for j, lab in enumerate(labels):
        df[lab] = ["" if np.isnan(v) else str(int(v)) for v in y[:, j]]
    if left_out is not None and left_out.rows:
        out = pd.DataFrame([{"file": f, "start_s": "", "end_s": "", "group": "",
                             "split": LEFT_OUT + reason + (f" ({detail})" if detail else ""),
                             **{lab: "" for lab in labels}} for f, reason, detail in left_out.rows])
        df = pd.concat([df.astype({"start_s": object, "end_s": object}), out], ignore_index=True)
    return df


def plan_counts(plan, labels) -> str:
    """Counts per label and split as ``positives / negatives / unknown`` (a printable table), then the
    recordings left out by reason."""
    gone = plan["split"].astype(str).str.startswith(LEFT_OUT)
    left = plan[gone]
    plan = plan[~gone]
    splits = [s for s in ("train", "val", "test") if (plan["split"] == s).any()]
    splits += sorted(s for s in set(plan["split"]) if s not in splits)
    head = ["label"] + [f"{s} (+ / - / ?)" for s in splits]
    rows = []
    for lab in labels:
        row = [lab]
        for s in splits:
            col = plan.loc[plan["split"] == s, lab]
            row.append(f"{(col == '1').sum()} / {(col == '0').sum()} / {(col == '').sum()}")
        rows.append(row)
    rows.append(["segments"] + [str(int((plan["split"] == s).sum())) for s in splits])
    rows.append(["groups"] + [str(plan.loc[plan["split"] == s, "group"].nunique()) for s in splits])
    width = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in [head] + rows)
    if len(left):
        why = left["split"].str[len(LEFT_OUT):].str.replace(r" \(.*\)$", "", regex=True).value_counts()
        text += (f"\nleft out: {len(left)} recording{'s' if len(left) != 1 else ''} ("
                 + ", ".join(f"{n} {reason}" for reason, n in why.items()) + "; listed in plan.csv)")
    return text


def plan(cfg, out_dir: Path, folds: int | None = None) -> tuple[Path, str]:
    """``monitor train --plan``: write ``<out_dir>/plan.csv`` without training; returns (path, counts)."""
    import numpy as np

    left_out = LeftOut()
    table, labels, fixed = load_data(cfg, left_out)
    if folds:
        fold = fold_rows(cfg, table, labels, fixed, folds)
        split = np.where(fold >= 0, np.char.add("fold_", (fold + 1).astype(str)), "test").astype(object)
    else:
        split = split_rows(cfg, table, labels, fixed)
    df = plan_table(table, labels, split, left_out)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / "plan.csv"
    df.to_csv(path, index=False)
    return path, plan_counts(df, labels)


# --- the command -----------------------------------------------------------------------------------------

def _has_checkpoint(out_dir: Path) -> bool:
    return any(out_dir.glob("checkpoints/last.pt")) or any(out_dir.glob("*/checkpoints/last.pt"))


def _cut_log(out_dir: Path) -> None:
    """On resume: cut ``train.log`` back to what it held at the newest checkpoint (what came after is re-done)."""
    sides = sorted(list(out_dir.glob("checkpoints/last.json")) + list(out_dir.glob("*/checkpoints/last.json")),
                   key=lambda p: p.stat().st_mtime)
    logf = out_dir / "train.log"
    if not sides or not logf.is_file():
        return
    side = json.loads(sides[-1].read_text())
    keep = int(side.get("log_bytes", 0))
    if 0 < keep < logf.stat().st_size:
        with open(logf, "r+b") as fh:
            fh.truncate(keep)
        log.info("train.log cut back to the checkpoint at step %d (what followed it is done again)",
                 side.get("global_step", 0))


def train(cfg, out_dir: Path, *, name: str, resume: bool = False, folds: int | None = None,
          progress: bool = True, stop_after_steps: int | None = None) -> dict[str, Any]:
    """The whole ``monitor train``: data -> (split | K folds) -> fit -> calibrate -> export.

    ``resume``: continue from the newest checkpoint; with none yet, start (and say so); on a finished
    run, return its results. Without ``resume``, a folder holding a run is refused (nothing is overwritten).
    """
    out_dir = Path(out_dir)
    if (out_dir / DONE).is_file():
        if resume:
            log.info("%s holds a finished training run; nothing to resume", out_dir)
            return {**json.loads((out_dir / DONE).read_text()), "result": None, "finished": True}
        raise MonitorError(f"{out_dir} holds a finished training run; choose another --out (it is never overwritten)")
    if cfg.data.source == "embeddings":  # a head on stored embeddings: seconds, no checkpoints
        from monitor.train.headfit import train_head

        if folds:
            raise MonitorError("--folds is not for data.source: embeddings (a head trains in seconds: use split.*)")
        return train_head(cfg, out_dir, name=name, progress=progress)
    if _has_checkpoint(out_dir):
        if not resume:
            raise MonitorError(f"{out_dir} already holds a training run; use --resume to continue it or another --out")
        _cut_log(out_dir)
    elif resume:
        log.warning("--resume: no checkpoint in %s yet; starting the run from the beginning", out_dir)
        resume = False
    out_dir.mkdir(parents=True, exist_ok=True)
    left_out = LeftOut()
    table, labels, fixed = load_data(cfg, left_out)
    log.info("data: %d segments, %d groups, labels %s", len(table), table["group"].nunique(), labels)
    say_left_out(cfg, left_out)
    data_summary = summary(table, labels, left_out)
    if folds:
        return cross_validate(cfg, out_dir, table, labels, fixed, folds, name=name, resume=resume, progress=progress,
                              data_summary=data_summary)
    split = split_rows(cfg, table, labels, fixed, out_dir, resume)
    return run_one(cfg, out_dir, table, labels, split, name=name, resume=resume, stop_after_steps=stop_after_steps,
                   progress=progress, data_summary=data_summary)


def train_command(args) -> int:
    """CLI entry: ``args.config``, ``args.out``, ``args.resume``, ``args.folds``, ``args.plan``, ``args.set``."""

    cfg = load_recipe(args.config, list(getattr(args, "set", None) or []))  # a file, or a packaged recipe's name
    name = cfg.export.name or Path(args.config).stem
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if getattr(args, "plan", False):
        path, counts = plan(cfg, out, args.folds)
        print(counts)
        print(f"plan: {path} (positives / negatives / unknown per label and split; nothing trained)")
        return 0
    if getattr(args, "verbose", 0) <= 0:
        set_console_level(logging.INFO)  # per-epoch metrics on the console, as in a notebook
    out.mkdir(parents=True, exist_ok=True)
    add_log_file(out / "train.log")
    res = train(cfg, out, name=name, resume=bool(args.resume), folds=args.folds)
    if args.folds:
        m, s = res["mean"], res["std"]
        print(f"{args.folds}-fold cross-validation (grouped), epoch {res['epoch']} chosen on the fold-averaged "
              f"{res['metric']}: " + ", ".join(f"{k} {fmt(m[k])} ± {fmt(s[k])}" for k in SUMMARY_KEYS
                                              if not math.isnan(_num(m[k]))))
        print(f"per fold: {out / 'cv_metrics.csv'}; fold bundles: {out}/fold_*/bundle")
        print(f"ensemble bundle (the fold models averaged, thresholds from their out-of-fold scores): {res['bundle']}"
              f" (monitor run --model {out})")
        if res.get("test_metrics"):
            print("test (held out), the ensemble: " + ", ".join(f"{k} {fmt(res['test_metrics'].get(k))}"
                                                                for k in SUMMARY_KEYS)
                  + f" (each fold: {out / 'test_metrics.csv'})")
        if res.get("final_bundle"):
            print(f"final model: {res['final_bundle']}")
        return 0
    print(f"bundle: {res['bundle']}")
    for label, key in (("validation", "metrics"), ("test (held out)", "test_metrics")):
        if res.get(key):
            print(f"{label}: " + ", ".join(f"{k} {fmt(res[key].get(k))}" for k in SUMMARY_KEYS))
    return 0


def _num(v) -> float:
    return float("nan") if v is None else float(v)
