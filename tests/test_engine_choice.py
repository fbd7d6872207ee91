"""Choosing the engine: `--engine ray` without Ray installed, and Ray-only options with the local engine,
fail at once in one line (these run whether or not the `ray` extra is installed)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import write_wav


def _cli_without_ray(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a Python where ``import ray`` fails, as it does without ``monitor[ray]``."""
    code = "import sys; sys.modules['ray'] = None; from monitor.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))


def test_ray_engine_without_ray_is_one_line(tmp_path):
    card = tmp_path / "card"
    write_wav(card / "20240401_000000.WAV", 12.0, 16000, seed=1)
    r = _cli_without_ray("run", str(card), "--out", str(tmp_path / "out"), "--engine", "ray")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "monitor: error: the Ray engine needs: pip install 'monitor[ray]'"
    r = _cli_without_ray("run", str(card), "--out", str(tmp_path / "out2"), "--actors", "2")
    assert r.returncode == 2 and "need --engine ray" in r.stderr.strip().splitlines()[-1], r.stderr
    assert "Traceback" not in r.stderr
