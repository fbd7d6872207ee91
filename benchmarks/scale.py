"""The Ray engine against the local engine on one node, in one run (issue 17).

Times the code path of `monitor run` (``pipeline.run`` with ``engine="local"`` and ``engine="ray"``; the
Ray engine starts its own local Ray instance, as ``monitor run --engine ray`` without ``--address`` does):

1. base384 geometry (the AudioSet AST's), random weights, a few 10 s segments: scoring throughput
   (segments / the run's scoring wall time, which includes loading the model in both engines). Baseline:
   the local engine. Target: Ray >= 0.85x local.
2. the bundled demo model on the packaged example card plus generated files: the Ray engine's overhead.
3. the Ray engine's start-up (``ray.init`` of a local instance) and the whole run's wall time.

    python benchmarks/scale.py              # base384: 28 segments (about 1-2 min per engine on 2 cores)
    python benchmarks/scale.py --segments 12

Last line: ``scale: base384 local X seg/s, ray Y seg/s, ratio R (target >= 0.85) PASS|FAIL``

``--fault`` (issue 25) times instead, with the demo model on 12 generated 60 s files (72 segments, a ~20 s
run), each ``--repeats`` times, alternating: a plain Ray run; a run where one scoring actor dies once (its
process exits on its ``--die-after``-th batch; ``--actors``, ``--decode-delay``) recovered by Ray's own actor
restarts (``actor_restarts=5``, the default) and by the engine streaming the unfinished units again at once
(``actor_restarts=0``); and the watch's and the progress lines' cost: a plain run with both off, and the cost of one
``Watch.tick()`` (the node list from Ray) and of one ``Progress.segments()`` call. Every run's segments.csv
must equal the plain run's; the longest gap between two batches reaching the driver is the stall. Last line:
``scale --fault: ... faster: restarts|restream ... PASS|FAIL`` (PASS: identical results).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

TARGET = 0.85


def make_card(root: Path, segments: int, seed: int = 0) -> Path:
    """Files of 7 x 10 s segments (the last one shorter), 48 kHz mono noise + tones."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    i = 0
    while segments > 0:
        n = min(7, segments)
        sr = 48000
        t = np.arange(int(n * 10 * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * (500 + 300 * i) * t) + 0.05 * rng.standard_normal(t.size)
        root.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / f"2024060{i}_210000.WAV"), x.astype(np.float32), sr, subtype="PCM_16")
        segments -= n
        i += 1
    return root


def base384_bundle(dst: Path) -> Path:
    import torch

    from monitor.config import Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle

    torch.manual_seed(0)
    model = AST(label_dim=2, fstride=10, tstride=10, input_fdim=128, input_tdim=1024, model_size="base384")
    save_bundle(dst, model, name="base384-random", version="0", labels=["frog", "bird"], task="multilabel",
                preprocessing=Preprocess(), thresholds={"frog": 0.5, "bird": 0.5})
    return dst


def timed_run(card: Path, out: Path, engine: str, models: list[str] | None) -> dict:
    from monitor import run

    t0 = time.perf_counter()
    info = run(card, out, models=models, engine=engine, progress=False)
    total = time.perf_counter() - t0
    seg = info.counts["segments"]
    return {"engine": engine, "segments": seg, "scoring_s": info.wall_s, "total_s": total,
            "seg_per_s": seg / max(1e-9, info.wall_s), "batch_size": info.batch_size, "workers": info.workers}


def same_scores(a: Path, b: Path) -> bool:
    return (a / "segments.csv").read_bytes() == (b / "segments.csv").read_bytes()


def _exit_once_actor(folder: Path, after: int):
    """A scoring actor that exits its process (a crash) on its ``after``-th call once ``folder/armed`` is there
    (once per run: the first actor to get there renames it)."""
    import os

    from monitor.ray_engine import ScoreActor

    class ExitOnce(ScoreActor):
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls >= after:
                try:
                    os.rename(folder / "armed", folder / "fired")  # exactly one call fires
                except OSError:
                    return super().__call__(batch)
                os._exit(1)
            return super().__call__(batch)

    return ExitOnce


def _slow_decode(row, pre, output, batch_size, delay_s: float = 0.0):
    """The engine's decoding after a ``delay_s`` sleep (a run long enough for the death to fall mid-run)."""
    from monitor.ray_engine import decode_unit

    time.sleep(delay_s)
    return decode_unit(row, pre, output, batch_size)


