"""Decoding and the CPU part of the front end, for planned decode tasks (``monitor.plan``).

``decode_task`` reads each span of a task by seeking (never a whole file) and returns one row per
segment: features (the whole front end: ``prepare_wave``, then ``frontend.FrontEnd`` on the CPU) on a
CPU run, or 16 kHz waves (``prepare_wave`` only) for the same ``FrontEnd`` on the scoring device on a
GPU run. A span that cannot be decoded keeps its rows, zero-filled, with its reason. ``WorkerPool`` runs
tasks in spawned worker processes (or in process with 0 workers).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from typing import Iterable, Iterator

import numpy as np

from monitor.audio import read_frames
from monitor.config import Preprocess
from monitor.frontend import front_end, prepare_wave, stack_waves
from monitor.plan import DecodeTask, Rows

log = logging.getLogger(__name__)

OUTPUTS = ("features", "waves")


def decode_task(task: DecodeTask, pre: Preprocess, output: str = "features") -> Rows:
    """Decode a task's spans (seeking, never a whole file) and run the front end's CPU part.

    ``output``: ``features`` (the whole front end: ``(n, target_frames, mel)``) or ``waves`` (16 kHz,
    not band-limited, ``(n, samples)`` zero-padded, for ``FrontEnd`` on the GPU). A span that cannot be
    decoded gives zero rows carrying the reason; the other spans are unaffected.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    with one_torch_thread():
        return _decode_task(task, pre, output)


@contextlib.contextmanager
def one_torch_thread():
    """torch at one intra-op thread inside, restored after: the front end is per-core work, and in process
    (``--workers 0``) torch has every core for the model; its small threaded matmuls and element-wise ops
    then stall behind other processes on a busy machine (the decimation's matmul: 1.4 ms -> 300 ms)."""
    import torch

    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def _decode_task(task: DecodeTask, pre: Preprocess, output: str) -> Rows:
    n = task.n
    waves: list[np.ndarray | None] = [None] * n
    nonfinite = np.zeros(n, np.int64)
    errors = [""] * n
    for sp in task.spans:
        r0 = sp.first - task.first
        try:
            lo, hi = sp.bounds[0][1], max(b[2] for b in sp.bounds)
            block = read_frames(sp.path, lo, hi)
            if block.shape[0] < hi - lo:
                log.debug("%s: expected %d frames, read %d", sp.rel, hi - lo, block.shape[0])
            out = []
            for _, a, b in sp.bounds:
                part = block[a - lo:b - lo]
                if part.shape[0] == 0:
                    raise ValueError(f"no audio data at {a / sp.sample_rate_hz:.1f} s "
                                     "(file shorter than its header says)")
                out.append(prepare_wave(part, sp.sample_rate_hz, pre))
            for k, (w, bad) in enumerate(out):
                waves[r0 + k], nonfinite[r0 + k] = w, bad
        except Exception as exc:  # one bad file never stops the run
            log.debug("decoding %s failed", sp.rel, exc_info=True)
            for k in range(sp.n):
                waves[r0 + k], nonfinite[r0 + k], errors[r0 + k] = None, 0, _human(exc)
    ok = [i for i in range(n) if waves[i] is not None]
    fb = pre.fbank
    if output == "features":
        data = np.zeros((n, fb.target_frames, fb.num_mel_bins), np.float32)
        if ok:
            data[ok] = front_end(pre)(*stack_waves([waves[i] for i in ok])).numpy()
        return Rows(task.first, data, nonfinite, tuple(errors))
    data, lengths = stack_waves([np.zeros(0, np.float32) if w is None else w for w in waves])
    lengths[[i for i in range(n) if waves[i] is None]] = data.shape[1]  # failed rows: zeros of the common width
    return Rows(task.first, data, nonfinite, tuple(errors), lengths)


def _human(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"could not decode audio: {text}"


_WORKER: tuple[Preprocess, str] | None = None


def _worker_init(pre: Preprocess, output: str) -> None:
    global _WORKER
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides how to stop
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    _WORKER = (pre, output)


def _worker_run(task: DecodeTask) -> Rows:
    assert _WORKER is not None
    return decode_task(task, *_WORKER)


class WorkerPool:
    """Decode/front-end worker processes, spawned on construction so their start-up (importing torch,
    ~2.5 s on 2 cores) overlaps the caller's discovery and model loading; ``workers <= 0``: in-process."""

    def __init__(self, pre: Preprocess, workers: int, output: str = "features"):
        self.pre, self.workers, self.output, self.pool = pre, int(workers), output, None
        if self.workers > 0:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # never fork a process that holds torch/OpenMP threads
            self.pool = ctx.Pool(self.workers, initializer=_worker_init, initargs=(pre, output))

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def results(self, tasks: Iterable[DecodeTask]) -> Iterator[Rows]:
        """Task results in task order; at most ``2 * workers`` tasks in flight (bounded memory)."""
        if self.pool is None:
            for t in tasks:
                yield decode_task(t, self.pre, self.output)
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

    With a GPU the CPU only decodes and resamples (the GPU runs the rest), and the GPU waits for it:
    every core but one (the main process feeds the GPU). On a CPU the model's threads already use every
    core: a worker only competes with them (measured on 2 cores, base384 fp32: 0.91-0.99x of in-process
    decoding), so one worker from 4 cores up, else none.
    """
    cores = cores or os.cpu_count() or 1
    if device == "cpu":
        return 1 if cores >= 4 else 0
    return max(0, cores - 1)
