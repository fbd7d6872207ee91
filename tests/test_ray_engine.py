"""The Ray engine (issues 17, 25) on real Ray: the same plan, decoding and scorer as the local engine, so every
output equals a local run's, bit for bit, whatever order results arrive in, when an actor dies, when a
worker node is lost (with or without a replacement node, 1-CPU nodes), and when the driver is interrupted
and re-run; a stalled run is stopped by the watch; Ray says nothing on the console.

Faults come from ``ray_faults`` (this folder): slowed, hung decoding and an actor that dies once, given to
``RayEngine(decode_fn=..., actor_cls=...)``, or to ``monitor`` run through ``python tests/ray_faults.py``.
Skipped without ``ray`` (``pip install 'monitor[ray]'``; the ``dev`` extra has it, so CI runs these).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_wav

ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray: pip install 'monitor[ray]'")

import ray_faults  # noqa: E402 - imports ray

FAULTS = Path(ray_faults.__file__)
DELAY_S = 0.3  # decode tasks sleep a random 0..0.3 s: results arrive out of order


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One in-process Ray instance with 2 CPUs for this module (the engine uses it as it is); yields a folder
    for ``ray_faults.exit_once_actor``."""
    marker = tmp_path_factory.mktemp("exit-once")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield marker
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def demo():
    from monitor.model.ensemble import load_models

    return load_models(None)


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    """The packaged example card, plus generated files (one 384 kHz: a batch cut into decode-task parts) and
    a broken file."""
    from monitor.resources import example_card_source

    root = tmp_path_factory.mktemp("card") / "CARD"
    shutil.copytree(example_card_source(), root)
    gen = root / "GEN"
    write_wav(gen / "20240410_211500.WAV", 31.0, 22050, channels=2, freq_hz=2500, noise=0.05, seed=3)
    write_wav(gen / "20240411_211500.WAV", 25.0, 384000, freq_hz=30000, noise=0.05, seed=4)
    write_wav(gen / "20240412_211500.WAV", 12.5, 32000, freq_hz=None, noise=0.1, seed=5)
    (gen / "20240413_211500.WAV").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20)  # a broken header
    return root


def _jobs(card: Path):
    from monitor.discover import discover
    from monitor.plan import job_from_path

    out = []
    for f in discover(card).recordings:
        try:
            out.append(job_from_path(f.path, f.rel))
        except Exception:  # noqa: BLE001 - the broken file has no header: the pipeline fails it at probe
            pass
    return out


def _engine_run(engine, jobs):
    done, order, seen = {}, [], []
    with engine:
        engine.run(jobs, lambda j, s: (done.__setitem__(j.rel, s), order.append(j.rel)), seen.append)
    return done, order, sum(seen)


def _local(demo, jobs, batch_size):
    from monitor.engine import LocalEngine

    return _engine_run(LocalEngine(demo, device="cpu", workers=0, batch_size=batch_size), jobs)


def _same(a: dict, b: dict) -> None:
    assert list(sorted(a)) == list(sorted(b))
    for k in a:
        np.testing.assert_array_equal(a[k].scores, b[k].scores, err_msg=k)  # exact, not close
        np.testing.assert_array_equal(a[k].start_s, b[k].start_s)
        np.testing.assert_array_equal(a[k].index, b[k].index)
        assert (a[k].error, a[k].nonfinite) == (b[k].error, b[k].nonfinite)


def _store(out: Path) -> tuple[list, list]:
    con = sqlite3.connect(out / "monitor.sqlite")
    try:
        files = con.execute("SELECT deployment, file, size, mtime_ns, model_hash, status, reason, metadata, n_segments, "
                            "nonfinite, input_dir, fingerprint FROM files ORDER BY deployment, file").fetchall()
        segs = con.execute("SELECT * FROM segments ORDER BY deployment, file, segment").fetchall()
    finally:
        con.close()
    return files, segs


