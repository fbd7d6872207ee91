"""The batch plan: which segments are scored together, decided once by the driver, for every engine.

The driver numbers every segment of the files to do, in file order (``0 .. n_segments - 1``), cuts
that sequence into batches of ``batch_size`` (batch ``b`` holds segments ``[b * batch_size,
(b + 1) * batch_size)``; only the last is shorter), and groups the batches into decode tasks within a
decoded-sample budget, where a segment counts at least ``1 / TASK_SEGMENTS`` of the budget: every segment
becomes a full-size feature matrix whatever its length, so short files must not pack hundreds of them into
one task. A task never straddles a batch boundary: it is either one or more whole
batches, or, when one batch alone holds more audio than the budget (a batch of 384 kHz segments), a
part of one batch. So a batch's rows are one task's slice or the concatenation of consecutive tasks.

A segment's batch-mates are then the same whatever runs the plan (the local engine's in-process or
worker decoding, Ray tasks and actors), and a segment whose decode failed keeps its slot, zero-filled,
so no later segment moves to another batch.

Everything here is plain data (frozen dataclasses of ints, strings and tuples, numpy arrays in the
results): picklable, cheap to ship to a Ray task or actor, and free of torch. Results may arrive in
any order and more than once: ``Assembler`` fills per-segment slots, so a re-delivered batch is
harmless, and a file is complete when every one of its segments is in.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from monitor.audio import plan_segments, probe
from monitor.config import Preprocess

TASK_SAMPLES = 8_000_000  # decoded samples (frames x channels) one decode task holds at once, ~32 MB float32
TASK_SEGMENTS = 48  # at most this many segments per task: each counts at least task_samples / TASK_SEGMENTS


@dataclass(frozen=True)
class FileJob:
    """One recording to score. ``key`` is the caller's own (opaque here) and comes back with the scores.

    ``segments``: only these segment indices of the file (``None``: every segment), e.g. the segments a
    screen escalates to the teacher (``monitor.cascade``); the plan numbers and batches only those."""

    key: Any
    path: str
    rel: str
    frames: int
    channels: int
    sample_rate_hz: int
    segments: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Span:
    """Consecutive segments of one file inside a decode task (self-contained: a task needs no plan).

    ``file``: index into ``BatchPlan.files``; ``first``: global number of the span's first segment;
    ``bounds``: ``(segment index in the file, start_frame, end_frame)`` per segment, native rate.
    """

    file: int
    first: int
    bounds: tuple[tuple[int, int, int], ...]
    path: str
    rel: str
    sample_rate_hz: int

    @property
    def n(self) -> int:
        return len(self.bounds)


@dataclass(frozen=True)
class DecodeTask:
    """Segments ``[first, first + n)`` of the plan, as spans of one or more files (file order).

    The unit of decoding and front-end work: a worker process or a Ray task reads each span's frame
    range by seeking (``audio.read_frames``) and returns one row per segment (``Rows``).
    """

    id: int
    first: int
    n: int
    spans: tuple[Span, ...]


@dataclass
class Rows:
    """Consecutive rows of the plan: segments ``[first, first + len(nonfinite))``.

    ``data``: ``(n, target_frames, mel)`` float32 features, or ``(n, samples)`` float32 16 kHz waves
    (zero-padded on the right; ``lengths`` gives each row's true length) for a front end on the
    scoring device. ``nonfinite``: samples replaced per row; ``errors``: per row, why its file could
    not be decoded ("" when fine). A failed row's data is zeros: it is scored with its batch and its
    score thrown away.
    """

    first: int
    data: np.ndarray
    nonfinite: np.ndarray
    errors: tuple[str, ...]
    lengths: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.nonfinite)


@dataclass
class BatchScores:
    """Scores of one planned batch: segments ``[first, first + n)``, ``scores`` (n, labels) float32, and
    the rows' ``nonfinite`` counts and ``errors`` carried through from decoding; ``embeddings`` (n, width)
    float16 when the run keeps them (``monitor run --embeddings``), else None."""

    batch: int
    first: int
    scores: np.ndarray
    nonfinite: np.ndarray
    errors: tuple[str, ...]
    embeddings: np.ndarray | None = None


@dataclass(frozen=True)
class BatchPlan:
    """The whole plan for a list of files; see the module docstring."""

    files: tuple[FileJob, ...]
    file_first: tuple[int, ...]  # global number of each file's first segment
    file_segments: tuple[int, ...]  # segments per file
    batch_size: int
    tasks: tuple[DecodeTask, ...]
    file_tasks: tuple[tuple[int, int], ...]  # per file: ids [first, stop) of the tasks holding its segments

    @property
    def n_segments(self) -> int:
        return sum(self.file_segments)

    @property
    def n_batches(self) -> int:
        return -(-self.n_segments // self.batch_size)

    def batch_range(self, b: int) -> tuple[int, int]:
        """Global segment numbers ``[start, stop)`` of batch ``b``."""
        return b * self.batch_size, min((b + 1) * self.batch_size, self.n_segments)

    def file_of(self, seg: int) -> int:
        """Index of the file holding global segment ``seg``."""
        return bisect.bisect_right(self.file_first, seg) - 1  # an empty file shares the next one's first

    def tasks_of_batch(self, b: int) -> list[DecodeTask]:
        """The decode tasks whose rows make batch ``b`` (one, or consecutive parts of it)."""
        lo, hi = self.batch_range(b)
        i = max(0, bisect.bisect_right([t.first for t in self.tasks], lo) - 1)
        out = []
        while i < len(self.tasks) and self.tasks[i].first < hi:
            out.append(self.tasks[i])
            i += 1
        return out


def plan_batches(jobs: Sequence[FileJob], pre: Preprocess, batch_size: int,
                 task_samples: int = TASK_SAMPLES) -> BatchPlan:
    """Number every segment of ``jobs`` in file order, cut batches of ``batch_size`` and group them into
    decode tasks of at most ``task_samples`` decoded samples (at least one segment per task), a segment
    counting at least ``task_samples // TASK_SEGMENTS`` (so at most ``TASK_SEGMENTS`` per task)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    segs: list[tuple[int, int, int, int]] = []  # (file, index, start, end) in global order
    cost: list[int] = []  # decoded samples per segment (frames x channels), at least the floor
    floor = max(1, int(task_samples) // TASK_SEGMENTS)
    firsts, counts = [], []
    for fi, j in enumerate(jobs):
        plan = plan_segments(int(j.frames), int(j.sample_rate_hz), pre.segment)
        if j.segments is not None:
            wanted = set(j.segments)
            plan = [p for p in plan if p[0] in wanted]
        firsts.append(len(segs))
        counts.append(len(plan))
        for k, a, b in plan:
            segs.append((fi, int(k), int(a), int(b)))
            cost.append(max(floor, (int(b) - int(a)) * max(1, int(j.channels))))
    n = len(segs)
    tasks: list[DecodeTask] = []

    def add(lo: int, hi: int) -> None:
        spans, s = [], lo
        while s < hi:
            f = segs[s][0]
            e = s
            while e < hi and segs[e][0] == f:
                e += 1
            j = jobs[f]
            spans.append(Span(f, s, tuple(segs[i][1:] for i in range(s, e)), str(j.path), str(j.rel),
                              int(j.sample_rate_hz)))
            s = e
        tasks.append(DecodeTask(len(tasks), lo, hi - lo, tuple(spans)))

    b0 = 0
    while b0 < n:
        # whole batches while they fit the budget (at least one batch) ...
        hi = min(b0 + batch_size, n)
        if sum(cost[b0:hi]) <= task_samples:
            load = sum(cost[b0:hi])
            while hi < n:
                nxt = min(hi + batch_size, n)
                extra = sum(cost[hi:nxt])
                if load + extra > task_samples:
                    break
                load, hi = load + extra, nxt
            add(b0, hi)
        else:  # ... or one batch cut into parts within the budget (at least one segment each)
            s, load = b0, 0
            for i in range(b0, hi):
                if i > s and load + cost[i] > task_samples:
                    add(s, i)
                    s, load = i, 0
                load += cost[i]
            add(s, hi)
        b0 = hi
    file_tasks: list[list[int]] = [[0, 0] for _ in jobs]
    for t in tasks:
        for sp in t.spans:
            ft = file_tasks[sp.file]
            if ft[1] == 0:
                ft[0] = t.id
            ft[1] = t.id + 1
    return BatchPlan(tuple(jobs), tuple(firsts), tuple(counts), int(batch_size), tuple(tasks),
                     tuple((a, b) for a, b in file_tasks))


class Batcher:
    """Turns decode results (``Rows``, in any order) into planned batches, each as soon as it is whole.

    ``add(rows)`` returns the batches it completed: ``(b, Rows)`` with the batch's rows in plan order.
    """

    def __init__(self, plan: BatchPlan):
        self.plan = plan
        self._parts: dict[int, dict[int, Rows]] = {}  # batch -> {first: rows}
        self._have: dict[int, int] = {}
        self._done: set[int] = set()

    def add(self, rows: Rows) -> list[tuple[int, Rows]]:
        out = []
        bs = self.plan.batch_size
        s, end = rows.first, rows.first + rows.n
        while s < end:
            b = s // bs
            lo, hi = self.plan.batch_range(b)
            e = min(end, hi)
            if b not in self._done and s not in self._parts.setdefault(b, {}):
                self._parts[b][s] = slice_rows(rows, s - rows.first, e - rows.first)
                self._have[b] = self._have.get(b, 0) + (e - s)
                if self._have[b] == hi - lo:
                    parts = self._parts.pop(b)
                    del self._have[b]
                    self._done.add(b)
                    out.append((b, concat_rows([parts[k] for k in sorted(parts)])))
            s = e
        return out


def slice_rows(r: Rows, i: int, j: int) -> Rows:
    if i == 0 and j == r.n:
        return r
    return Rows(r.first + i, r.data[i:j], r.nonfinite[i:j], r.errors[i:j],
                None if r.lengths is None else r.lengths[i:j])


def concat_rows(parts: Sequence[Rows]) -> Rows:
    """Consecutive ``Rows`` -> one (waves are right-padded with zeros to the widest)."""
    if len(parts) == 1:
        return parts[0]
    data = [p.data for p in parts]
    if data[0].ndim == 2:  # waves: pad to one width
        width = max(d.shape[1] for d in data)
        data = [d if d.shape[1] == width else np.pad(d, ((0, 0), (0, width - d.shape[1]))) for d in data]
    lengths = None if parts[0].lengths is None else np.concatenate([p.lengths for p in parts])
    return Rows(parts[0].first, np.concatenate(data), np.concatenate([p.nonfinite for p in parts]),
                tuple(e for p in parts for e in p.errors), lengths)


@dataclass
class FileScores:
    """Everything scored for one file: ``index``/``start_s``/``end_s`` (n,), ``scores`` (n, labels)
    float32, non-finite input samples replaced, and ``error`` (non-empty: the file failed, in words;
    its scores are then meaningless); ``embeddings`` (n, width) float16 when the run keeps them. ``scored_by``:
    per segment, '' where the run's model scored it, else the name of the screen that alone scored it
    (``monitor.cascade``; such a row is never a detection); empty: every segment by the run's model."""

    index: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    scores: np.ndarray
    nonfinite: int = 0
    error: str = ""
    embeddings: np.ndarray | None = None
    scored_by: tuple[str, ...] = ()


@dataclass
class _Slots:
    scores: np.ndarray
    nonfinite: np.ndarray
    got: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    embeddings: np.ndarray | None = None


class Assembler:
    """Collects ``BatchScores`` in any order (a re-delivered batch changes nothing) into files.

    ``add(batch_scores)`` returns the files it completed, each once: in plan (file) order when
    ``in_order`` (a file waits for every earlier one), else as soon as each is complete.
    """

    def __init__(self, plan: BatchPlan, n_labels: int, in_order: bool = True):
        self.plan, self.n_labels, self.in_order = plan, int(n_labels), in_order
        self._slots: dict[int, _Slots] = {}
        self._emitted: set[int] = set()
        self._next = 0  # first file not yet emitted (in_order)

    def _file(self, f: int) -> _Slots:
        s = self._slots.get(f)
        if s is None:
            n = self.plan.file_segments[f]
            s = self._slots[f] = _Slots(np.zeros((n, self.n_labels), np.float32), np.zeros(n, np.int64),
                                        np.zeros(n, bool))
        return s

    def add(self, res: BatchScores) -> list[tuple[FileJob, FileScores]]:
        touched = []
        n = len(res.nonfinite)
        g = res.first
        while g < res.first + n:
            f = self.plan.file_of(g)
            lo = self.plan.file_first[f]
            hi = min(lo + self.plan.file_segments[f], res.first + n)
            if f not in self._emitted:
                s = self._file(f)
                i, j = g - lo, hi - lo
                r0, r1 = g - res.first, hi - res.first
                s.scores[i:j] = res.scores[r0:r1]
                if res.embeddings is not None:
                    if s.embeddings is None:
                        s.embeddings = np.zeros((len(s.scores), res.embeddings.shape[1]), np.float16)
                    s.embeddings[i:j] = res.embeddings[r0:r1]
                s.nonfinite[i:j] = res.nonfinite[r0:r1]
                s.got[i:j] = True
                for k in range(r0, r1):
                    if res.errors[k]:
                        s.errors.setdefault(g - lo + (k - r0), res.errors[k])
                touched.append(f)
            g = hi
        return self._complete(touched)

    def _complete(self, touched: list[int]) -> list[tuple[FileJob, FileScores]]:
        out = []
        if self.in_order:
            while self._next < len(self.plan.files) and self._ready(self._next):
                out.append(self._emit(self._next))
                self._next += 1
        else:
            for f in dict.fromkeys(touched):
                if f not in self._emitted and self._ready(f):
                    out.append(self._emit(f))
        return out

    def _ready(self, f: int) -> bool:
        if self.plan.file_segments[f] == 0:
            return True
        s = self._slots.get(f)
        return s is not None and bool(s.got.all())

    def _emit(self, f: int) -> tuple[FileJob, FileScores]:
        job = self.plan.files[f]
        s = self._file(f)
        del self._slots[f]
        self._emitted.add(f)
        bounds = file_bounds(self.plan, f)
        sr = float(job.sample_rate_hz)
        error = s.errors[min(s.errors)] if s.errors else ""
        return job, FileScores(np.array([b[0] for b in bounds], np.int64), np.array([b[1] / sr for b in bounds]),
                               np.array([b[2] / sr for b in bounds]), s.scores, int(s.nonfinite.sum()), error,
                               s.embeddings)

    @property
    def pending(self) -> int:
        """Files not yet emitted."""
        return len(self.plan.files) - len(self._emitted)


def file_bounds(plan: BatchPlan, f: int) -> list[tuple[int, int, int]]:
    """``(index, start_frame, end_frame)`` of file ``f``'s segments, from the plan's spans."""
    t0, t1 = plan.file_tasks[f]
    out: list[tuple[int, int, int]] = []
    for t in plan.tasks[t0:t1]:
        for sp in t.spans:
            if sp.file == f:
                out.extend(sp.bounds)
    return out


def iter_batches(plan: BatchPlan, results: Iterator[Rows]) -> Iterator[tuple[int, Rows]]:
    """Planned batches from decode results in any order, each as soon as it is whole."""
    batcher = Batcher(plan)
    for r in results:
        yield from batcher.add(r)


def job_from_path(path: Path | str, rel: str | None = None, key: Any = None) -> FileJob:
    """A ``FileJob`` from a file's header (tests and benchmarks)."""
    info = probe(path)
    return FileJob(key if key is not None else rel or Path(path).name, str(path), rel or Path(path).name,
                   info.frames, info.channels, info.sample_rate_hz)
