"""Hostile input, interruption, read-only cards: the run never crashes on one file and never loses results."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import write_wav
from test_run_e2e import _cli, tiny_bundle  # noqa: F401  (fixture reuse)


def _patch_u32(path: Path, offset: int, value: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset:offset + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(b))


def _data_offset(path: Path) -> int:
    b = path.read_bytes()
    return b.index(b"data")


def build_hostile_corpus(root: Path) -> None:
    rng = np.random.default_rng(7)
    root.mkdir(parents=True)
    (root / "zero.wav").write_bytes(b"")
    hdr = write_wav(root / "header_only.wav", 0.0, 16000)
    assert hdr.stat().st_size == 44
    t = write_wav(root / "truncated.wav", 12.0, 16000, noise=0.1, seed=1)
    with open(t, "r+b") as fh:
        fh.truncate(t.stat().st_size // 2 + 1)
    big = write_wav(root / "data_size_too_big.wav", 12.0, 16000, noise=0.1, seed=2)
    _patch_u32(big, _data_offset(big) + 4, 0x7FFFFFF0)
    rs = write_wav(root / "riff_size_wrong.wav", 12.0, 16000, noise=0.1, seed=3)
    _patch_u32(rs, 4, 12)
    (root / "text.wav").write_text("not audio at all\n" * 10)
    (root / "._text.wav").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    x = (0.1 * rng.standard_normal(16000 * 12)).astype(np.float32)
    x[100:200] = np.nan
    x[5000] = np.inf
    sf.write(root / "nan_inf.wav", x, 16000, subtype="FLOAT")
    write_wav(root / "one_sample.wav", 1 / 16000, 16000)
    write_wav(root / "half_second.wav", 0.5, 16000)
    write_wav(root / "six_channels.wav", 11.0, 16000, channels=6, noise=0.05)
    write_wav(root / "u8.wav", 11.0, 16000, subtype="PCM_U8", noise=0.05)
    write_wav(root / "pcm24.wav", 11.0, 16000, subtype="PCM_24", noise=0.05)
    write_wav(root / "float32.wav", 11.0, 16000, subtype="FLOAT", noise=0.05)
    write_wav(root / "rf64.wav", 11.0, 16000, fmt="RF64", noise=0.05)
    write_wav(root / "extensible.wav", 11.0, 16000, fmt="WAVEX", noise=0.05)
    write_wav(root / "mulaw.wav", 11.0, 8000, subtype="ULAW", noise=0.05)
    write_wav(root / "rate_8k.wav", 11.0, 8000, noise=0.05)
    write_wav(root / "rate_384k.wav", 11.0, 384000, freq_hz=30000, noise=0.05)
    write_wav(root / "silence.wav", 11.0, 16000, freq_hz=None)
    write_wav(root / "a" / "b" / "c" / "d" / "e" / "f" / "g" / "deep.wav", 11.0, 16000, noise=0.05)
    write_wav(root / "=cmd| spaces ünïcødé 🐸.wav", 11.0, 16000, noise=0.05)
    os.symlink("..", root / "a" / "loop")
    locked = write_wav(root / "unreadable.wav", 11.0, 16000, noise=0.05)
    os.chmod(locked, 0)
    scipy_data = Path(__import__("scipy").__file__).parent / "io" / "tests" / "data"
    for p in sorted(scipy_data.glob("*.wav")):
        shutil.copy(p, root / "scipy" / p.name) if (root / "scipy").is_dir() else (
            (root / "scipy").mkdir(), shutil.copy(p, root / "scipy" / p.name))


def _decodable(path: Path) -> float | None:
    """Duration if soundfile can decode the whole file, else None (the oracle for 'must be ok')."""
    try:
        with sf.SoundFile(path) as f:
            n = 0
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                n += len(block)
            return n / f.samplerate if f.samplerate > 0 else None
    except Exception:
        return None


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "CARD"
    build_hostile_corpus(root)
    return root


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and os.access(p, os.R_OK):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_hostile_corpus_runs_clean(hostile, tiny_bundle, tmp_path):
    before = _digest(hostile)
    # the card is read-only for the whole run
    modes = {p: p.stat().st_mode for p in [hostile, *hostile.rglob("*")] if not p.is_symlink()}
    for p in modes:
        p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        out = tmp_path / "out"
        res = _cli("run", str(hostile), "--out", str(out), "--model", str(tiny_bundle), "--workers", "1",
                   "--batch-size", "4")
    finally:
        for p, m in modes.items():
            p.chmod(m)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert _digest(hostile) == before
    from monitor.report.tables import read_csv

    rec = read_csv(out / "recordings.csv")  # restores text neutralised against formula injection
    listed = set(rec.file)
    on_disk = {str(p.relative_to(hostile)).replace(os.sep, "/") for p in hostile.rglob("*")
               if p.is_file() and not p.is_symlink() and "loop" not in p.parts}
    assert on_disk <= listed, sorted(on_disk - listed)
    assert set(rec.status) <= {"ok", "skipped", "failed"}
    assert (rec[rec.status != "ok"].reason.str.len() > 0).all()
    status = dict(zip(rec.file, rec.status))
    # every file soundfile can decode (and long enough) was processed
    for rel in on_disk:
        dur = _decodable(hostile / rel)
        if dur is not None and dur >= 1.0 and not Path(rel).name.startswith("._"):
            assert status[rel] == "ok", (rel, dur, status[rel], dict(zip(rec.file, rec.reason))[rel])
    for rel in ["zero.wav", "half_second.wav", "one_sample.wav", "._text.wav", "header_only.wav"]:
        assert status[rel] == "skipped", rel
    assert status["text.wav"] in ("failed", "skipped")
    for rel in ["nan_inf.wav", "six_channels.wav", "u8.wav", "pcm24.wav", "float32.wav", "rf64.wav",
                "extensible.wav", "mulaw.wav", "rate_8k.wav", "rate_384k.wav", "silence.wav",
                "a/b/c/d/e/f/g/deep.wav", "=cmd| spaces ünïcødé 🐸.wav"]:
        assert status[rel] == "ok", rel
    reason = dict(zip(rec.file, rec.reason))
    assert "non-finite" in reason["nan_inf.wav"]
    seg = pd.read_csv(out / "segments.csv", keep_default_na=False)
    assert np.isfinite(seg.iloc[:, 6:].to_numpy(dtype=float)).all()
    assert (out / "monitor.log").stat().st_size > 0
    counts = rec.status.value_counts().to_dict()
    print("hostile corpus:", len(rec), "files", counts)


def _slow_card(root: Path, n: int = 12) -> Path:
    for i in range(n):
        write_wav(root / f"f{i:02d}.wav", 30.0, 16000, noise=0.1, seed=i, freq_hz=300 + 100 * i)
    return root


def _wait_for_ok_files(proc: subprocess.Popen, out: Path, n: int, timeout_s: float = 120) -> int:
    """Poll the run's store (read-only) until ``n`` files are committed ok or the run ends; returns the count."""
    import sqlite3

    deadline, done = time.time() + timeout_s, 0
    while time.time() < deadline and proc.poll() is None and done < n:
        time.sleep(0.1)
        try:
            db = sqlite3.connect(f"file:{out / 'monitor.sqlite'}?mode=ro", uri=True, timeout=1)
            done = db.execute("SELECT COUNT(*) FROM files WHERE status='ok'").fetchone()[0]
            db.close()
        except sqlite3.Error:
            continue
    return done