def _same_outputs(a: Path, b: Path) -> None:
    for name in ("segments.csv", "detections.csv", "recordings.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    fa, sa = _store(a)
    fb, sb = _store(b)
    assert fa == fb
    assert sa == sb  # scores are float32 blobs: compared byte for byte
    assert len(sa) > 0


def test_units_cover_whole_batches_and_split_rows_back():
    from monitor.config import Preprocess
    from monitor.plan import FileJob, Rows, plan_batches
    from monitor.ray_engine import split_batches, units

    pre = Preprocess()
    jobs = [FileJob(i, f"f{i}.wav", f"f{i}.wav", int(sr * dur), 1, sr)
            for i, (sr, dur) in enumerate([(384000, 45.0), (16000, 95.0), (48000, 12.0)])]
    plan = plan_batches(jobs, pre, 3, task_samples=5_000_000)
    us = units(plan)
    assert [t for u in us for t in u] == list(range(len(plan.tasks)))
    assert any(len(u) > 1 for u in us)  # a 384 kHz batch cut into parts: one unit
    for u in us:
        first, last = plan.tasks[u[0]], plan.tasks[u[-1]]
        assert first.first % 3 == 0 and ((last.first + last.n) % 3 == 0 or last.first + last.n == plan.n_segments)
    n = 7
    rows = Rows(6, np.arange(n, dtype=np.float32)[:, None], np.arange(n), tuple("abcdefg"))
    parts = split_batches(rows, 3)
    assert [(b, r.first, r.n) for b, r in parts] == [(2, 6, 3), (3, 9, 3), (4, 12, 1)]


def test_ray_engine_out_of_order_equals_local(ray_local, demo, card):
    """Units fed shuffled, decode tasks at 0.25 CPU with random delays: the same scores, bit for bit."""
    from monitor.plan import plan_batches
    from monitor.ray_engine import RayEngine, units

    jobs = _jobs(card)
    ref, ref_order, n_ref = _local(demo, jobs, 3)
    eng = RayEngine(demo, batch_size=3, decode_cpus=0.25, shuffle_seed=1, task_samples=1_000_000,
                    decode_fn=functools.partial(ray_faults.slow_decode, max_delay_s=DELAY_S))
    assert eng.describe().engine == "ray" and eng.describe().batch_size == 3
    us = units(plan_batches(jobs, demo[0].preprocessing, 3, 1_000_000))
    assert len(us) > 5 and any(len(u) > 1 for u in us)  # the 384 kHz file's batch is cut into parts
    shuffled = list(us)
    np.random.default_rng(1).shuffle(shuffled)
    assert shuffled != us
    got, order, n_got = _engine_run(eng, jobs)
    assert n_got == n_ref  # the progress bar counts the same segments
    _same(ref, got)
    assert ray.is_initialized()  # the engine did not stop a Ray it did not start


def test_actor_that_dies_once_is_restarted_and_results_identical(ray_local, demo, card, capfd):
    """Ray restarts it and retries its batch; one warning line (stderr and the log), nothing of Ray's on the
    console (not the core's 'max_restarts > 0' line either), the local engine's scores."""
    import logging

    from monitor.ray_engine import RayEngine

    jobs = _jobs(card)[:4]
    ref, _, n_ref = _local(demo, jobs, 2)
    (ray_local / "armed").write_text("")
    capfd.readouterr()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        got, _, n_got = _engine_run(RayEngine(demo, batch_size=2, actor_cls=ray_faults.exit_once_actor(ray_local),
                                              decode_fn=functools.partial(ray_faults.slow_decode, max_delay_s=0.5)),
                                    jobs)
    finally:
        logging.getLogger().removeHandler(handler)
    out, err = capfd.readouterr()
    assert (ray_local / "fired").exists() and not (ray_local / "armed").exists()  # it did die
    _same(ref, got)
    assert n_got == n_ref  # each segment counted once
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]  # at most the warning (shown by logging's console)
    assert len(lines) <= 1 and all("a scoring actor died and Ray restarted it" in ln for ln in lines), out + err
    said = [r for r in records if r.levelname == "WARNING" and r.name == "monitor"]
    assert len(said) == 1 and said[0].getMessage().startswith("a scoring actor died and Ray restarted it")


