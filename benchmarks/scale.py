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
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = 0.85


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=28, help="base384 segments to score (default 28)")
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

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