def fault_runs(work: Path, repeats: int, after: int, actors: int, delay_s: float) -> int:
    """``--fault``: see the module docstring."""
    import functools
    import statistics

    import monitor.pipeline
    import monitor.ray_engine as ray_engine
    from monitor.progress import Progress
    from monitor.ray_cluster import Watch

    card = work / "fault-card"
    for i in range(12):
        sr = 16000
        t = np.arange(60 * sr) / sr
        x = 0.3 * np.sin(2 * np.pi * (300 + 250 * i) * t) + 0.2 * np.random.default_rng(20 + i).standard_normal(t.size)
        import soundfile as sf

        card.mkdir(parents=True, exist_ok=True)
        sf.write(str(card / f"202405{i:02d}_211500.WAV"), x.astype(np.float32), sr, subtype="PCM_16")
    real_engine, real_tick, real_segments = ray_engine.RayEngine, Watch.tick, Progress.segments
    arrivals: list[float] = []

    def segments(self, n):  # when each batch reached the driver: the longest gap is the stall
        arrivals.append(time.perf_counter())
        return real_segments(self, n)
    marker = work / "marker"
    marker.mkdir()
    base = dict(actors=actors, task_samples=1_000_000, decode_fn=functools.partial(_slow_decode, delay_s=delay_s))
    kinds = {"plain": {}, "quiet": {}, "restarts": dict(actor_restarts=5), "restream": dict(actor_restarts=0)}
    kinds = {k: {**base, **v} for k, v in kinds.items()}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    gaps: dict[str, list[float]] = {k: [] for k in kinds}
    ok = True
    ref = None
    for r in range(repeats):
        for kind, kw in kinds.items():
            out = work / f"fault-{kind}-{r}"
            kw = dict(kw)
            if kind in ("restarts", "restream"):
                (marker / "armed").write_text("")
                kw["actor_cls"] = _exit_once_actor(marker, after)
            Watch.tick = (lambda self, final=False: None) if kind == "quiet" else real_tick
            monitor.pipeline.RayEngine = functools.partial(real_engine, **kw)
            arrivals.clear()
            Progress.segments = segments
            try:
                from monitor import run

                t0 = time.perf_counter()
                run(card, out, batch_size=2, engine="ray", progress=None if kind != "quiet" else False,
                    progress_every_s=0 if kind == "quiet" else 5)
                times[kind].append(time.perf_counter() - t0)
            finally:
                monitor.pipeline.RayEngine, Watch.tick, Progress.segments = real_engine, real_tick, real_segments
            gaps[kind].append(max(np.diff(arrivals)) if len(arrivals) > 1 else 0.0)
            if kind in ("restarts", "restream"):
                ok = ok and (marker / "fired").exists()  # it did die
                (marker / "fired").unlink(missing_ok=True)
            seg = (out / "segments.csv").read_bytes()
            ref = ref if ref is not None else seg
            ok = ok and seg == ref
    # the watch's and the progress lines' own cost, per call
    eng = real_engine(__import__("monitor.model.ensemble", fromlist=["load_models"]).load_models(None))
    try:
        w = Watch(eng.ray, 180.0, 1200.0, lambda: (1, 1))
        t0 = time.perf_counter()
        for _ in range(50):
            w._last_nodes = -1e9  # force the node list each time (the real loop asks every 5 s)
            w.tick()
        tick_ms = (time.perf_counter() - t0) / 50 * 1e3
    finally:
        eng.close()
    p = Progress(10**9, 10**6, 10.0, bar=None, every_s=60.0, stream=open("/dev/null", "w"))
    t0 = time.perf_counter()
    for _ in range(100_000):
        p.segments(1)
    seg_us = (time.perf_counter() - t0) / 100_000 * 1e6
    med = {k: statistics.median(v) for k, v in times.items()}
    gap = {k: statistics.median(v) for k, v in gaps.items()}
    print(f"CPU: {cpu_name()}; python {sys.version.split()[0]}; {repeats} repeat(s); {actors} actor(s), 12 decode "
          f"units sleeping {delay_s:g} s each; an actor dies on its call {after}; median wall s (all runs) and median "
          f"longest gap between batches (the stall)")
    labels = {"plain": "plain Ray run (watch, progress lines every 5 s)",
              "quiet": "plain Ray run, watch and progress lines off",
              "restarts": "one actor dies once, Ray restarts it",
              "restream": "one actor dies once, units streamed again"}
    for k, v in times.items():
        print(f"{labels[k]:<48} {med[k]:6.1f} s ({', '.join(f'{x:.1f}' for x in v)})  stall {gap[k]:5.1f} s "
              f"({', '.join(f'{x:.1f}' for x in gaps[k])})")
    print(f"an actor's death costs: restarts +{med['restarts'] - med['plain']:.1f} s (stall {gap['restarts']:.1f} s), "
          f"re-streaming +{med['restream'] - med['plain']:.1f} s (stall {gap['restream']:.1f} s) over the plain run")
    print(f"watch and progress: run {med['plain'] - med['quiet']:+.1f} s (noise-level); one Watch.tick() with the "
          f"node list {tick_ms:.2f} ms (every 5 s), one Progress.segments() {seg_us:.2f} us (per batch)")
    faster = "restream" if med["restream"] <= med["restarts"] else "restarts"
    verdict = "PASS" if ok else "FAIL"
    print(f"scale --fault: restarts {med['restarts']:.1f} s, restream {med['restream']:.1f} s, plain "
          f"{med['plain']:.1f} s; faster: {faster}; identical {ok} {verdict}")
    return 0 if verdict == "PASS" else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=28, help="base384 segments to score (default 28)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--fault", action="store_true", help="time an actor's death and the watch instead (issue 25)")
    ap.add_argument("--repeats", type=int, default=3, help="--fault: runs of each kind (default 3)")
    ap.add_argument("--die-after", type=int, default=8, help="--fault: the actor dies on this call (default 8)")
    ap.add_argument("--actors", type=int, default=1, help="--fault: scoring actors (default 1)")
    ap.add_argument("--decode-delay", type=float, default=1.0,
                    help="--fault: each decode unit sleeps this long first (default 1 s: the death falls mid-run)")
    args = ap.parse_args()
    from monitor.logs import setup_logging

    setup_logging(0)
    if args.fault:
        work = Path(tempfile.mkdtemp(prefix="monitor-fault-"))
        try:
            return fault_runs(work, args.repeats, args.die_after, args.actors, args.decode_delay)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    from monitor.ray_engine import RayEngine
    from monitor.resources import example_card_source

    work = Path(tempfile.mkdtemp(prefix="monitor-scale-"))
    rows = []
    try:
        # start-up of the Ray engine alone (a local instance, as `monitor run --engine ray` starts)
        from monitor.model.ensemble import load_models

        t0 = time.perf_counter()
        eng = RayEngine(load_models(None))
        startup = eng.startup_s
        eng.close()
        start_close = time.perf_counter() - t0

        if not args.skip_demo:
            card = work / "demo-card"
            shutil.copytree(example_card_source(), card)
            make_card(card / "GEN", 14, seed=1)
            demo = {e: timed_run(card, work / f"demo-{e}", e, None) for e in ("local", "ray")}
            ok = same_scores(work / "demo-local", work / "demo-ray")
            for e, r in demo.items():
                rows.append(("demo-frog-bird", r, ok))
        bundle = base384_bundle(work / "base384")
        card = make_card(work / "b384-card", args.segments)
        big = {e: timed_run(card, work / f"b384-{e}", e, [str(bundle)]) for e in ("local", "ray")}
        ok = same_scores(work / "b384-local", work / "b384-ray")
        for e, r in big.items():
            rows.append(("base384 (random)", r, ok))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"CPU: {cpu_name()}; python {sys.version.split()[0]}")
    print(f"Ray engine start-up (ray.init of a local instance): {startup:.1f} s (start + shutdown {start_close:.1f} s)")
    print(f"{'model':<18} {'engine':<6} {'segments':>8} {'batch':>5} {'scoring s':>9} {'seg/s':>7} {'run total s':>11} "
          f"{'identical':>9}")
    for name, r, ok in rows:
        print(f"{name:<18} {r['engine']:<6} {r['segments']:>8} {r['batch_size']:>5} {r['scoring_s']:>9.1f} "
              f"{r['seg_per_s']:>7.2f} {r['total_s']:>11.1f} {str(ok):>9}")
    if not args.skip_demo:
        d = {r["engine"]: r for n, r, _ in rows if n == "demo-frog-bird"}
        print(f"demo model overhead: ray scoring {d['ray']['scoring_s'] / d['local']['scoring_s']:.2f}x local's time, "
              f"whole run {d['ray']['total_s'] / d['local']['total_s']:.2f}x")
    ratio = big["ray"]["seg_per_s"] / big["local"]["seg_per_s"]
    verdict = "PASS" if ratio >= TARGET and ok else "FAIL"
    print(f"scale: base384 local {big['local']['seg_per_s']:.3f} seg/s, ray {big['ray']['seg_per_s']:.3f} seg/s, "
          f"ratio {ratio:.2f} (target >= {TARGET}) {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
