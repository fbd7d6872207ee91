"""Batched inference with worker-process prefetch.

Decoding and the front end run in worker processes (``workers > 0``) on chunks of a file's
segments; the main process batches their features through the model(s). Results come back in
task order whatever the worker count, and the last batch is zero-padded to ``batch_size`` so a
segment's score never depends on which other segments shared its batch: runs with 0 or N
workers, or resumed after an interruption, give bit-identical scores on CPU.
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from monitor.config import Preprocess

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 8_000_000  # decoded samples (frames x channels) a worker holds at once, ~32 MB float32


@dataclass(frozen=True)
class ChunkTask:
    """Segments ``[first, first + len(bounds))`` of one file, as frame ranges at the native rate."""

    path: str
    file: str
    bounds: tuple[tuple[int, int, int], ...]  # (segment index, start_frame, end_frame)
    sample_rate_hz: int
    last: bool  # the file's final chunk


@dataclass
class ChunkResult:
    file: str
    index: np.ndarray  # (n,) segment indices
    start_s: np.ndarray  # (n,)
    end_s: np.ndarray  # (n,)
    features: np.ndarray | None  # (n, target_frames, mel) float32; None on error
    nonfinite: int = 0
    error: str = ""
    last: bool = False


def plan_chunks(path: Path, file: str, n_frames: int, channels: int, sample_rate_hz: int,
                pre: Preprocess, batch_size: int) -> list[ChunkTask]:
    """Split one file's segment plan into chunks that bound worker memory."""
    from monitor.audio import plan_segments

    plan = plan_segments(n_frames, sample_rate_hz, pre.segment)
    window_frames = max(1, int(round(pre.segment.window_s * sample_rate_hz)))
    per_chunk = max(1, min(4 * batch_size, CHUNK_SAMPLES // (window_frames * max(1, channels))))
    tasks = []
    for k in range(0, len(plan), per_chunk):
        part = tuple(tuple(int(v) for v in b) for b in plan[k:k + per_chunk])
        tasks.append(ChunkTask(str(path), file, part, sample_rate_hz, last=k + per_chunk >= len(plan)))
    return tasks


def compute_chunk(task: ChunkTask, pre: Preprocess) -> ChunkResult:
    """Decode a chunk's frames (seeking, never the whole file) and run the shared front end."""
    from monitor.audio import read_frames
    from monitor.frontend import features, prepare_wave

    sr = task.sample_rate_hz
    idx = np.array([b[0] for b in task.bounds], dtype=np.int64)
    start_s = np.array([b[1] / sr for b in task.bounds])
    end_s = np.array([b[2] / sr for b in task.bounds])
    try:
        waves, nonfinite = [], 0
        lo, hi = task.bounds[0][1], max(b[2] for b in task.bounds)
        block = read_frames(task.path, lo, hi)
        if block.shape[0] < hi - lo:
            log.debug("%s: expected %d frames, read %d", task.file, hi - lo, block.shape[0])
        for _, a, b in task.bounds:
            part = block[a - lo:b - lo]
            if part.shape[0] == 0:
                raise ValueError(f"no audio data at {a / sr:.1f} s (file shorter than its header says)")
            wave, bad = prepare_wave(part, sr, pre)
            nonfinite += bad
            waves.append(wave)
        feats = features(waves, pre).numpy().astype(np.float32, copy=False)
        return ChunkResult(task.file, idx, start_s, end_s, feats, nonfinite, last=task.last)
    except Exception as exc:  # one bad file never stops the run
        log.debug("chunk of %s failed", task.file, exc_info=True)
        return ChunkResult(task.file, idx, start_s, end_s, None, error=_human(exc), last=task.last)


def _human(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"could not decode audio: {text}"


_WORKER_PRE: Preprocess | None = None


def _worker_init(pre: Preprocess) -> None:
    global _WORKER_PRE
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides how to stop
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    _WORKER_PRE = pre


def _worker_run(task: ChunkTask) -> ChunkResult:
    assert _WORKER_PRE is not None
    return compute_chunk(task, _WORKER_PRE)


class WorkerPool:
    """Decode/front-end worker processes, spawned on construction so their start-up (importing torch,
    ~2.5 s on 2 cores) overlaps the caller's discovery and model loading; ``workers <= 0``: in-process."""

    def __init__(self, pre: Preprocess, workers: int):
        self.pre, self.workers, self.pool = pre, int(workers), None
        if self.workers > 0:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # never fork a process that holds torch/OpenMP threads
            self.pool = ctx.Pool(self.workers, initializer=_worker_init, initargs=(pre,))

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def results(self, tasks: Iterable[ChunkTask]) -> Iterator[ChunkResult]:
        """Chunk results in task order; at most ``2 * workers`` chunks in flight (bounded memory)."""
        if self.pool is None:
            for t in tasks:
                yield compute_chunk(t, self.pre)
            return
        pending: collections.deque = collections.deque()
        it = iter(tasks)
        for t in it:
            pending.append(self.pool.apply_async(_worker_run, (t,)))
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            res = pending.popleft().get()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.pool.apply_async(_worker_run, (nxt,)))
            yield res


def default_workers(device: str, cores: int | None = None) -> int:
    """Decode/front-end processes for ``--workers`` auto.

    A GPU waits for decoding, so up to 4 workers (leaving the main process a core). On a CPU the
    model's threads already use every core: a worker only competes with them (measured on 2 cores,
    base384 fp32: 0.91-0.99x of in-process decoding), so one worker from 4 cores up, else none.
    """
    cores = cores or os.cpu_count() or 1
    if device == "cpu":
        return 1 if cores >= 4 else 0
    return max(0, min(4, cores - 1))


def prepare_models(bundles: Sequence, device: str, precision: str) -> tuple[list, str]:
    """Build each bundle's model for ``device``; returns (models, resolved precision)."""
    import torch

    from monitor.device import resolve_precision

    precision = resolve_precision(precision, device)
    models = []
    for b in bundles:
        m = b.build_model(device="cpu")
        if precision == "int8":
            import warnings

            with warnings.catch_warnings():  # torch marks its eager dynamic quantisation deprecated; it works
                warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
                from torch.ao.quantization import quantize_dynamic

                m = quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
        models.append(m.to(device).eval())
    return models, precision


class Scorer:
    """Batches features through an ensemble; scores are the mean of the members' probabilities.

    ``tasks``: per model, ``multilabel`` (sigmoid) or ``multiclass`` (softmax over labels). The one
    scorer of ``monitor run`` and of training's validation (``Scorer.for_model``).
    """

    def __init__(self, bundles: Sequence, models: Sequence, device: str, precision: str, batch_size: int,
                 tasks: Sequence[str] | None = None):
        self.models = list(models)
        self.tasks = list(tasks) if tasks is not None else [b.task for b in bundles]
        self.device, self.precision, self.batch_size = device, precision, int(batch_size)

    @classmethod
    def for_model(cls, model, task: str, device: str, precision: str, batch_size: int) -> "Scorer":
        """A scorer for one bare model (training's validation), scoring exactly as ``monitor run`` does."""
        return cls((), [model], device, precision, batch_size, tasks=[task])

    def logits(self, feats: np.ndarray):
        """``feats`` (n <= batch_size, T, F) -> per model, float32 logits ``(n, labels)`` on the CPU."""
        import torch

        from monitor.device import autocast_dtype

        n = feats.shape[0]
        if self.precision == "int8":
            rows = [torch.from_numpy(feats[i:i + 1]) for i in range(n)]
        else:
            x = torch.zeros((self.batch_size, *feats.shape[1:]), dtype=torch.float32)
            x[:n] = torch.from_numpy(feats)
            rows = [x.to(self.device)]
        out = []
        with torch.inference_mode():
            for m in self.models:
                if autocast_dtype(self.precision) is not None:
                    with torch.autocast("cuda", dtype=autocast_dtype(self.precision)):
                        logits = torch.cat([m(x) for x in rows])
                else:
                    logits = torch.cat([m(x) for x in rows])
                out.append(logits.float()[:n].cpu())
        return out

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """``feats`` (n <= batch_size, T, F) -> scores (n, labels).

        A segment's score never depends on its batch-mates, so a resumed run equals an uninterrupted
        one: fp32/bf16 batches are zero-padded to ``batch_size`` (one shape, one kernel choice), and
        int8 runs one segment per call, because dynamic quantisation takes its activation range from
        the whole input (batch-mates moved logits by up to 0.07); on a CPU it is also the fastest.
        """
        out = None
        for task, logits in zip(self.tasks, self.logits(feats)):
            p = to_scores(logits, task).numpy().astype(np.float64)
            out = p if out is None else out + p
        return (out / len(self.models)).astype(np.float32)


def to_scores(logits, task: str):
    """Logits (..., labels) -> probabilities: sigmoid (multilabel) or softmax over labels (multiclass)."""
    import torch

    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)


@dataclass
class _FileAcc:
    index: list = field(default_factory=list)
    start_s: list = field(default_factory=list)
    end_s: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    nonfinite: int = 0
    error: str = ""


def score_chunks(results: Iterable[ChunkResult], scorer: Scorer,
                 on_file_done: Callable[[str, _FileAcc], None],
                 on_segments: Callable[[int], None] | None = None) -> None:
    """Batch chunk features through ``scorer``; call ``on_file_done(file, acc)`` in file order."""
    accs: dict[str, _FileAcc] = {}
    order: collections.deque = collections.deque()  # files in arrival order
    finished: set[str] = set()
    buf_feats: list[np.ndarray] = []
    buf_owner: list[tuple[str, int]] = []  # (file, row in chunk-concatenated acc)
    buf_n = 0

    def flush(force: bool = False) -> None:
        nonlocal buf_feats, buf_owner, buf_n
        while buf_n >= scorer.batch_size or (force and buf_n):
            allf = np.concatenate(buf_feats, axis=0)
            take = min(scorer.batch_size, buf_n)
            scores = scorer(allf[:take])
            for (file, _), s in zip(buf_owner[:take], scores):
                if file in accs:  # a file that failed part-way was already reported
                    accs[file].scores.append(s)
            rest = allf[take:]
            buf_feats, buf_owner, buf_n = ([rest] if len(rest) else []), buf_owner[take:], buf_n - take
            if on_segments:
                on_segments(take)
        emit()

    def emit() -> None:
        while order and order[0] in finished:
            f = order[0]
            acc = accs[f]
            if acc.error or len(acc.scores) == len(acc.index):
                order.popleft()
                on_file_done(f, accs.pop(f))
            else:
                break

    for r in results:
        if r.file not in accs:
            accs[r.file] = _FileAcc()
            order.append(r.file)
        acc = accs[r.file]
        if r.error or acc.error:
            acc.error = acc.error or r.error
        else:
            acc.index.extend(r.index.tolist())
            acc.start_s.extend(r.start_s.tolist())
            acc.end_s.extend(r.end_s.tolist())
            acc.nonfinite += r.nonfinite
            buf_feats.append(r.features)
            buf_owner.extend((r.file, i) for i in range(len(r.index)))
            buf_n += len(r.index)
        if r.last:
            finished.add(r.file)
        flush()
    flush(force=True)
    emit()


# --- the engine seam: what ``monitor run`` calls, whatever runs the work ------------------------------

@dataclass(frozen=True)
class FileJob:
    """One recording to score. ``key`` is the caller's own (opaque here) and comes back with the scores."""

    key: Any
    path: str
    rel: str
    frames: int
    channels: int
    sample_rate_hz: int


@dataclass
class FileScores:
    """Everything scored for one file: ``index``/``start_s``/``end_s`` (n,), ``scores`` (n, labels)
    float32, non-finite input samples replaced, and ``error`` (non-empty: the file failed, in words)."""

    index: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    scores: np.ndarray
    nonfinite: int = 0
    error: str = ""


class LocalEngine:
    """Decode and front end in worker processes (or in process), scoring in this process.

    Worker processes start on construction, so their imports overlap the caller's discovery and
    model loading. ``run`` calls ``on_file_done(job, FileScores)`` in job order as each file
    completes and ``on_segments(n)`` as segments are scored; an exception raised by either stops
    the run (the caller's Ctrl-C handling raises ``KeyboardInterrupt`` from ``on_segments``).
    """

    name = "local"

    def __init__(self, bundles: Sequence, *, device: str = "auto", precision: str = "auto", batch_size: int = 16,
                 workers: int | None = None):
        from monitor.device import pick_device, resolve_precision

        self.bundles = list(bundles)
        self.pre = self.bundles[0].preprocessing
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = int(batch_size)
        self.workers = default_workers(self.device) if workers is None else int(workers)
        self.pool = WorkerPool(self.pre, self.workers)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "device": self.device, "precision": self.precision, "workers": self.workers,
                "batch_size": self.batch_size}

    def run(self, jobs: Sequence[FileJob], on_file_done: Callable[[FileJob, FileScores], None],
            on_segments: Callable[[int], None] | None = None) -> None:
        jobs = list(jobs)
        if not jobs:
            return
        nets, _ = prepare_models(self.bundles, self.device, self.precision)
        scorer = Scorer(self.bundles, nets, self.device, self.precision, self.batch_size)
        by_rel = {j.rel: j for j in jobs}

        def tasks():
            for j in jobs:
                yield from plan_chunks(Path(j.path), j.rel, j.frames, j.channels, j.sample_rate_hz, self.pre,
                                       self.batch_size)

        n_labels = len(self.bundles[0].labels)

        def done(rel: str, acc: _FileAcc) -> None:
            scores = np.asarray(acc.scores, dtype=np.float32).reshape(-1, n_labels)
            on_file_done(by_rel[rel], FileScores(np.asarray(acc.index, np.int64), np.asarray(acc.start_s),
                                                 np.asarray(acc.end_s), scores, acc.nonfinite, acc.error))

        score_chunks(self.pool.results(tasks()), scorer, done, on_segments)

    def close(self) -> None:
        self.pool.__exit__()

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