def test_sigkill_then_resume_equals_uninterrupted(tiny_bundle, tmp_path):
    card = _slow_card(tmp_path / "card")
    full = tmp_path / "full"
    assert _cli("run", str(card), "--out", str(full), "--model", str(tiny_bundle), "--workers", "0",
                "--batch-size", "4").returncode == 0
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", str(card), "--out", str(out), "--model",
                             str(tiny_bundle), "--workers", "0", "--batch-size", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    done = _wait_for_ok_files(proc, out, 3)
    assert proc.poll() is None, "run finished before it could be killed; make the card bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 12
    res = _cli("run", str(card), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0",
               "--batch-size", "4")
    assert res.returncode == 0, res.stderr
    a = pd.read_csv(full / "segments.csv", keep_default_na=False)
    b = pd.read_csv(out / "segments.csv", keep_default_na=False)
    assert not b.duplicated(["file", "segment"]).any()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    print(f"kill/resume: killed after {done} of 12 files; resumed run equals the uninterrupted one")


def test_sigint_saves_and_says_how_to_resume(tiny_bundle, tmp_path):
    card = _slow_card(tmp_path / "card")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", str(card), "--out", str(out), "--model",
                             str(tiny_bundle), "--workers", "0", "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_ok_files(proc, out, 1)
    assert proc.poll() is None, "run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "run the same command again to resume" in err
    assert "Traceback" not in err
    assert (out / "recordings.csv").is_file() and (out / "report.xlsx").is_file()
    seg = pd.read_csv(out / "segments.csv")
    assert 0 < seg.file.nunique() < 12  # finished files were kept, the rest left for the resume


def test_second_run_on_same_out_is_refused(tiny_bundle, tmp_path):
    from monitor.store import DirLock

    card = _slow_card(tmp_path / "card", n=1)
    out = tmp_path / "out"
    out.mkdir()
    with DirLock(out):
        res = _cli("run", str(card), "--out", str(out), "--model", str(tiny_bundle))
    assert res.returncode == 2 and "in use by another monitor run" in res.stderr


def test_full_disk_gives_clear_error_and_consistent_store(tiny_bundle, tmp_path):
    card = _slow_card(tmp_path / "card", n=3)
    out = tmp_path / "out"
    code = (
        "import resource, sys; from monitor.cli import main; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000)); "
        f"sys.exit(main(['run', {str(card)!r}, '--out', {str(out)!r}, '--model', {str(tiny_bundle)!r}, "
        "'--workers', '0']))"
    )
    import signal as _s

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: _s.signal(_s.SIGXFSZ, _s.SIG_IGN))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "disk" in res.stderr.lower() or "space" in res.stderr.lower() or "too large" in res.stderr.lower()
    # the store is consistent: a normal re-run completes and equals a clean run
    assert _cli("run", str(card), "--out", str(out), "--model", str(tiny_bundle), "--workers", "0").returncode == 0
    clean = tmp_path / "clean"
    assert _cli("run", str(card), "--out", str(clean), "--model", str(tiny_bundle), "--workers", "0").returncode == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "segments.csv"), pd.read_csv(clean / "segments.csv"))