def test_work_ray_gives_up_on_is_streamed_again_from_the_same_plan(ray_local, demo, card):
    """After a node dies Ray may give up on an actor's task (``ActorUnavailableError``: seen on the two-node
    cluster): the driver streams the same plan's unfinished units again; identical scores, each segment once."""
    from monitor.errors import MonitorError
    from monitor.plan import plan_batches
    from monitor.ray_engine import RETRIES, RayEngine, unit_batches, units

    jobs = _jobs(card)[:5]
    ref, _, n_ref = _local(demo, jobs, 2)
    plan = plan_batches(jobs, demo[0].preprocessing, 2, 1_000_000)
    assert unit_batches(plan, units(plan)[-1]) == {plan.n_batches - 1}
    assert set().union(*(unit_batches(plan, u) for u in units(plan))) == set(range(plan.n_batches))
    streams = []

    class LosesWorkOnce(RayEngine):
        def _stream(self, plan, todo):
            streams.append(len(todo))
            stream = super()._stream(plan, todo)
            if len(streams) == 1:
                real = stream.results

                def results(watch):
                    for k, res in enumerate(real(watch)):
                        yield res
                        if k == 1:  # two batches in, the first stream fails as Ray's would
                            raise ray.exceptions.ActorUnavailableError("lost with its node (test)", None)

                stream.results = results
            return stream

    got, _, n_got = _engine_run(LosesWorkOnce(demo, batch_size=2, task_samples=1_000_000), jobs)
    assert streams[0] == len(units(plan)) and 0 < streams[1] < streams[0] and len(streams) == 2
    assert n_got == n_ref  # no segment counted twice
    _same(ref, got)

    class Lost:
        def results(self, watch):
            raise ray.exceptions.ActorUnavailableError("lost (test)", None)
            yield  # a generator, like the real one

        def close(self):
            pass

    class AlwaysLoses(RayEngine):
        def _stream(self, plan, todo):
            streams.append(len(todo))
            return Lost()

    streams.clear()
    with pytest.raises(MonitorError, match="kept losing work .*run the same command again"):
        _engine_run(AlwaysLoses(demo, batch_size=2, task_samples=1_000_000), jobs)
    assert len(streams) == RETRIES + 1


def test_bad_options_fail_in_one_line(ray_local, demo):
    from monitor.errors import MonitorError
    from monitor.ray_engine import RayEngine

    with pytest.raises(MonitorError, match="has no GPUs"):
        RayEngine(demo, device="cuda")
    with pytest.raises(MonitorError, match="--actors must be >= 1"):
        RayEngine(demo, actors=0)
    assert ray.is_initialized()  # a Ray the engine did not start is left running


def test_actor_bundles_come_from_the_driver_when_the_node_lacks_the_folder(ray_local, demo, tmp_path):
    """A worker node without the bundle folder (or with another bundle there) loads the driver's shipped copy."""
    from monitor.ray_engine import actor_bundles, bundle_payload

    b = demo[0]
    ref = ray.put(bundle_payload(b))
    here = actor_bundles([(str(b.path), b.sha256, ref)])[0]
    assert str(here.path) == str(b.path)  # the node sees the folder: loaded in place
    shipped = actor_bundles([(str(tmp_path / "not-on-this-node"), b.sha256, ref)])[0]
    assert shipped.sha256 == b.sha256 and str(shipped.path) != str(b.path)
    assert shipped.labels == b.labels and shipped.preprocessing == b.preprocessing
    from monitor.errors import MonitorError

    with pytest.raises(MonitorError, match="changed on the way"):  # neither copy has the expected hash
        actor_bundles([(str(b.path), "0" * 64, ref)])
