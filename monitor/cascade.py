"""``monitor run --model TEACHER --screen STUDENT``: a distilled student screens every segment, the teacher
scores only the segments the screen passes.

Two planned passes through the ordinary engine seam (``engine.LocalEngine`` or ``ray_engine.RayEngine``,
unchanged), chunk by chunk of files: pass 1, the student engine scores every segment of the chunk; a
segment *escalates* when any label's student score reaches that label's screen threshold (the bundle's
``screen`` section, chosen by ``monitor distill`` on held-out recordings); pass 2, the teacher engine scores
only the escalated segments (``FileJob.segments``: the plan numbers and batches just those). Then every file
of the chunk is handed on whole (one store transaction per file), so an interrupted run loses at most one
chunk and resumes like any run, and memory stays bounded.

Detections come only from teacher scores: a segment's teacher score does not depend on which other
segments were escalated with it (``infer.Scorer``: batches zero-padded to one shape, int8 one segment per
call), so every cascade detection is one the teacher alone makes. Segments the teacher never saw keep the
student's scores, marked ``scored_by`` with the screen's name (``FileScores.scored_by``, the store's
``segments.scored_by``); ``results.apply_thresholds`` never makes them positive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Any, Sequence

import numpy as np

from monitor.audio import plan_segments
from monitor.device import pick_device
from monitor.engine import Engine, EngineInfo, OnFileDone, OnSegments
from monitor.errors import MonitorError
from monitor.int8 import available as int8_available
from monitor.model.bundle import Bundle, load_bundle
from monitor.model.ensemble import Models
from monitor.plan import FileJob, FileScores

log = logging.getLogger(__name__)

CHUNK_SEGMENTS = {"local": 1024, "ray": 8192}  # segments per chunk (at least one file): both passes, then commit
CHUNK_ENV = "MONITOR_SCREEN_CHUNK_SEGMENTS"  # overrides it (smaller: less lost on a crash; tests)


def load_screen(name_or_path: str, models: Models) -> Bundle:
    """The student bundle for ``--screen``, checked against the run's model (``models``: the teacher); every
    mismatch is a one-line ``MonitorError``."""
    b = load_bundle(name_or_path)
    if b.is_ensemble or b.screen is None:
        raise MonitorError(f"--screen {name_or_path}: {b.name} is not a screen (its bundle.json has no screen "
                           "section); make one with `monitor distill TEACHER --audio DIR --out RUN`")
    t = b.screen["teacher"]
    if t["sha256"] != models.sha256:
        raise MonitorError(f"--screen {b.name} was distilled from {t['name']} {t.get('version', '')} (sha256 "
                           f"{t['sha256'][:12]}...), not from --model {models.describe()} (sha256 "
                           f"{models.sha256[:12]}...); distil a screen for this model with `monitor distill`")
    if list(b.labels) != list(models.labels):
        raise MonitorError(f"--screen {b.name} has other labels than --model ({', '.join(b.labels[:5])} ...)")
    if b.preprocessing.segment != models.preprocessing.segment:
        raise MonitorError(f"--screen {b.name} cuts segments differently from --model; distil it again")
    return b


def run_identity(model_sha256: str, screen: Bundle | None) -> str:
    """The resume key of a run's files: the model's hash, or with a screen the hash of both (a file scored
    through another screen, or without one, is scored again)."""
    if screen is None:
        return model_sha256
    return hashlib.sha256(f"{model_sha256}+screen:{screen.sha256}".encode()).hexdigest()


def screen_info(screen: Bundle) -> dict[str, Any]:
    """``run.json``'s ``screen`` (also on the workbook's Run info): the student, its thresholds, the recall and
    escalation measured when it was distilled; ``CascadeEngine.summary`` adds what this run escalated."""
    sc = screen.screen or {}
    return {"name": screen.name, "version": screen.version, "sha256": screen.sha256, "path": str(screen.path or ""),
            "thresholds": dict(sc.get("thresholds", {})), "target_recall": sc.get("target_recall"),
            "recall": dict(sc.get("recall", {})), "escalation_measured": sc.get("escalation"),
            "rule": "the model scores only segments where a label's screen score reaches its screen threshold; "
                    "detections come only from the model's scores"}


def screen_precision(requested: str, device: str) -> str:
    """The student's precision: int8 on a CPU when ONNX Runtime is installed (the faster path for the student
    there: ``benchmarks/cascade.py``), else what the run asked for."""
    if pick_device(device) == "cpu" and requested in ("auto", "fp32", "int8") and int8_available():
        return "int8"
    return requested


def escalate(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n,) bool: the segments where any label's student score reaches its screen threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    return (scores >= thresholds[None, :]).any(axis=1) if len(scores) else np.zeros(0, bool)


def chunks(jobs: Sequence[FileJob], pre, size: int) -> list[list[FileJob]]:
    """Consecutive files of about ``size`` segments (at least one file each)."""
    out: list[list[FileJob]] = []
    cur: list[FileJob] = []
    n = 0
    for j in jobs:
        cur.append(j)
        n += len(plan_segments(int(j.frames), int(j.sample_rate_hz), pre.segment))
        if n >= size:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def _key(job: FileJob) -> tuple[str, str]:
    return job.path, job.rel


class CascadeEngine:
    """The engine seam over two engines: ``student`` (every segment) and ``teacher`` (escalated segments).

    ``screen``: the student bundle (its ``screen`` section's thresholds decide escalation). ``chunk_segments``:
    segments per chunk (default by engine: ``CHUNK_SEGMENTS``). ``summary()`` counts what this run escalated.
    """

    def __init__(self, student: Engine, teacher: Engine, screen: Bundle, chunk_segments: int | None = None):
        self.student, self.teacher, self.screen = student, teacher, screen
        self.name = teacher.name
        self.pre = screen.preprocessing
        self.thresholds = np.array([float(screen.screen["thresholds"][lab]) for lab in screen.labels])
        self.chunk_segments = int(chunk_segments or os.environ.get(CHUNK_ENV) or CHUNK_SEGMENTS.get(teacher.name, 1024))
        self.segments = 0
        self.escalated = 0

    def describe(self) -> EngineInfo:
        t, s = self.teacher.describe(), self.student.describe()
        extra = dict(t.extra, screen={"precision": s.precision, "int8_runtime": s.int8_runtime,
                                      "batch_size": s.batch_size, "chunk_segments": self.chunk_segments})
        return dataclasses.replace(t, extra=extra)

    def summary(self) -> dict[str, Any]:
        """What ``run.json``'s ``screen`` records about this run: the student's precision, segments screened
        and escalated."""
        s = self.student.describe()
        return {"precision": s.precision + (f" ({s.int8_runtime})" if s.int8_runtime else ""),
                "segments_screened": self.segments, "segments_escalated": self.escalated,
                "escalated_fraction": round(self.escalated / self.segments, 6) if self.segments else 0.0}

    def run(self, jobs: Sequence[FileJob], on_file_done: OnFileDone, on_segments: OnSegments | None = None) -> None:
        for chunk in chunks(list(jobs), self.pre, self.chunk_segments):
            self._chunk(chunk, on_file_done, on_segments)

    def _chunk(self, chunk: list[FileJob], on_file_done: OnFileDone, on_segments: OnSegments | None) -> None:
        first: dict[tuple[str, str], FileScores] = {}
        self.student.run(chunk, lambda j, s: first.__setitem__(_key(j), s), on_segments)
        escalated: dict[tuple[str, str], np.ndarray] = {}
        sub = []
        for job in chunk:
            s = first[_key(job)]
            if s.error:
                continue
            esc = escalate(s.scores, self.thresholds)
            escalated[_key(job)] = esc
            self.segments += len(esc)
            self.escalated += int(esc.sum())
            if esc.any():
                sub.append(dataclasses.replace(job, segments=tuple(int(i) for i in s.index[esc])))
        second: dict[tuple[str, str], FileScores] = {}
        if sub:
            tick = (lambda n: on_segments(0)) if on_segments else None  # progress counts the screen's segments
            self.teacher.run(sub, lambda j, s: second.__setitem__(_key(j), s), tick)
        for job in chunk:
            on_file_done(job, self._merge(first[_key(job)], escalated.get(_key(job)), second.get(_key(job))))

    def _merge(self, s: FileScores, esc: np.ndarray | None, t: FileScores | None) -> FileScores:
        """The student's file scores with the teacher's on the escalated segments; ``scored_by`` per segment."""
        if s.error or esc is None:
            return s
        scores = np.array(s.scores, dtype=np.float32, copy=True)
        by = np.where(esc, "", self.screen.name).astype(object)
        error = s.error
        if t is not None:
            pos = {int(i): k for k, i in enumerate(s.index)}
            rows = [pos[int(i)] for i in t.index]
            if sorted(rows) != sorted(np.flatnonzero(esc).tolist()):
                raise MonitorError("the teacher scored other segments than the screen escalated (a bug); "
                                   "run again without --screen")
            scores[rows] = t.scores
            error = t.error
        return dataclasses.replace(s, scores=scores, error=error, scored_by=tuple(str(b) for b in by))

    def close(self) -> None:
        try:
            self.teacher.close()  # a Ray instance this run started belongs to the student engine (made first)
        finally:
            self.student.close()

    def __enter__(self) -> "CascadeEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
