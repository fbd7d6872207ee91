"""Ray's console output routed into ``monitor.log``; the processes of a Ray the engine started, ended with it.

Ray writes to the driver's console in three ways, all routed while the engine is open (``RayConsole``):

- its Python loggers (``ray``, ``ray.data``: the token-auth notice, Ray Data's progress notes): to
  monitor's log files only (``logs.files_only``);
- the cluster's error messages, which its driver thread prints to stdout with colour codes (``(raylet)
  Raylet is terminated ...`` and its 20-line state dump when a node dies, ``(raylet) A worker died ...``
  when an actor does): each line to the log (logger ``ray.console``), colour codes removed;
- its C++ core in this process, which writes ERROR lines to file descriptor 2 (``core_worker.cc:... Actor
  with class name ...``): the engine does not ask for what triggers that line (its actors are not
  restarted by Ray, see ``ray_engine``), and the same lines are in Ray's session folder
  (``python-core-driver-*.log``), which the log names.

Node and actor losses become one ``monitor: warning:`` line each from the engine (``ray_cluster.Watch``,
``RayEngine.run``), not Ray's text.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from monitor.logs import files_only

log = logging.getLogger(__name__)
console_log = logging.getLogger("ray.console")  # under "ray": files only

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """Stands in for ``ray._private.worker.print_to_stdstream``: the lines go to the log, not the console."""
    who = data.get("pid", "?")
    level = logging.WARNING if who == "raylet" or data.get("is_err") else logging.INFO
    for line in data.get("lines", []):
        console_log.log(level, "(%s) %s", who, ANSI.sub("", str(line)))


class RayConsole:
    """Routes Ray's console output (module docstring) from ``install()`` to ``uninstall()``."""

    def __init__(self) -> None:
        self._worker_mod: Any = None
        self._saved: Any = None

    def install(self) -> None:
        files_only(("ray", "ray.data"))
        if self._saved is not None:
            return
        try:
            import ray._private.worker as worker_mod
        except ImportError as exc:
            log.info("Ray's error messages stay on the console: %s", exc)
            return
        if not callable(getattr(worker_mod, "print_to_stdstream", None)):
            log.info("Ray's error messages stay on the console: this Ray has no print_to_stdstream")
            return
        if worker_mod.print_to_stdstream is _to_log:  # another engine of this process routes them already
            return
        self._worker_mod, self._saved = worker_mod, worker_mod.print_to_stdstream
        worker_mod.print_to_stdstream = _to_log

    def uninstall(self) -> None:
        if self._saved is not None:
            self._worker_mod.print_to_stdstream = self._saved
            self._worker_mod = self._saved = None


def descendants() -> list:
    """This process's descendants (``psutil.Process``; Ray depends on psutil), or [] where it cannot tell."""
    try:
        import psutil

        return psutil.Process(os.getpid()).children(recursive=True)
    except Exception as exc:  # noqa: BLE001 - no psutil or no /proc: nothing to wait for, say why in the log
        log.debug("cannot list this process's children (%s: %s)", type(exc).__name__, exc)
        return []


def reap(procs: list, timeout_s: float = 10.0) -> None:
    """After ``ray.shutdown()`` of a Ray this process started: wait for its processes (``procs``, listed
    before the shutdown) to exit, and end the ones still there after ``timeout_s`` (by PID: only these)."""
    if not procs:
        return
    import psutil

    t0 = time.monotonic()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    log.debug("%d of Ray's %d processes ended %.1f s after its shutdown", len(procs) - len(alive), len(procs),
              time.monotonic() - t0)
    for p in alive:
        try:
            log.info("Ray process %d (%s) still there %.0f s after shutdown: ending it", p.pid, p.name(),
                     time.monotonic() - t0)
            p.kill()
        except psutil.Error as exc:
            log.debug("Ray process %d: %s", p.pid, exc)
    if alive:
        psutil.wait_procs(alive, timeout=5)
