"""Scoring: models prepared for a device and precision, and the one ``Scorer`` of ``monitor run`` and of
training's validation.

A segment's score never depends on its batch-mates (batches zero-padded to one shape; int8 one
segment per call), so runs with 0 or N workers, resumed runs and any engine that follows the same
plan give bit-identical scores on a CPU. On a GPU, host batches go through pinned buffers, are copied
on a side stream without blocking, and the next batch is prepared while the model runs: the host waits
once per batch, for its scores. ``score_planned`` scores planned batches on one device, or on several
with one thread per device.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from monitor.config import Preprocess
from monitor.device import autocast_dtype, resolve_precision
from monitor.errors import MonitorError
from monitor.frontend import front_end
from monitor.int8 import prepare_int8
from monitor.plan import BatchScores, Rows, slice_rows

log = logging.getLogger(__name__)

AUTO_BATCH_CPU = 16  # --batch-size auto on a CPU: the speed is flat from 2 to 16 (base384, 2 cores)
AUTO_BATCH_CAP = 256  # --batch-size auto on a GPU: at most this many segments per batch


def prepare_models(bundles: Sequence, device: str, precision: str, compile: bool = False) -> tuple[list, str]:
    """Build each bundle's model for ``device``; returns (models, resolved precision).

    ``compile``: ``torch.compile`` each model (one static shape: batches are padded to one size).
    ``int8``: ``monitor.int8.prepare_int8`` (ONNX Runtime when installed, else torch's own).
    """
    import torch


    precision = resolve_precision(precision, device)
    if compile and precision == "int8":
        raise MonitorError("--compile does not apply to --precision int8; drop one of them")
    models = []
    for b in bundles:
        m = b.build_model(device="cpu")
        if precision == "int8":  # ONNX Runtime with monitor[int8], else torch's dynamic quantisation
            m, _ = prepare_int8(b, m, torch.get_num_threads())
        m = m.to(device).eval()
        if compile:
            m = torch.compile(m, dynamic=False)
        models.append(m)
    return models, precision


@dataclass
class _Pending:
    """A submitted batch: its scores are ready (``done``) or will be in ``out[:n]`` once ``event`` fires;
    with embeddings kept, likewise ``emb_done`` / ``emb_out`` (float16)."""

    n: int
    done: np.ndarray | None = None
    out: Any = None
    event: Any = None
    emb_done: np.ndarray | None = None
    emb_out: Any = None


class Scorer:
    """Batches through an ensemble on one device; scores are the mean of the members' probabilities.

    ``tasks``: per model, ``multilabel`` (sigmoid) or ``multiclass`` (softmax over labels). The one
    scorer of ``monitor run`` and of training's validation (``Scorer.for_model``). ``pre``: the front
    end for batches of 16 kHz waves (``frontend.FrontEnd`` on this device); features need none.

    ``scorer(feats)`` scores synchronously. ``submit(rows)`` / ``collect(pending)`` is the pipelined
    form: on CUDA, ``submit`` fills a pinned host buffer, copies it on a side stream without blocking
    and queues the front end and the model; ``collect`` waits for that batch's scores (the one host
    sync per batch), so the caller prepares the next batch while the GPU works.
    """

    def __init__(self, bundles: Sequence, models: Sequence, device: str, precision: str, batch_size: int,
                 tasks: Sequence[str] | None = None, pre: Preprocess | None = None, embeddings: bool = False):
        import torch

        self.models = list(models)
        self.tasks = list(tasks) if tasks is not None else [b.task for b in bundles]
        self.device, self.precision, self.batch_size = str(device), precision, int(batch_size)
        self.pre = pre if pre is not None else (bundles[0].preprocessing if len(bundles) else None)
        self._dev = torch.device(self.device)
        self._cuda = self._dev.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self._dev) if self._cuda else None
        self._pinned: dict[str, list] = {}
        self._turn = 0
        self.head = None  # embeddings: one backbone pass gives the embedding, its float16 copy gives the scores
        if embeddings:
            from monitor.model.head import Head

            if len(self.models) != 1 or precision == "int8":
                raise MonitorError("--embeddings needs one model (not an ensemble) and a precision other than int8")
            self.head = Head.from_module(self.models[0].mlp_head, self._dev)

    @classmethod
    def for_model(cls, model, task: str, device: str, precision: str, batch_size: int) -> "Scorer":
        """A scorer for one bare model (training's validation), scoring exactly as ``monitor run`` does."""
        return cls((), [model], device, precision, batch_size, tasks=[task])

    # the forward pass, shared by every entry point
    def _forward(self, x) -> list:
        """``x`` (batch_size, T, F) on the device -> per model, float32 logits (batch_size or n rows)."""
        import torch


        out = []
        for m in self.models:
            if self.precision == "int8":  # one segment per call: dynamic quantisation's range is per input
                logits = torch.cat([m(x[i:i + 1]) for i in range(x.shape[0])])
            elif autocast_dtype(self.precision) is not None:
                with torch.autocast(self._dev.type, dtype=autocast_dtype(self.precision)):
                    logits = m(x)
            else:
                logits = m(x)
            out.append(logits.float())
        return out

    def _forward_embed(self, x) -> tuple[Any, Any]:
        """``x`` on the device -> (float32 scores, float16 embeddings) from one backbone pass: the pooled embedding
        rounded to float16 (as stored), then ``Head.scores`` in float64 (as ``monitor report --rescore`` scores)."""
        import torch

        m = self.models[0]
        dtype = autocast_dtype(self.precision)
        amp = contextlib.nullcontext() if dtype is None else torch.autocast(self._dev.type, dtype=dtype)
        with amp:
            pooled = m.forward_head(m.forward_features(x), pre_logits=True)
        emb = pooled.float().half()
        return self.head.scores(emb, self.tasks[0]), emb

    def logits(self, feats: np.ndarray):
        """``feats`` (n <= batch_size, T, F) -> per model, float32 logits ``(n, labels)`` on the CPU."""
        import torch

        n = feats.shape[0]
        with torch.inference_mode():
            x = self._features_on_device(Rows(0, feats, np.zeros(n, np.int64), ("",) * n))
            return [lg[:n].cpu() for lg in self._forward(x)]

    def embed(self, feats: np.ndarray) -> list:
        """``feats`` (n, T, F) features or (n, samples) 16 kHz waves, any n -> per model, float32 embeddings
        ``(n, width)`` on the CPU: ``m.forward_head(m.forward_features(x), pre_logits=True)`` (timm's names; for
        an AST the pooled tokens ``mlp_head`` sees). As ``logits`` computes: in zero-padded batches of
        ``batch_size`` (int8: one segment per call), the same device and autocast, so an embedding never
        depends on its batch-mates."""
        import torch

        dtype = None if self.precision == "int8" else autocast_dtype(self.precision)
        parts: list[list] = [[] for _ in self.models]
        with torch.inference_mode():
            for k in range(0, feats.shape[0], self.batch_size):
                n = min(self.batch_size, feats.shape[0] - k)
                x = self._features_on_device(Rows(0, feats[k:k + n], np.zeros(n, np.int64), ("",) * n))
                step = 1 if self.precision == "int8" else x.shape[0]
                for out, m in zip(parts, self.models):
                    amp = contextlib.nullcontext() if dtype is None else torch.autocast(self._dev.type, dtype=dtype)
                    with amp:
                        e = torch.cat([m.forward_head(m.forward_features(x[i:i + step]), pre_logits=True)
                                       for i in range(0, x.shape[0], step)])
                    out.append(e[:n].float().cpu())
        return [torch.cat(p) if p else torch.zeros((0, getattr(m, "num_features", 0)))
                for p, m in zip(parts, self.models)]

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """``feats`` (n <= batch_size, T, F) -> scores (n, labels).

        A segment's score never depends on its batch-mates, so a resumed run equals an uninterrupted
        one: fp32/bf16 batches are zero-padded to ``batch_size`` (one shape, one kernel choice), and
        int8 runs one segment per call, because dynamic quantisation takes its activation range from
        the whole input (batch-mates moved logits by up to 0.07); on a CPU it is also the fastest.
        """
        n = feats.shape[0]
        return self.collect(self.submit(Rows(0, feats, np.zeros(n, np.int64), ("",) * n)))

    # host -> device
    def _buffer(self, kind: str, shape: tuple[int, ...], dtype: Any = None):
        """A contiguous ``shape`` view of the next of two pinned host buffers of ``kind`` (grown when too
        small). A buffer is reused two batches later, after ``collect`` of its batch: its copy has finished."""
        import torch

        bufs = self._pinned.setdefault(kind, [None, None])
        k = self._turn % 2
        need = int(np.prod(shape))
        if bufs[k] is None or bufs[k].numel() < need:
            bufs[k] = torch.empty(need, dtype=dtype or torch.float32, pin_memory=True)
        return bufs[k][:need].view(shape)

    def _to_device(self, host):
        """A pinned host tensor -> the device, copied on the side stream; the compute stream waits for it."""
        import torch

        with torch.cuda.stream(self._copy_stream):
            dev = host.to(self._dev, non_blocking=True)
        cur = torch.cuda.current_stream(self._dev)
        cur.wait_stream(self._copy_stream)
        dev.record_stream(cur)
        return dev

    def _features_on_device(self, rows: Rows):
        """Rows (features, or 16 kHz waves) -> ``(batch_size, T, F)`` features on the device, rows past
        ``n`` zero; int8 gets exactly ``n`` rows."""
        import torch

        n = rows.n
        pad = n if self.precision == "int8" else max(n, self.batch_size)
        data = torch.from_numpy(np.ascontiguousarray(rows.data, dtype=np.float32))
        if rows.data.ndim == 2:  # waves: the front end runs here, on the real rows only
            if self.pre is None:
                raise ValueError("a scorer given waves needs the front end's settings (pre)")
            fb = self.pre.fbank
            if self._cuda:
                host = self._buffer("waves", tuple(data.shape))
                host.copy_(data)
                data = self._to_device(host)
            out = torch.zeros((pad, fb.target_frames, fb.num_mel_bins), dtype=torch.float32, device=self._dev)
            lengths = rows.lengths if rows.lengths is not None else [data.shape[1]] * n
            return front_end(self.pre, self.device)(data, lengths, out=out)
        if not self._cuda:
            if pad == n:
                return data
            x = torch.zeros((pad, *data.shape[1:]), dtype=torch.float32)
            x[:n] = data
            return x
        host = self._buffer("features", (pad, *data.shape[1:]))
        host[:n].copy_(data)
        if pad > n:
            host[n:].zero_()
        return self._to_device(host)

    def _probabilities(self, logits: list):
        """Per-model logits -> the ensemble's mean probability, float32 (accumulated in float64)."""
        acc = None
        for task, lg in zip(self.tasks, logits):
            p = to_scores(lg, task).double()
            acc = p if acc is None else acc + p
        return (acc / len(logits)).float()

    def submit(self, rows: Rows) -> _Pending:
        """Queue one batch (``rows.n`` may exceed ``batch_size``: it is cut); see the class docstring."""
        import torch

        n = rows.n
        if n > self.batch_size:
            subs = [self.submit(slice_rows(rows, i, min(n, i + self.batch_size))) for i in range(0, n, self.batch_size)]
            parts = [(self.collect(p), self.collect_embeddings(p)) for p in subs]
            emb = np.concatenate([e for _, e in parts]) if self.head is not None else None
            return _Pending(n, done=np.concatenate([s for s, _ in parts]), emb_done=emb)
        try:
            with torch.inference_mode():
                x = self._features_on_device(rows)
                if self.head is not None:
                    probs, emb = self._forward_embed(x)
                else:
                    probs, emb = self._probabilities(self._forward(x)), None
                if not self._cuda:
                    return _Pending(n, done=probs[:n].numpy().copy(),
                                    emb_done=None if emb is None else emb[:n].numpy().copy())
                out = self._buffer("scores", tuple(probs.shape))
                out.copy_(probs, non_blocking=True)
                emb_out = None
                if emb is not None:
                    emb_out = self._buffer("embeddings", tuple(emb.shape), torch.float16)
                    emb_out.copy_(emb, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self._dev))
                self._turn += 1
                return _Pending(n, out=out, event=event, emb_out=emb_out)
        except torch.OutOfMemoryError:
            if self.batch_size == 1:
                raise
            self.batch_size //= 2
            log.warning("%s ran out of memory; batch size halved to %d", self.device, self.batch_size)
            torch.cuda.empty_cache()
            return self.submit(rows)

    def collect(self, p: _Pending) -> np.ndarray:
        """The scores ``(n, labels)`` of a submitted batch (waits for them on a GPU)."""
        if p.done is not None:
            return p.done
        p.event.synchronize()
        return p.out[:p.n].numpy().copy()

    def collect_embeddings(self, p: _Pending) -> np.ndarray | None:
        """The float16 embeddings ``(n, width)`` of a submitted batch (None unless the scorer keeps them)."""
        if p.emb_out is None:
            return p.emb_done
        p.event.synchronize()
        return p.emb_out[:p.n].numpy().copy()

    def probe_batch_size(self, kind: str = "features", cap: int = AUTO_BATCH_CAP, fraction: float = 0.5) -> int:
        """``--batch-size auto``: 16 on a CPU; on a GPU the largest power of two whose measured memory
        (a trial batch of 4 through the front end and the model) fits ``fraction`` of the free memory,
        at most ``cap``. Out of memory later still halves it (``submit``)."""
        import torch

        if not self._cuda:
            return AUTO_BATCH_CPU
        fb = self.pre.fbank if self.pre is not None else None
        trial = 4
        if kind == "waves":
            if self.pre is None:
                raise ValueError("probing waves needs the front end's settings (pre)")
            width = int(round(self.pre.segment.window_s * self.pre.resample.sample_rate_hz))
            data = np.zeros((trial, width), np.float32)
            rows = Rows(0, data, np.zeros(trial, np.int64), ("",) * trial, np.full(trial, width))
        else:
            t, f = (fb.target_frames, fb.num_mel_bins) if fb is not None else (1024, 128)
            rows = Rows(0, np.zeros((trial, t, f), np.float32), np.zeros(trial, np.int64), ("",) * trial)
        keep = self.batch_size
        self.batch_size = trial
        torch.cuda.synchronize(self._dev)
        base = torch.cuda.memory_allocated(self._dev)
        torch.cuda.reset_peak_memory_stats(self._dev)
        self.collect(self.submit(rows))
        per = max(1, torch.cuda.max_memory_allocated(self._dev) - base) / trial
        free, _ = torch.cuda.mem_get_info(self._dev)
        self.batch_size = keep
        fit = int(fraction * free / per)
        size = 1 << max(0, min(cap, max(1, fit)).bit_length() - 1)
        log.info("batch size auto on %s: %d (%.0f MB per segment, %.0f GB free)", self.device, size, per / 2**20,
                 free / 2**30)
        return size


