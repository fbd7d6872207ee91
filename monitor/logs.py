"""Logging, configured once: terse messages on the console, full detail in a log file.

Every module logs through ``logging.getLogger(__name__)``; only this module touches handlers. Third
-party libraries' debug chatter (matplotlib's font manager, PIL, numba, urllib3, filelock, Ray) is
kept out of the user's log files: their loggers are set to WARNING.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

QUIET_LOGGERS = ("matplotlib", "PIL", "numba", "urllib3", "filelock", "fsspec", "asyncio", "h5py", "git",
                 "httpx", "httpcore", "huggingface_hub", "ray", "torch", "timm", "tornado", "traitlets",
                 "nbclient", "nbformat", "jupyter_client")


class _ConsoleFormatter(logging.Formatter):
    """One line per message on the terminal, in one style (``monitor: warning: ...``); tracebacks go only to
    the log file."""

    PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}

    def __init__(self, prefix: str = "monitor: ") -> None:
        super().__init__("%(message)s")
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self.prefix + self.PREFIX.get(record.levelno, "") + super().format(record)


class _NotSaid(logging.Filter):
    """Drops records that ``say``/``error`` already printed (they still reach the log files)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "said", False)


def quiet_third_party() -> None:
    """Third-party loggers at WARNING, so their DEBUG records never reach our handlers."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class _NotFrom(logging.Filter):
    """Drops records of the named loggers (and their children)."""

    def __init__(self, names) -> None:
        super().__init__()
        self.names = tuple(names)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == n or record.name.startswith(n + ".") for n in self.names)


def files_only(names=("ray", "ray.data"), level: int = logging.INFO) -> None:
    """Records of these loggers (Ray's, by default) go to monitor's log files only, never the console: their
    own handlers are removed, they propagate to the root, and the root's console handlers drop them."""
    root = logging.getLogger()
    for name in names:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
        lg.setLevel(level)
    for h in root.handlers:
        if not isinstance(h, logging.FileHandler) and not any(isinstance(f, _NotFrom) and set(names) <= set(f.names)
                                                              for f in h.filters):
            h.addFilter(_NotFrom(names))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def listing(items: list[str], shown: int = 5) -> str:
    """The first ``shown`` items and how many more."""
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


_console_writer: Callable[[str], None] | None = None


def set_console_writer(writer: Callable[[str], None] | None) -> None:
    """While a progress bar is on the terminal (``progress.Progress``), ``say``/``warn``/``error`` lines go
    through ``writer`` (the bar's own ``write``: above the bar, not through it); ``None``: plain stderr again."""
    global _console_writer
    _console_writer = writer


def _print(line: str) -> None:
    writer = _console_writer
    if writer is not None:
        writer(line)
    else:
        print(line, file=sys.stderr, flush=True)


def say(msg: str) -> None:
    """A line for the person running the job (stderr, beside the progress bar, ``monitor: ...``) and the log."""
    logging.getLogger("monitor").info("%s", msg, extra={"said": True})
    _print(f"monitor: {msg}")


def error(msg: str) -> None:
    """A whole-run failure in one line (``monitor: error: ...`` on stderr), also in the log files."""
    logging.getLogger("monitor").error("%s", msg, extra={"said": True})
    _print(f"monitor: error: {msg}")


def warn(msg: str) -> None:
    """A warning for the person running the job (``monitor: warning: ...``) and the log; above the progress
    bar while one is shown."""
    if _console_writer is not None:
        logging.getLogger("monitor").warning("%s", msg, extra={"said": True})
        _print(f"monitor: warning: {msg}")
    else:
        logging.getLogger("monitor").warning("%s", msg)


def setup_logging(verbosity: int = 0, log_file: Path | None = None, stream=None) -> None:
    """Configure the root logger once: WARNING (``-v`` INFO, ``-vv`` DEBUG) on ``stream`` (stderr),
    everything from DEBUG in ``log_file`` if given."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    console = logging.StreamHandler(stream or sys.stderr)
    console.setLevel(logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    console.setFormatter(_ConsoleFormatter())
    console.addFilter(_NotSaid())
    root.addHandler(console)
    quiet_third_party()
    if log_file is not None:
        add_log_file(log_file)


def set_console_level(level: int) -> None:
    """Set the terminal handler's level (``monitor train`` shows INFO, per-epoch metrics, without ``-v``)."""
    for h in logging.getLogger().handlers:
        if type(h) is logging.StreamHandler and not getattr(h, "_monitor_notebook", False):
            h.setLevel(level)


def log_file_handler(path: Path) -> logging.Handler | None:
    """The handler already writing to ``path``, if any."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == Path(path).resolve():
            return h
    return None


def add_log_file(path: Path) -> logging.Handler | None:
    """Send full detail (tracebacks included) to ``path``; returns the handler, or None when the file
    cannot be opened (a read-only or full output folder: the caller reports that in one line)."""
    path = Path(path)
    h = log_file_handler(path)
    if h is not None:  # once per file
        return h
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(fh)
    quiet_third_party()
    return fh


def remove_handler(handler: logging.Handler | None) -> None:
    """Detach and close a handler from :func:`add_log_file` (notebooks run many jobs in one process)."""
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def notebook_logging(level: int = logging.INFO) -> None:
    """In Jupyter / Colab: INFO messages (per-epoch metrics, run summaries) shown in the cell output."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if not any(getattr(h, "_monitor_notebook", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setLevel(level)
        h.setFormatter(_ConsoleFormatter(prefix=""))
        h.addFilter(_NotSaid())
        h._monitor_notebook = True  # type: ignore[attr-defined]
        root.addHandler(h)
    quiet_third_party()