def test_ray_engine_reads_file_urls(ray_local, demo, card):
    """Decode tasks open ``file://`` URLs through fsspec on the workers: the plain path's scores."""
    import dataclasses

    pytest.importorskip("fsspec")
    from monitor.ray_engine import RayEngine

    jobs = _jobs(card)[:3]
    ref, _, _ = _local(demo, jobs, 4)
    urls = [dataclasses.replace(j, path=f"file://{j.path}") for j in jobs]
    got, _, _ = _engine_run(RayEngine(demo, batch_size=4), urls)
    _same(ref, got)


def test_monitor_run_ray_equals_local(ray_local, demo, card, tmp_path):
    """`monitor run`'s code path (pipeline.run): every CSV and the store's contents identical."""
    import json

    from monitor import run

    a, b = tmp_path / "local", tmp_path / "ray"
    run(card, a, batch_size=4, workers=0, progress=False)
    info = run(card, b, batch_size=4, engine="ray", progress=False)
    assert info.engine == "ray" and json.loads((b / "run.json").read_text())["engine"] == "ray"
    assert info.counts["failed"] >= 1  # the broken file
    _same_outputs(a, b)
    from monitor.errors import MonitorError

    with pytest.raises(MonitorError, match="need --engine ray"):
        run(card, tmp_path / "x", actors=2)


# --- the CLI as a subprocess: a driver interrupted, a two-node cluster losing its worker node ------------

def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=timeout,
                          env=_env())


def _faulty(faults: list[str], *args: str) -> list[str]:
    """The command line of ``monitor ARGS`` with the Ray engine given ``ray_faults``' faults."""
    return [sys.executable, str(FAULTS), *faults, "--", *args]


def _big_card(root: Path, n: int = 10, duration_s: float = 40.0) -> Path:
    for i in range(n):
        write_wav(root / f"202405{i:02d}_211500.WAV", duration_s, 16000, noise=0.2, seed=20 + i, freq_hz=300 + 250 * i)
    return root


