"""``monitor distill TEACHER --audio DIR [DIR ...] --out RUN``: a small student that screens for its teacher.

1. The teacher scores every segment of the user's own (unlabelled) recordings, through the engine of
   ``monitor run``, into ``RUN/teacher/`` (a results store: cached, and resumed file by file after an
   interruption; ``monitor report RUN/teacher`` makes its reports).
2. The segments' features come from the same front end (the teacher's preprocessing, which the student
   keeps: one bundle, one front end), cached in ``RUN/features.f16``.
3. Recordings are split by recording (``train/splits.assign_groups``, stratified by teacher positives):
   ``--held-out`` of them are never trained on.
4. The student (``train/student.py``) learns the teacher's probabilities; a reviewer's yes / no
   (``--reviews OUT_DIR``, a run folder's verdicts) replaces the teacher's score for its label and segment.
5. On the held-out recordings, per-label screen thresholds keep at least ``--recall`` of the teacher's
   positive segments (``monitor.screen``), for the student's fp32 and int8 scores alike; recall and
   escalation are measured with thresholds chosen on the other half of the held-out recordings.
6. ``RUN/bundle``: a normal bundle (thresholds for running it alone: best F1 against the teacher's
   positives) with a ``screen`` section; ``RUN/distill.json`` and ``RUN/heldout_scores.csv``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monitor import __version__
from monitor.card import scan_card
from monitor.decode import decode_task
from monitor.device import pick_device
from monitor.engine import LocalEngine
from monitor.errors import MonitorError
from monitor.fileio import atomic_write_text
from monitor.logs import plural, say, warn
from monitor.model.bundle import Bundle, save_bundle
from monitor.model.ensemble import Models, load_ensemble
from monitor.outdir import load_reviews, open_out, stored_deployments
from monitor.pipeline import file_outcome
from monitor.plan import FileJob, file_bounds, plan_batches
from monitor.screen import screen_section, teacher_positives
from monitor.train.calibrate import calibrate
from monitor.train.splits import assign_groups
from monitor.train.student import StudentPlan, build_student, predict, train_student

log = logging.getLogger(__name__)

FEATURES = "features.f16"


class _Stop:
    """Ctrl-C: stop after the current batch (teacher scores and the student's checkpoint are kept)."""

    def __init__(self) -> None:
        self.state = {"flag": False}

    def __enter__(self) -> "_Stop":
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        if self.state["flag"]:
            raise KeyboardInterrupt
        self.state["flag"] = True

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self._old)


def teacher_scores(models: Models, audio: Sequence[Path], folder: Path, stop: dict[str, bool], device: str = "cpu",
                   precision: str = "auto", batch_size: int | str = "auto") -> int:
    """The teacher's scores for every segment of ``audio`` into the results store in ``folder`` (files already
    there are skipped: the cache). Returns the files scored now."""
    from tqdm.auto import tqdm

    done = 0
    pre = models.preprocessing
    with open_out(folder, create=True) as store:
        store.bind_model(models.sha256, models.labels, models.describe())
        with LocalEngine(models.members, device=device, precision=precision, batch_size=batch_size) as engine:
            for src in audio:
                plan = scan_card(Path(src).resolve(), store, pre, models.sha256, stop, table=stored_deployments(store))
                if plan.resumed:
                    say(f"{src}: teacher scores of {plural(plan.resumed, 'file')} already cached")
                if not plan.jobs:
                    continue
                say(f"{src}: the teacher scores {plural(plan.segments, 'segment')} of {plural(plan.todo, 'file')}")

                def on_file_done(job: FileJob, res, plan=plan) -> None:
                    nonlocal done
                    meta = plan.metas.pop(job.rel)
                    status, reason = file_outcome(res, len(models.labels))
                    segs = [] if status == "failed" else list(zip(res.index, res.start_s, res.end_s, res.scores))
                    store.put_file(job.key, status, reason, meta, segs, nonfinite=res.nonfinite,
                                   input_dir=plan.input_dir, card=plan.card)
                    done += 1

                bar = tqdm(total=plan.segments, unit="seg", desc="teacher", dynamic_ncols=True, disable=None)

                def on_segments(k: int, bar=bar) -> None:
                    bar.update(k)
                    if stop["flag"]:
                        raise KeyboardInterrupt

                try:
                    engine.run(plan.jobs, on_file_done, on_segments)
                finally:
                    bar.close()
        return done


