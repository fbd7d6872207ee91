"""One Ray Data execution of the Ray engine, consumed by a thread so that the engine's loop can watch the
cluster while it waits for batches (``ray_cluster.Watch``), and stopped from that loop when the run ends
early (a stall, an error, Ctrl-C)."""

from __future__ import annotations

import logging
import pickle
import queue
import threading
import time
from typing import Iterator

from monitor.errors import MonitorError
from monitor.plan import BatchScores
from monitor.ray_cluster import WATCH_TICK_S, Watch

log = logging.getLogger(__name__)


def ray_fault_errors(ray) -> tuple[type[BaseException], ...]:
    """Ray's errors for work lost with a node, an actor or an object (not the user's code's errors)."""
    e = ray.exceptions
    return (e.RayActorError, e.ObjectLostError, e.NodeDiedError, e.WorkerCrashedError)


def fault_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class Stream:
    """One Ray Data execution, consumed by a thread into a queue: ``results(watch)`` yields ``BatchScores``
    (with whether a restarted actor scored it) and ticks the watch while it waits (raising its one-line error once the run is stalled); ``close()``
    ends the execution if it still runs (its actors are released)."""

    def __init__(self, ds) -> None:
        self.q: queue.Queue = queue.Queue()
        self.executors: list = []
        self._closing = threading.Event()
        create = getattr(ds, "_create_executor", None)
        if callable(create):  # keep a handle on Ray Data's executor, to stop it from here (Ray pinned < 2.61)
            def capture():
                ex = create()
                self.executors.append(ex)
                return ex

            ds._create_executor = capture
        else:
            log.info("this Ray Data has no Dataset._create_executor: a stopped stream ends with Ray's shutdown")
        self.thread = threading.Thread(target=self._consume, args=(ds,), name="monitor-ray-stream", daemon=True)
        self.thread.start()

    def _consume(self, ds) -> None:
        try:
            for row in ds.iter_rows():
                if self._closing.is_set():
                    return
                self.q.put(("row", (row["scores"], bool(row.get("restarted", False)))))
            self.q.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the engine's loop, which raises it there
            self.q.put(("error", exc))

    def results(self, watch: Watch) -> Iterator[tuple[BatchScores, bool]]:
        """``(BatchScores, restarted)`` as they arrive (restarted: the first batch of an actor Ray restarted)."""
        last_tick = time.monotonic()
        while True:
            try:
                kind, val = self.q.get(timeout=WATCH_TICK_S)
            except queue.Empty:
                kind, val = "wait", None
            if kind == "row":
                watch.batch()
            if kind == "wait" or time.monotonic() - last_tick >= WATCH_TICK_S:
                last_tick = time.monotonic()
                watch.tick()
                if watch.stalled:
                    raise MonitorError(watch.stalled)
            if kind == "row":
                yield pickle.loads(val[0]), val[1]
            elif kind == "end":
                return
            elif kind == "error":
                raise val

    def close(self) -> None:
        self._closing.set()
        if not self.thread.is_alive():
            return
        for ex in self.executors:
            try:
                ex.shutdown(force=True)
            except Exception as exc:  # noqa: BLE001 - Ray's shutdown below ends it anyway; say why in the log
                log.info("stopping the Ray Data execution: %s: %s", type(exc).__name__, exc)
        self.thread.join(timeout=30)
        if self.thread.is_alive():
            log.info("the Ray Data stream did not stop within 30 s; it ends with Ray's shutdown")