def _done_files(out: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{out / 'monitor.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _wait(cond, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_interrupted_driver_resumes_to_the_same_results(tmp_path):
    card = _big_card(tmp_path / "CARD", 12, 60.0)  # 72 segments, 6 decode units
    ref, out = tmp_path / "ref", tmp_path / "out"
    r = _cli("run", str(card), "--out", str(ref), "--batch-size", "2", "--workers", "0")
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(_faulty(["--decode-delay", "2"], "run", str(card), "--out", str(out), "--engine", "ray",
                                    "--batch-size", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert _wait(lambda: _done_files(out) >= 1, 240, proc), "no file finished"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "interrupted" in err, err
    first = _done_files(out)
    assert 1 <= first < 12, first
    r = _cli("run", str(card), "--out", str(out), "--engine", "ray", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    _same_outputs(ref, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ray")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env)


def _pids(temp_dir: Path) -> dict[int, list[bytes]]:
    """Our cluster's processes (every one names its temp dir on its command line) -> command line."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(temp_dir).encode() in c for c in cmd):
            out[int(p.name)] = cmd
    return out


def _raylet_pids(temp_dir: Path, node_ip: str) -> list[int]:
    """PIDs of the raylet of the node at ``node_ip``."""
    return [pid for pid, cmd in _pids(temp_dir).items() if cmd and cmd[0].endswith(b"raylet")
            and any(node_ip.encode() in c for c in cmd if c.startswith(b"--node_ip_address"))]


def _tear_down(temp_dir: Path) -> None:
    """Stop this test's cluster by PID only (``ray stop`` would stop every Ray on a shared machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if pids and sig == signal.SIGTERM:
            _wait(lambda: not _pids(temp_dir), 10)


def _console_is_monitors(text: str) -> None:
    """Every console line is monitor's own: none of Ray's (``(raylet) ...``, ``core_worker.cc``, colour codes)."""
    assert "\x1b" not in text, text
    for line in text.splitlines():
        assert not line.strip() or line.startswith("monitor: "), text


@pytest.mark.slow
@pytest.mark.parametrize("replacement", [False, True], ids=["no-replacement", "replacement-joins"])
def test_two_node_cluster_survives_losing_the_worker_node(tmp_path, replacement):
    """Head on 127.0.0.2, a worker node on 127.0.0.3, 1 CPU each (both actors may end up on the 1-CPU head: issue
    25); the worker's raylet is killed mid-run; with or without a new worker node joining, the run completes
    with the local engine's results; the loss is one warning line, logged, and Ray prints nothing."""
    if sys.platform != "linux":
        pytest.skip("loopback addresses 127.0.0.2/3 and /proc: Linux only")
    card = _big_card(tmp_path / "CARD", 12, 60.0)  # 72 segments, 6 decode units
    ref, out = tmp_path / "ref", tmp_path / "out"
    r = _cli("run", str(card), "--out", str(ref), "--batch-size", "2", "--workers", "0")
    assert r.returncode == 0, r.stderr
    temp = Path(f"/tmp/mr{os.getpid()}")  # short: Unix socket paths are limited to 107 bytes
    env = _env(RAY_AUTH_MODE="token")
    port = _free_port()
    head = f"127.0.0.2:{port}"
    try:
        r = _ray("start", "--head", "--node-ip-address", "127.0.0.2", "--port", str(port), "--num-cpus", "1",
                 "--include-dashboard", "false", "--temp-dir", str(temp), "--disable-usage-stats", env=env)
        assert r.returncode == 0, r.stdout + r.stderr

        def join() -> None:
            r = _ray("start", "--address", head, "--node-ip-address", "127.0.0.3", "--num-cpus", "1",
                     "--temp-dir", str(temp), "--disable-usage-stats", env=env)
            assert r.returncode == 0, r.stdout + r.stderr

        join()
        proc = subprocess.Popen(_faulty(["--decode-delay", "4"],  # decode tasks sleep 0..4 s: the run is mid-way
                                        "run", str(card), "--out", str(out), "--engine", "ray", "--address", head,
                                        "--batch-size", "2", "--actors", "2", "--progress-every", "0"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert _wait(lambda: _done_files(out) >= 1, 240, proc), "no file finished"
            pids = _raylet_pids(temp, "127.0.0.3")
            assert pids, "the worker node's raylet was not found"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            assert _done_files(out) < 12 and proc.poll() is None  # killed mid-run
            if replacement:
                join()  # a replacement node joins
            so, err = proc.communicate(timeout=420)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
    finally:
        _tear_down(temp)
        shutil.rmtree(temp, ignore_errors=True)
    _same_outputs(ref, out)
    _console_is_monitors(so + err)
    node_lines = [ln for ln in err.splitlines() if ln.startswith("monitor: warning: Ray node 127.0.0.3")]
    assert len(node_lines) == 1 and "was lost" in node_lines[0], err
    assert len([ln for ln in err.splitlines() if "scoring actor" in ln]) <= 1, err  # restarted or streamed again
    logged = (out / "monitor.log").read_text()
    assert "WARNING monitor: Ray node 127.0.0.3" in logged and "(raylet)" in logged  # Ray's own lines: the log


def test_missing_address_is_one_line(tmp_path):
    card = _big_card(tmp_path / "CARD", 1)
    port = _free_port()
    r = _cli("run", str(card), "--out", str(tmp_path / "o"), "--engine", "ray", "--address", f"127.0.0.2:{port}",
             timeout=180)
    assert r.returncode == 2
    last = [ln for ln in r.stderr.splitlines() if ln.startswith("monitor: error:")]
    assert last and "cannot reach the Ray cluster" in last[0], r.stderr
    assert "Traceback" not in r.stderr