def segment_table(folder: Path, labels: Sequence[str]) -> dict[str, Any]:
    """The cached teacher scores: per segment ``path``, ``group`` (deployment/file), ``index``, ``start_s``,
    ``end_s``, ``scores`` (n, labels); files that failed or were skipped are left out."""
    with open_out(folder) as store:
        files = {(f["deployment"], f["file"]): f for f in store.files()}
        deps, names, idx, s0, s1, scores = store.segments()
    keep = [i for i, k in enumerate(zip(deps, names)) if files.get(k, {}).get("status") == "ok"]
    path = [str(Path(files[(deps[i], names[i])]["input_dir"]) / names[i]) for i in keep]
    return {"path": path, "group": [f"{deps[i]}/{names[i]}" for i in keep], "index": idx[keep], "start_s": s0[keep],
            "end_s": s1[keep], "scores": scores[keep].astype(np.float32)}


def features(table: dict[str, Any], pre, out_dir: Path, batch_size: int = 16):
    """Every segment's features (the teacher's front end), cached as float16 in ``out_dir/features.f16``;
    returns (memmap (n, frames, mel), ok (n,) bool: decoded without error)."""
    from monitor.plan import job_from_path

    n = len(table["path"])
    fb = pre.fbank
    shape = (n, fb.target_frames, fb.num_mel_bins)
    meta_path = out_dir / "features.json"
    key = {"n": n, "shape": list(shape), "pre": pre.to_dict(), "paths": sorted(set(table["path"]))}
    if meta_path.is_file() and (out_dir / FEATURES).is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return np.memmap(out_dir / FEATURES, np.float16, "r", shape=shape), np.asarray(meta["ok"], bool)
    say(f"features of {plural(n, 'segment')} (cached in {out_dir / FEATURES})")
    feats = np.memmap(out_dir / FEATURES, np.float16, "w+", shape=shape)
    ok = np.ones(n, bool)
    rows_of: dict[str, dict[int, int]] = {}  # path -> segment index -> table row
    for r, (p, i) in enumerate(zip(table["path"], table["index"])):
        rows_of.setdefault(p, {})[int(i)] = r
    jobs = [dataclasses.replace(job_from_path(p, p), segments=tuple(sorted(rows))) for p, rows in rows_of.items()]
    plan = plan_batches(jobs, pre, batch_size)
    seg_of = [rows_of[job.path][b[0]] for f, job in enumerate(plan.files) for b in file_bounds(plan, f)]
    for t in plan.tasks:
        rows = decode_task(t, pre)
        for k in range(rows.n):
            r = seg_of[rows.first + k]
            feats[r] = rows.data[k]
            ok[r] = not rows.errors[k]
    feats.flush()
    atomic_write_text(meta_path, json.dumps({"key": key, "ok": ok.tolist()}))
    return np.memmap(out_dir / FEATURES, np.float16, "r", shape=shape), ok


def review_targets(targets: np.ndarray, table: dict[str, Any], labels: Sequence[str],
                   review_dirs: Sequence[Path]) -> int:
    """A reviewer's yes / no (from run folders' results stores) replaces the teacher's score, for its label, on
    every segment it overlaps; returns the targets replaced."""
    by_path: dict[str, list[int]] = {}
    for r, p in enumerate(table["path"]):
        by_path.setdefault(str(Path(p).resolve()), []).append(r)
    changed = 0
    for d in review_dirs:
        df = load_reviews(d)
        for p, lab, a, b, v in zip(df["path"], df["label"], df["start_s"], df["end_s"], df["verified"]):
            if v not in ("yes", "no") or lab not in labels or not p:
                continue
            for r in by_path.get(str(Path(p).resolve()), []):
                if table["start_s"][r] < b - 1e-6 and table["end_s"][r] > a + 1e-6:
                    targets[r, list(labels).index(lab)] = 1.0 if v == "yes" else 0.0
                    changed += 1
    return changed