def to_scores(logits, task: str):
    """Logits (..., labels) -> probabilities: sigmoid (multilabel) or softmax over labels (multiclass)."""
    import torch

    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)


# --- scoring planned batches on one or more devices ---------------------------------------------------

def score_planned(batches: Iterable[tuple[int, Rows]], scorers: Sequence[Scorer]) -> Iterator[BatchScores]:
    """Score planned batches; yields ``BatchScores`` (in batch order with one scorer; in finishing order
    with several, one thread per scorer). Each scorer keeps one batch in flight while the next is prepared."""
    if len(scorers) == 1:
        s = scorers[0]
        pending = None
        for b, rows in batches:
            p = (b, rows, s.submit(rows))
            if pending is not None:
                yield _scored(pending, s)
            pending = p
        if pending is not None:
            yield _scored(pending, s)
        return
    yield from _score_threaded(batches, scorers)


def _scored(p, s: Scorer) -> BatchScores:
    b, rows, pend = p
    return BatchScores(b, rows.first, s.collect(pend), rows.nonfinite, rows.errors, s.collect_embeddings(pend))


_DONE = object()


def _score_threaded(batches: Iterable[tuple[int, Rows]], scorers: Sequence[Scorer]) -> Iterator[BatchScores]:
    """One thread per scorer (device) pulling batches from a shared bounded queue."""
    inq: queue.Queue = queue.Queue(maxsize=2 * len(scorers))
    outq: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work(s: Scorer) -> None:
        import torch

        try:
            if s._cuda:
                torch.cuda.set_device(s._dev)
            pending = None
            while not stop.is_set():
                item = inq.get()
                if item is _DONE:
                    break
                b, rows = item
                p = (b, rows, s.submit(rows))
                if pending is not None:
                    outq.put(_scored(pending, s))
                pending = p
            if pending is not None and not stop.is_set():
                outq.put(_scored(pending, s))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outq.put(exc)
        finally:
            outq.put(_DONE)

    threads = [threading.Thread(target=work, args=(s,), daemon=True, name=f"scorer-{s.device}") for s in scorers]
    for t in threads:
        t.start()
    alive = len(threads)

    def drain(block: bool) -> Iterator[BatchScores]:
        nonlocal alive
        while alive:
            try:
                item = outq.get(block=block, timeout=None if block else 0)
            except queue.Empty:
                return
            if item is _DONE:
                alive -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    try:
        for item in batches:
            while True:
                try:
                    inq.put(item, timeout=0.05)
                    break
                except queue.Full:
                    yield from drain(block=False)
                    if not alive:
                        raise RuntimeError("every scoring thread stopped")
            yield from drain(block=False)
        for _ in threads:
            inq.put(_DONE)
        yield from drain(block=True)
    finally:
        stop.set()
        for _ in threads:  # unblock any thread waiting for work
            try:
                inq.put_nowait(_DONE)
            except queue.Full:
                pass
        for t in threads:
            t.join(timeout=30)
