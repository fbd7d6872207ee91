"""``monitor run``: a card scanned (``card``), its files scored through an engine, each committed to the
store as it completes, the reports regenerated (``outdir``).

The input folder is only ever read. Each file's results are committed to the store in one
transaction; reports and ``run.json`` are always regenerated from the store, so an interrupted run
loses at most the files in flight and a re-run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from monitor import __version__
from monitor.card import WorkPlan, scan_card
from monitor.cascade import CascadeEngine, load_screen, run_identity, screen_info, screen_precision
from monitor.config import PROGRESS_EVERY_S, RunConfig
from monitor.deployments import read_deployments
from monitor.detect import label_filter, resolve_thresholds
from monitor.engine import Engine, EngineInfo, LocalEngine
from monitor.errors import MonitorError
from monitor.logs import listing
from monitor.model.bundle import Bundle
from monitor.model.ensemble import Models, load_ensemble
from monitor.outdir import (check_folders, current_thresholds, open_out, remember_choices, stored_deployments,
                            write_outputs)
from monitor.plan import FileJob, FileScores
from monitor.progress import Progress
from monitor.ray_engine import RayEngine
from monitor.results import ModelRef, RunInfo
from monitor.store import ResultsStore

log = logging.getLogger(__name__)


class Interrupted(MonitorError):
    """Ctrl-C: finished work is saved; the message says how to resume."""


@dataclass
class RunStats:
    """What one run did: files found, resumed, to do and done; segments and audio scored; the engine used."""

    engine: EngineInfo
    found: int = 0
    resumed: int = 0
    todo: int = 0
    done: int = 0
    segments: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    deployments: list[str] = field(default_factory=list)


def run(cfg: RunConfig) -> RunInfo:
    """Run detection as ``cfg`` says; returns the ``RunInfo`` written to ``run.json``."""
    src, dst = check_folders(cfg.input_dir, cfg.out_dir)
    models = load_ensemble(cfg.models)
    screen = load_screen(cfg.screen, models) if cfg.screen else None  # a mismatched student fails here, in one line
    bundles = models.members  # what the engine scores (their probabilities averaged)
    names = models.labels
    resolve_thresholds(names, models.thresholds, cfg.thresholds)  # a bad --threshold fails before any work
    keep = label_filter(names, cfg.labels)
    table = read_deployments(cfg.deployments) if cfg.deployments else None
    started = datetime.now(timezone.utc).astimezone()
    with open_out(dst, create=True) as store:
        embed = keep_embeddings(store, cfg, bundles)  # before anything is written: it may refuse the run
        model_hash = models.sha256  # the same whatever the order of --model
        store.bind_model(model_hash, names, models.describe())
        store.set_meta("bundle_thresholds", dict(models.thresholds))
        remember_choices(store, table, keep)
        thr = current_thresholds(store, RunInfo(labels=names), cfg.thresholds)
        info = _run_info(src, dst, models, thr, cfg.command, started, screen)
        run_id = store.begin_run(str(src), info.to_json())
        warnings: list[str] = []
        if not models.calibrated:
            warnings.append(f"thresholds of the {len(models.given)} models given with --model: "
                            f"{models.thresholds_from}")
        with _StopOnSigint() as stop:  # Ctrl-C during the reports still lets them finish
            # the engine starts first: its worker processes' imports overlap discovery and model loading
            with make_engine(bundles, cfg, embed, screen) as engine:
                plan = scan_card(src, store, bundles[0].preprocessing, run_identity(model_hash, screen), stop.state,
                                 cfg.deployment, cfg.prune, cfg.resume, stored_deployments(store), cfg.move)
                if table is not None and plan.unmatched_rows:
                    warnings.append(f"deployments table {Path(cfg.deployments).name}: "
                                    f"{listing(plan.unmatched_rows)} matched no file of this card")
                stats, interrupted = score_planned(engine, plan, store, bundles, cfg.progress, stop.state,
                                                   cfg.progress_every_s,
                                                   (store.embeddings_backbone or "", model_hash) if embed else None)
                if screen is not None:
                    info = dataclasses.replace(info, screen={**info.screen, **engine.summary()})
            interrupted = interrupted or stop.state["flag"]
            e = stats.engine
            info = dataclasses.replace(
                info, ended=_now(), completed=not interrupted, files_done=stats.done + stats.resumed,
                files_left=stats.todo - stats.done, resumed_files=stats.resumed, deployments=stats.deployments,
                wall_s=round(stats.wall_s, 3), audio_s=round(stats.audio_s, 3), engine=e.engine, device=e.device,
                precision=e.precision, workers=e.workers, batch_size=e.batch_size, card=plan.card,
                card_name=plan.card_name)
            info = write_outputs(dst, store, thr, info, warnings=warnings)
            store.end_run(run_id, not interrupted, info.to_json(), plan.card)
    if interrupted:
        raise Interrupted(
            f"interrupted: {info.files_done} of {info.files_done + info.files_left} files finished and saved; "
            "run the same command again to resume"
        )
    return info


def keep_embeddings(store: ResultsStore, cfg: RunConfig, bundles: list[Bundle]) -> bool:
    """Whether this run keeps segment embeddings: ``--embeddings``, or an output folder that already keeps them
    (remembered for later runs). Files analysed without them are then analysed again (``store.embeddings``)."""
    keep = bool(store.get_meta("embeddings")) if cfg.embeddings is None else bool(cfg.embeddings)
    why = "" if not keep else ("--engine ray" if cfg.engine == "ray" else "--precision int8" if cfg.precision == "int8"
                               else "--compile" if cfg.compile else
                               "--screen (the model scores only the segments the screen passes)" if cfg.screen else
                               f"an ensemble of {len(bundles)} models (embeddings belong to one backbone)"
                               if len(bundles) > 1 else "")
    if why:
        whose = "--embeddings" if cfg.embeddings else f"{store.path.parent} keeps segment embeddings (--embeddings), which"
        raise MonitorError(f"{whose} does not work with {why}; run one model with --engine local")
    if keep != bool(store.get_meta("embeddings")):
        store.set_meta("embeddings", keep)
    if keep:
        store.embeddings_backbone = bundles[0].backbone()
        log.info("keeping segment embeddings (backbone %s)", store.embeddings_backbone[:12])
    return keep


def make_engine(bundles: list[Bundle], cfg: RunConfig, embeddings: bool = False,
                screen: Bundle | None = None) -> Engine:
    """The engine ``monitor run`` scores through: ``engine.LocalEngine`` or ``ray_engine.RayEngine``; with a
    ``screen``, a ``cascade.CascadeEngine`` over one of them for the student and one for the teacher."""
    if screen is not None:
        plain = dataclasses.replace(cfg, screen=None)
        student = make_engine([screen], dataclasses.replace(plain, precision=screen_precision(cfg.precision,
                                                                                              cfg.device)))
        try:
            return CascadeEngine(student, make_engine(bundles, plain), screen)
        except BaseException:
            student.close()
            raise
    if cfg.engine == "ray":
        return RayEngine(bundles, address=cfg.address, actors=cfg.actors, gpus_per_actor=cfg.gpus_per_actor,
                         device=cfg.device, precision=cfg.precision, batch_size=cfg.batch_size,
                         stall_warn_s=cfg.stall_warn_s, stall_stop_s=cfg.stall_stop_s)
    return LocalEngine(bundles, device=cfg.device, precision=cfg.precision, batch_size=cfg.batch_size,
                       workers=cfg.workers, compile=cfg.compile, embeddings=embeddings)


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def file_outcome(res: FileScores, n_labels: int) -> tuple[str, str]:
    """(status, reason) of a scored file: decode errors and non-finite scores fail the file, in words."""
    if res.error:
        return "failed", res.error
    scores = np.asarray(res.scores, dtype=np.float32)
    if scores.shape != (len(res.index), n_labels):
        return "failed", f"the model gave {scores.shape} scores for {len(res.index)} segments of {n_labels} labels"
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        return "failed", (f"the model gave non-finite scores (NaN or infinity) for {int(bad.sum())} of {len(bad)} "
                          "segments; the model may be damaged (check it with `monitor models info`)")
    return "ok", f"{res.nonfinite} non-finite samples replaced with 0" if res.nonfinite else ""


def score_planned(engine: Engine, plan: WorkPlan, store: ResultsStore, bundles: list[Bundle],
                  progress: bool | None, stop: dict[str, bool],
                  progress_every_s: float = PROGRESS_EVERY_S,
                  embeddings: tuple[str, str] | None = None) -> tuple[RunStats, bool]:
    """Score the planned jobs through ``engine``; each file is committed as soon as all its segments are in.
    ``progress``: None a bar on a terminal and progress lines elsewhere (``progress.Progress``); ``embeddings``:
    (backbone, bundle hash) the kept embeddings are tied to, committed with their file."""
    pre = bundles[0].preprocessing
    n_labels = len(bundles[0].labels)
    stats = RunStats(engine.describe(), plan.found, plan.resumed, plan.todo, audio_s=plan.audio_s,
                     deployments=plan.deployments)
    bar = Progress(plan.segments, plan.todo, pre.segment.hop_s, bar=progress, every_s=progress_every_s)
    t0 = time.perf_counter()
    metas = plan.metas

    def on_segments(n: int) -> None:
        bar.segments(n)
        stats.segments += n
        if stop["flag"]:
            raise KeyboardInterrupt

    def on_file_done(job: FileJob, res: FileScores) -> None:
        meta = metas.pop(job.rel)
        status, reason = file_outcome(res, n_labels)
        if status == "failed":
            store.put_file(job.key, "failed", reason, meta, input_dir=plan.input_dir, card=plan.card)
            log.info("failed %s: %s", job.rel, reason)
        else:
            segs = list(zip(res.index, res.start_s, res.end_s, res.scores))
            backbone, bundle = embeddings or ("", "")
            store.put_file(job.key, "ok", reason, meta, segs, nonfinite=res.nonfinite, input_dir=plan.input_dir,
                           card=plan.card, embeddings=res.embeddings if embeddings else None, backbone=backbone,
                           bundle=bundle, scored_by=res.scored_by)
        stats.done += 1
        bar.file_done()

    interrupted = bool(stop["flag"])
    try:
        if not interrupted:
            engine.run(plan.jobs, on_file_done, on_segments)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    stats.wall_s = time.perf_counter() - t0
    return stats, interrupted


class _StopOnSigint:
    """First Ctrl-C: finish the batch in hand, save, write reports, exit non-zero. Second: stop at once."""

    def __init__(self) -> None:
        self.state = {"flag": False}
        self._old = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.state["flag"]:
            raise KeyboardInterrupt
        self.state["flag"] = True
        print("\nmonitor: stopping after the current batch; finished files are saved", file=sys.stderr)

    def __enter__(self) -> "_StopOnSigint":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _run_info(src: Path | str, dst: Path, models: Models, thr: dict[str, float], command: str,
              started: datetime, screen: Bundle | None = None) -> RunInfo:
    def ref(x: Bundle) -> ModelRef:
        return ModelRef(x.name, x.version, x.sha256, str(x.path or ""))

    refs = [ref(x) for x in models.given]
    model = refs[0] if len(refs) == 1 else ModelRef(" + ".join(r.name for r in refs),
                                                     " + ".join(r.version for r in refs), models.sha256, "")
    members = [ref(x) for x in models.members] if len(models.members) > 1 else []
    return RunInfo(model=model, models=refs, members=members, labels=models.labels, task=models.task,
                   thresholds=dict(thr), thresholds_from=models.thresholds_from,
                   preprocessing=models.preprocessing.to_dict(), package_version=__version__, command=command or "",
                   input_dir=str(src), out_dir=str(dst), started=started.isoformat(timespec="seconds"),
                   completed=False, screen=screen_info(screen) if screen is not None else {})
