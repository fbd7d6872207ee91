"""Progress without a terminal (issue 25): lines every N seconds or every 10 % (files, segments, realtime factor,
ETA) on stderr and in the log, for the local engine as for Ray; a bar on a terminal; nothing with progress=False."""

from __future__ import annotations

import io
import logging

import pytest

from monitor.progress import MIN_GAP_S, Progress


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_every_n_seconds_and_every_ten_percent_not_closer_than_the_gap():
    clock, out = Clock(), io.StringIO()
    p = Progress(total_segments=100, total_files=10, hop_s=10.0, every_s=60.0, stream=out, clock=clock)
    clock.t += 1
    p.segments(30)  # 30 %, but 1 s in: too soon
    assert out.getvalue() == ""
    clock.t += MIN_GAP_S
    p.file_done()
    p.segments(1)  # a 10 % step passed and the gap is over
    lines = out.getvalue().splitlines()
    assert lines == ["monitor: progress: 1/10 files, 31/100 segments (31%), 28.2x realtime, ETA 0:24 (elapsed 0:11)"]
    clock.t += 5
    p.segments(1)  # no new 10 % step, not 60 s
    assert len(out.getvalue().splitlines()) == 1
    clock.t += 60
    p.segments(0)  # 60 s since the last line
    assert len(out.getvalue().splitlines()) == 2
    p.close()


def test_a_short_run_prints_no_line_and_eta_before_any_segment_is_unknown():
    clock, out = Clock(), io.StringIO()
    p = Progress(10, 2, 10.0, stream=out, clock=clock)
    assert "ETA unknown" in p.line()
    for _ in range(10):
        clock.t += 0.5
        p.segments(1)
    assert out.getvalue() == ""


def test_lines_go_to_the_log_and_only_without_a_terminal_to_the_console(caplog):
    caplog.set_level(logging.INFO, logger="monitor.progress")
    for stream, bar, printed in [(io.StringIO(), None, True), (io.StringIO(), False, False), (Tty(), None, False)]:
        caplog.clear()
        clock = Clock()
        p = Progress(10, 1, 10.0, bar=bar, every_s=1.0, stream=stream, clock=clock)
        clock.t += 2
        p.segments(5)
        p.close()
        assert ("monitor: progress: 0/1 files, 5/10 segments (50%)" in stream.getvalue()) == printed, stream.getvalue()
        assert [r.getMessage()[:32] for r in caplog.records] == ["progress: 0/1 files, 5/10 segmen"]


def test_say_goes_above_the_bar_while_it_is_shown(capsys):
    from monitor.logs import say

    tty = Tty()
    p = Progress(10, 1, 10.0, stream=tty)
    say("hello")
    p.close()
    say("after")
    assert "monitor: hello" in tty.getvalue()  # written through the bar's stream, not across it
    assert capsys.readouterr().err == "monitor: after\n"


def test_local_engine_run_prints_progress_lines_without_a_terminal(tmp_path, capsys, caplog, wav_writer):
    """``monitor.run`` with the local engine, stderr captured (not a terminal): progress lines and the log."""
    from monitor import run
    from monitor.logs import add_log_file, remove_handler

    caplog.set_level(logging.INFO)  # the root logger lets INFO through, as `monitor run` sets it
    card = tmp_path / "card"
    for i in range(3):
        wav_writer(card / f"2024060{i}_210000.WAV", 25.0, 16000, freq_hz=600 + 200 * i, noise=0.05, seed=i)
    out = tmp_path / "out"
    handler = add_log_file(out / "monitor.log")
    try:
        run(card, out, batch_size=2, workers=0, progress_every_s=0.01)
    finally:
        remove_handler(handler)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("monitor: progress: ")]
    assert lines and lines[-1].startswith("monitor: progress: 3/3 files, 9/9 segments (100%)"), err
    assert "progress: 3/3 files, 9/9 segments (100%)" in (out / "monitor.log").read_text()


def test_bad_progress_and_stall_options_fail_in_one_line():
    from monitor.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="--progress-every must be >= 0"):
        RunConfig("in", "out", progress_every_s=-1)
    with pytest.raises(ConfigError, match="--stall-warn must be > 0"):
        RunConfig("in", "out", engine="ray", stall_warn_s=0)
    with pytest.raises(ConfigError, match="--stall-stop must be >= 0"):
        RunConfig("in", "out", engine="ray", stall_stop_s=-5)
    with pytest.raises(ConfigError, match="need --engine ray"):
        RunConfig("in", "out", stall_stop_s=60)
