"""How far a run is, for whoever watches it: a bar on a terminal, lines everywhere else.

``score_planned`` (``pipeline.py``) drives one ``Progress`` for either engine: ``segments(n)`` as batches
are scored, ``file_done()`` as files are committed, ``close()`` at the end. On a terminal (or with
``progress=True``) it draws a tqdm bar. Without one (batch jobs, ``nohup``, a cluster's job log) it prints
a line now and then (``monitor: progress: 5/12 files, 30/72 segments (42%), 35x realtime, ETA 0:12``):
every ``every_s`` seconds, and at each ``STEP_PCT`` percent when at least ``MIN_GAP_S`` seconds passed
since the last line (a run shorter than that prints none), and a last one at the end where any was printed.
Every such line also goes to ``monitor.log``, bar or not. ``progress=False`` (the API's quiet mode) shows nothing on the console and still logs.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from monitor.config import PROGRESS_EVERY_S
from monitor.logs import set_console_writer

log = logging.getLogger(__name__)

STEP_PCT = 10.0  # ... and at each 10 % of the segments
MIN_GAP_S = 10.0  # ... but never two lines closer than this (short runs print none)


def _clock(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class Progress:
    """The run's counters and how they are shown (see the module docstring).

    ``total_segments``/``total_files``: what this run scores; ``hop_s``: audio seconds per segment (for the
    realtime factor); ``bar``: None = a bar only on a terminal, lines otherwise; True = a bar; False = no
    console output; ``every_s``: seconds between lines (0: no lines, only the bar if any).
    """

    total_segments: int
    total_files: int
    hop_s: float
    bar: bool | None = None
    every_s: float = PROGRESS_EVERY_S
    stream: Any = None
    clock: Callable[[], float] = time.monotonic
    segments_done: int = 0
    files_done: int = 0
    _t0: float = field(default=0.0, init=False)
    _last_line: float = field(default=0.0, init=False)
    _next_pct: float = field(default=STEP_PCT, init=False)
    _bar: Any = field(default=None, init=False)
    _print_lines: bool = field(default=False, init=False)
    _lines: int = field(default=0, init=False)
    _lines_at: tuple[int, int] = field(default=(0, 0), init=False)

    def __post_init__(self) -> None:
        self.stream = self.stream or sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        show_bar = tty if self.bar is None else bool(self.bar)
        self._print_lines = self.bar is None and not tty and self.every_s > 0
        self._t0 = self._last_line = self.clock()
        if show_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_segments, unit="seg", desc="segments", dynamic_ncols=True,
                             file=self.stream)
            set_console_writer(lambda line: self._bar.write(line, file=self.stream))

    # --- what the run reports --------------------------------------------------------------------

    def segments(self, n: int) -> None:
        """``n`` more segments scored."""
        self.segments_done += n
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix_str(f"{self.realtime():.0f}x realtime")
        self._maybe_line()

    def file_done(self) -> None:
        self.files_done += 1

    def close(self) -> None:
        """The bar closed; where lines were printed, a last one with the final counts."""
        if self._bar is not None:
            set_console_writer(None)
            self._bar.close()
            self._bar = None
        if self._lines and self._lines_at != (self.files_done, self.segments_done):
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what it shows -----------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.clock() - self._t0

    def realtime(self) -> float:
        """Audio seconds scored per wall-clock second so far."""
        return self.segments_done * self.hop_s / max(1e-9, self.elapsed())

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None before the first segment)."""
        if self.segments_done <= 0:
            return None
        rate = self.segments_done / max(1e-9, self.elapsed())
        return max(0, self.total_segments - self.segments_done) / rate

    def line(self) -> str:
        """``5/12 files, 30/72 segments (42%), 35x realtime, ETA 0:12``."""
        pct = 100.0 * self.segments_done / max(1, self.total_segments)
        eta = self.eta_s()
        return (f"{self.files_done}/{self.total_files} files, {self.segments_done}/{self.total_segments} segments "
                f"({pct:.0f}%), {self.realtime():.1f}x realtime, "
                f"ETA {'unknown' if eta is None else _clock(eta)} (elapsed {_clock(self.elapsed())})")

    def _maybe_line(self) -> None:
        if self.every_s <= 0:
            return
        now = self.clock()
        since = now - self._last_line
        pct = 100.0 * self.segments_done / max(1, self.total_segments)
        stepped = pct >= self._next_pct
        if not (since >= self.every_s or (stepped and since >= min(MIN_GAP_S, self.every_s))):
            return
        while self._next_pct <= pct:
            self._next_pct += STEP_PCT
        self._last_line = now
        self._line()

    def _line(self) -> None:
        self._lines += 1
        self._lines_at = (self.files_done, self.segments_done)
        text = f"progress: {self.line()}"
        log.info("%s", text, extra={"said": self._print_lines})
        if self._print_lines:
            print(f"monitor: {text}", file=self.stream, flush=True)
