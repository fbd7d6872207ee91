"""``monitor run --engine ray`` as a user runs it without a terminal (issue 25): Ray says nothing on the console,
progress comes as lines, the run leaves no Ray process behind, and a stalled run is stopped by the watch in one
line that says how to resume. Real local Ray instances started by the command itself.

Skipped without ``ray`` (``pip install 'monitor[ray]'``).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the Ray engine's tests need ray: pip install 'monitor[ray]'")

from test_ray_engine import _big_card, _console_is_monitors, _done_files, _env, _faulty  # noqa: E402


def _run_watching(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, list, float]:
    """Run ``cmd``; also returns every process it had as a descendant (polled) and its wall time."""
    import psutil

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    seen: dict[int, psutil.Process] = {}
    try:
        me = psutil.Process(proc.pid)
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            try:
                for c in me.children(recursive=True):
                    if c.pid not in seen:
                        seen[c.pid] = c
                        try:
                            c.monitor_cmdline = " ".join(c.cmdline())  # type: ignore[attr-defined]
                        except psutil.Error:  # gone between the listing and the reading
                            c.monitor_cmdline = ""  # type: ignore[attr-defined]
            except psutil.Error:  # the command itself exited between poll() and here: the loop ends
                continue
            time.sleep(0.2)
        out, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), list(seen.values()), time.monotonic() - t0


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    """One normal ``monitor run --engine ray`` (a local Ray instance), stdout and stderr captured (no terminal),
    a progress line every second at most."""
    root = tmp_path_factory.mktemp("quiet")
    card = _big_card(root / "CARD", 8, 60.0)
    out = root / "out"
    res, procs, wall = _run_watching(_faulty(["--decode-delay", "1"], "run", str(card), "--out", str(out), "--engine",
                                             "ray", "--batch-size", "2", "--progress-every", "1"), timeout=400)
    assert res.returncode == 0, res.stderr
    return res, procs, out


def test_no_ray_line_reaches_the_console(quiet_run):
    res, _, out = quiet_run
    _console_is_monitors(res.stdout + res.stderr)
    assert not [ln for ln in res.stderr.splitlines() if "warning" in ln], res.stderr
    logged = (out / "monitor.log").read_text()
    assert "Ray's own logs" in logged  # the session folder is named in the log
    assert "WARNING ray.core: [" in logged and "max_restarts > 0" in logged  # the C++ core's line: the log only


def test_progress_lines_without_a_terminal(quiet_run):
    res, _, out = quiet_run
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("monitor: progress: ")]
    assert lines, res.stderr
    assert all("files" in ln and "segments" in ln and "realtime" in ln and "ETA" in ln for ln in lines), lines
    assert "INFO monitor.progress: progress: " in (out / "monitor.log").read_text()


def test_no_ray_process_outlives_the_run(quiet_run):
    import psutil

    _, procs, _ = quiet_run
    assert any("raylet" in p.monitor_cmdline for p in procs), [p.monitor_cmdline for p in procs]
    left = []
    for p in procs:
        try:
            if p.is_running():  # same PID and start time: the very process, still there
                left.append((p.pid, p.name()))
        except psutil.Error:  # gone while we looked: not left over
            continue
    assert left == [], left


@pytest.mark.slow
def test_a_stalled_run_is_stopped_by_the_watch(tmp_path):
    """Decode tasks that never finish: the watch says what the run waits for after --stall-warn, and past
    --stall-stop the run stops with one error line that says how to resume (exit status 2)."""
    card = _big_card(tmp_path / "CARD", 2, 30.0)
    out = tmp_path / "out"
    res, _, wall = _run_watching(_faulty(["--decode-hang"], "run", str(card), "--out", str(out), "--engine", "ray",
                                         "--batch-size", "2", "--stall-warn", "5", "--stall-stop", "20"), timeout=300)
    assert res.returncode == 2, res.stderr
    _console_is_monitors(res.stdout + res.stderr)
    lines = res.stderr.strip().splitlines()
    warns = [ln for ln in lines if ln.startswith("monitor: warning: no batch finished for ")]
    assert warns and all("waiting for: pending " in ln and "node(s) alive" in ln and "units left" in ln
                         for ln in warns), res.stderr
    assert lines[-1].startswith("monitor: error: the Ray run made no progress for "), res.stderr
    assert "run the same command again to resume" in lines[-1] and "Traceback" not in res.stderr
    logged = (out / "monitor.log").read_text()
    assert "WARNING monitor: no batch finished for " in logged
    assert _done_files(out) == 0
    assert wall < 200, wall  # stopped, not hung (start-up and shutdown of a local Ray included)


@pytest.mark.slow
def test_on_a_terminal_a_bar_and_nothing_of_rays(tmp_path):
    """Under a terminal (a pty): the progress bar is drawn (stderr still a terminal while Ray's core lines are
    routed), no core line, no colour code (not colorama's '\\x1b[0m' reset at exit either)."""
    import fcntl
    import os
    import struct
    import sys
    import termios

    if sys.platform != "linux":
        pytest.skip("a pty: Linux")
    card = _big_card(tmp_path / "CARD", 3, 60.0)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", str(card), "--out", str(tmp_path / "out"),
                             "--engine", "ray", "--batch-size", "2"], stdin=slave, stdout=slave, stderr=slave,
                            env=_env(), close_fds=True)
    os.close(slave)
    chunks = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 300:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the pty (the command exited)
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "segments: 100%" in text and "18/18" in text, text  # the bar, on the terminal
    assert "\x1b" not in text and "core_worker" not in text and "(raylet)" not in text, repr(text[-2000:])
