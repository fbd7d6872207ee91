"""Ray's console output routed into ``monitor.log``; the processes of a Ray the engine started, ended with it.

Ray writes to the driver's console in three ways, all routed while the engine is open (``RayConsole``):

- its Python loggers (``ray``, ``ray.data``: the token-auth notice, Ray Data's progress notes): to
  monitor's log files only (``logs.files_only``);
- the cluster's error messages, which its driver thread prints to stdout with colour codes (``(raylet)
  Raylet is terminated ...`` and its 20-line state dump when a node dies, ``(raylet) A worker died ...``
  when an actor does): each line to the log (logger ``ray.console``), colour codes removed;
- its C++ core in this process, which writes ERROR lines straight to file descriptor 2 (``[2026-12-04
  15:17:25,513 E 15350 15350] core_worker.cc:2465: Actor with class name ... max_restarts > 0``, at every
  actor pool Ray Data starts with restarts on): ``CoreStderr`` passes descriptor 2 through a pipe while
  the engine is open; lines of that form go to the log (logger ``ray.core``), every other byte on to the
  real stderr as it comes. Python's own ``sys.stderr`` is pointed at the real stderr meanwhile (so a
  terminal is still seen as one, and the progress bar does not go through the pipe). The same lines are
  in Ray's session folder (``python-core-driver-*.log``), which the log names;
- a ``\x1b[0m`` written to a terminal at exit (colorama's reset, which Ray's CLI logger registers): dropped.

Node and actor losses become one ``monitor: warning:`` line each from the engine (``ray_cluster.Watch``,
``RayEngine.run``), not Ray's text.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import re
import select
import sys
import threading
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


CORE_LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z] \d+ \d+\] ")
CORE_HEAD = 64  # bytes that decide whether a line is one of the core's: its "[date time,ms L pid tid] "
CORE_WAIT_MAX = 1 << 20  # a core line longer than this without its newline is passed on as it is


class CoreStderr:
    """File descriptor 2 through a pipe from ``start()`` to ``stop()``: the lines Ray's C++ core writes there
    (``CORE_LINE``) go to the log, every other byte on to the real stderr as it comes (module docstring)."""

    core_log = logging.getLogger("ray.core")
    active = False  # one at a time in a process (a second engine open at once leaves descriptor 2 to the first)

    def __init__(self) -> None:
        self._real: int | None = None
        self._read: int | None = None
        self._thread: threading.Thread | None = None
        self._py_stderr: Any = None
        self._wrapper: Any = None

    def start(self) -> None:
        if self._real is not None or CoreStderr.active:
            return
        try:
            sys.stderr.flush()
            real = os.dup(2)
            r, w = os.pipe()
            os.dup2(w, 2)
            os.close(w)
        except OSError as exc:  # no descriptor 2 (a service), or none left: Ray's core lines stay where they go
            log.info("Ray's core lines on stderr are not routed: %s", exc)
            return
        self._real, self._read = real, r
        CoreStderr.active = True
        try:
            uses_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):  # a notebook's or a test's stderr: not descriptor 2
            uses_fd2 = False
        if uses_fd2:  # Python's stderr straight to the real one (still a terminal where it was one)
            self._py_stderr = sys.stderr
            self._wrapper = io.TextIOWrapper(io.FileIO(os.dup(real), "w"), encoding=sys.stderr.encoding,
                                             errors=sys.stderr.errors, line_buffering=True)
            sys.stderr = self._wrapper
        self._thread = threading.Thread(target=self._pump, name="monitor-ray-stderr", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._real is None:
            return
        if self._py_stderr is not None:
            wrapper, self._py_stderr, original = self._wrapper, None, self._py_stderr
            wrapper.flush()
            if sys.stderr is wrapper:  # (unless someone replaced it meanwhile: theirs stays)
                sys.stderr = original
            wrapper.close()
        os.dup2(self._real, 2)  # the pipe's last writer closes: the pump reads what is left, then EOF
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # another process holds the pipe: the pump keeps its descriptors
                log.info("the stderr pump did not finish within 5 s (another process holds the pipe)")
                self._real = self._thread = None
                CoreStderr.active = False
                return
        os.close(self._real)
        self._real = self._thread = None
        CoreStderr.active = False

    def _pump(self) -> None:
        buf, start = b"", True  # ``start``: buf begins a line
        r, real = self._read, self._real
        try:
            while True:
                ready, _, _ = select.select([r], [], [], 0.2 if buf else None)
                chunk = os.read(r, 65536) if ready else b""
                if ready and not chunk:
                    break
                buf += chunk
                buf, start = self._route(buf, start, real, flush=not ready)
        except Exception as exc:  # noqa: BLE001 - never block descriptor 2: say why, then pass everything on
            log.info("routing Ray's core lines stopped (%s: %s); stderr passes through", type(exc).__name__, exc)
            self._passthrough(r, real)
        finally:
            if buf:
                os.write(real, buf)
            os.close(r)

    def _route(self, buf: bytes, start: bool, real: int, flush: bool) -> tuple[bytes, bool]:
        """Sends what ``buf`` holds on (to the log or the real stderr); returns what must wait for more bytes."""
        while buf:
            nl = buf.find(b"\n")
            maybe_core = CORE_LINE.match(buf) or (len(buf) < CORE_HEAD and buf.startswith(b"["))
            if start and nl < 0 and not flush and maybe_core and len(buf) < CORE_WAIT_MAX:
                return buf, start  # a core line, or maybe one: wait for its end (flush: 0.2 s without new bytes)
            line, rest = (buf, b"") if nl < 0 else (buf[:nl + 1], buf[nl + 1:])
            if start and CORE_LINE.match(line):
                self.core_log.warning("%s", line.decode("utf-8", "replace").rstrip())
            else:
                os.write(real, line)
            buf, start = rest, nl >= 0
        return b"", start

    @staticmethod
    def _passthrough(r: int, real: int) -> None:
        while chunk := os.read(r, 65536):
            os.write(real, chunk)


def _no_colour_reset() -> None:
    """Ray's CLI logger calls ``colorama.init()`` when imported, which makes the process write ``\x1b[0m``
    to a terminal at exit (an ``atexit`` reset): monitor writes no colours, so that handler is dropped."""
    colorama = sys.modules.get("colorama")
    reset = getattr(getattr(colorama, "initialise", None), "reset_all", None)
    if reset is not None:
        atexit.unregister(reset)


class RayConsole:
    """Routes Ray's console output (module docstring) from ``install()`` (Python) and ``install_core()`` (the
    C++ core's lines, once Ray runs in this process) to ``uninstall()``."""

    def __init__(self) -> None:
        self._worker_mod: Any = None
        self._saved: Any = None
        self.core = CoreStderr()

    def install_core(self) -> None:
        self.core.start()
        _no_colour_reset()

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
        self.core.stop()
        _no_colour_reset()
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


def is_ray_process(p) -> bool:
    """A process of Ray's: its binaries and scripts live in the ray package; its workers are titled ``ray::``."""
    import ray

    home = os.path.dirname(ray.__file__)
    try:
        cmd = p.cmdline()
    except Exception as exc:  # noqa: BLE001 - gone already, or not ours to read: not one to wait for
        log.debug("process %s: %s", getattr(p, "pid", "?"), exc)
        return False
    return any(c.startswith("ray::") or home in c for c in cmd)