def distill(teacher: str | Sequence[str], audio: Sequence[Path], out_dir: Path, *, plan: StudentPlan | None = None,
            reviews: Sequence[Path] = (), held_out: float = 0.25, recall: float = 0.99, name: str | None = None,
            device: str = "cpu", precision: str = "auto", resume: bool = True) -> Bundle:
    """The whole of ``monitor distill`` (see the module docstring); returns the student bundle (``RUN/bundle``)."""
    plan = plan or StudentPlan()
    if not 0.0 < held_out < 1.0:
        raise MonitorError(f"--held-out must be between 0 and 1, got {held_out}")
    if not 0.5 <= recall < 1.0:
        raise MonitorError(f"--recall must be in [0.5, 1), got {recall}")
    for d in audio:
        if not Path(d).is_dir():
            raise MonitorError(f"--audio {d}: no such folder")
    models = load_ensemble([teacher] if isinstance(teacher, (str, Path)) else list(teacher))
    labels, pre = models.labels, models.preprocessing
    tthr = [float(models.thresholds[lab]) for lab in labels]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _Stop() as stop:
        try:
            teacher_scores(models, audio, out_dir / "teacher", stop.state, device, precision)
        except KeyboardInterrupt:
            raise MonitorError("interrupted: the teacher scores so far are saved; run the same command again to "
                               "resume") from None
        table = segment_table(out_dir / "teacher", labels)
        feats, ok = features(table, pre, out_dir)
        n = len(ok)
        groups = np.asarray(table["group"])
        if n == 0 or len(set(groups)) < 4:
            raise MonitorError(f"distilling needs at least 4 recordings with segments in --audio, got "
                               f"{len(set(groups))}; give more audio")
        pos = teacher_positives(table["scores"], tthr)
        parts = assign_groups(list(groups), [tuple(lab for lab, p in zip(labels, row) if p) for row in pos], labels,
                              [1.0 - held_out, held_out], seed=plan.seed)
        train_rows, val_rows = np.flatnonzero((parts == 0) & ok), np.flatnonzero((parts == 1) & ok)
        if not len(val_rows) or not len(train_rows):
            raise MonitorError("the split left no training or no held-out recordings; give more audio")
        targets = table["scores"].copy()
        replaced = review_targets(targets, table, labels, reviews) if reviews else 0
        say(f"student: {plan.model_size}, {plural(plan.depth, 'block')}, stride {plan.stride}; "
            f"{plural(len(train_rows), 'segment')} to train on, {plural(len(val_rows), 'segment')} held out "
            f"({len(set(groups[val_rows]))} of {len(set(groups))} recordings); teacher positives "
            + ", ".join(f"{lab} {int(pos[:, j].sum())}" for j, lab in enumerate(labels))
            + (f"; {replaced} targets from reviewers' verdicts" if replaced else ""))
        model, init = build_student(models.members, plan)
        try:
            trained = train_student(model, init, feats, targets, pos.any(1), train_rows, val_rows, models.task, plan,
                                    out_dir, resume=resume, stop=lambda: stop.state["flag"],
                                    device=pick_device(device))
        except KeyboardInterrupt:
            raise MonitorError("interrupted: the student's last epoch is saved; run the same command again to "
                               "resume") from None
    student = trained.model
    s_fp32 = predict(student, feats, val_rows, models.task)
    s_int8 = _int8_scores(student, feats, val_rows, models.task)
    low = s_fp32 if s_int8 is None else np.minimum(s_fp32, s_int8)  # thresholds that keep recall on both paths
    high = s_fp32 if s_int8 is None else np.maximum(s_fp32, s_int8)
    tr_rows = train_rows[:: max(1, len(train_rows) // 2000)]
    section, warnings = screen_section(low, table["scores"][val_rows], labels, tthr, list(groups[val_rows]), recall,
                                       {"name": " + ".join(b.name for b in models.given),
                                        "version": " + ".join(b.version for b in models.given),
                                        "sha256": models.sha256},
                                       predict(student, feats, tr_rows, models.task), table["scores"][tr_rows])
    cuts = np.array([section["thresholds"][lab] for lab in labels])
    section["escalation"] = max(section["escalation"], float((high >= cuts[None, :]).any(1).mean()))
    for w in warnings:
        warn(w)
    alone, _ = calibrate(pos[val_rows].astype(float), s_fp32, labels, "f1", default=0.5)
    name = name or f"{models.given[0].name}-screen"
    prov = {"trained_with": f"monitor {__version__} distill", "distilled_from": section["teacher"],
            "init": trained.init, "best_epoch": trained.best_epoch, "epochs": len(trained.history),
            "student": {k: getattr(plan, k) for k in ("model_size", "depth", "stride", "lr", "batch_size", "seed")},
            "data": {"recordings": int(len(set(groups))), "segments": int(n), "train_segments": int(len(train_rows)),
                     "held_out_segments": int(len(val_rows)), "review_targets": replaced},
            "thresholds": "alone: best F1 against the teacher's positives on the held-out recordings"}
    bundle = save_bundle(out_dir / "bundle", student, name=name, version="1.0.0", labels=labels, task=models.task,
                         preprocessing=pre, thresholds=alone, provenance=prov, screen=section)
    _write_report(out_dir, bundle, section, trained, table, val_rows, s_fp32, s_int8, labels)
    return bundle


def _int8_scores(student, feats, rows: np.ndarray, task: str) -> np.ndarray | None:
    """The student's held-out scores through ``--precision int8`` (ONNX Runtime), or None without it."""
    import tempfile

    import torch

    from monitor.infer import to_scores
    from monitor.int8 import OrtModel, available, export_int8

    if not available():
        return None
    with tempfile.TemporaryDirectory(prefix="monitor-distill-int8-") as tmp:
        _, path = export_int8(student, Path(tmp))
        q = OrtModel(path, torch.get_num_threads())
        out = [to_scores(q(torch.from_numpy(np.asarray(feats[r:r + 1], np.float32))), task).numpy() for r in rows]
    return np.concatenate(out) if out else None


def _write_report(out_dir: Path, bundle: Bundle, section: dict[str, Any], trained, table, val_rows, s_fp32, s_int8,
                  labels) -> None:
    import pandas as pd

    df = pd.DataFrame({"recording": np.asarray(table["group"])[val_rows], "segment": table["index"][val_rows],
                       "start_s": table["start_s"][val_rows]})
    for j, lab in enumerate(labels):
        df[f"teacher_{lab}"] = table["scores"][val_rows, j]
        df[f"student_{lab}"] = s_fp32[:, j]
        if s_int8 is not None:
            df[f"student_int8_{lab}"] = s_int8[:, j]
    df.to_csv(out_dir / "heldout_scores.csv", index=False, float_format="%.6f")
    summary = {"bundle": str(bundle.path), "sha256": bundle.sha256, "screen": section, "history": trained.history,
               "init": trained.init, "best_epoch": trained.best_epoch}
    atomic_write_text(out_dir / "distill.json", json.dumps(summary, indent=2, default=str) + "\n")


def distill_command(args) -> int:
    """``monitor distill`` (``cli.py`` parses the options)."""
    plan = StudentPlan(model_size=args.student_size, depth=args.depth, stride=args.stride, init=args.init,
                       epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed)
    b = distill(args.teacher, args.audio, args.out, plan=plan, reviews=args.reviews or (), held_out=args.held_out,
                recall=args.recall, name=args.name, device=args.device, precision=args.precision,
                resume=not args.restart)
    sc = b.screen or {}
    rec = ", ".join(f"{k} {v:.1%}" if v is not None else f"{k} n/a" for k, v in sc.get("recall", {}).items())
    say(f"student bundle {b.path} ({b.name}): screen thresholds "
        + ", ".join(f"{k}={v:.3g}" for k, v in sc.get("thresholds", {}).items())
        + f"; on held-out recordings it keeps {rec} of the teacher's positive segments and sends "
        f"{sc.get('escalation', 0):.1%} of segments to the teacher")
    say(f"use it: monitor run CARD --out OUT {' '.join('--model ' + t for t in args.teacher)} --screen {b.path}")
    return 0
