"""Peak memory of `monitor run`: one long file (1 h vs 4 h) and many tiny files (500 vs 5,000).

Each run is a separate `monitor run` process; its peak RSS is its own ``VmHWM`` at exit (or a worker's
peak, if higher), written out by a small wrapper. Not the spawner's ``RUSAGE_CHILDREN``: Linux carries
the spawning process's RSS into a child's ``ru_maxrss``, and the spawner here holds torch. Flat memory
means the 4 h run peaks within ~10 % of the 1 h run and 5,000 files within ~10 % of 500 files. A tiny
random AST bundle keeps the model's share small, so the figures show the pipeline's own footprint
(decoding, front end, store, reports).

    python benchmarks/memory.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_long(path: Path, hours: float, sr: int = 48000) -> None:
    """Seeded noise + tones, written in blocks (the writer never holds the whole file either)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    block = sr * 60
    with sf.SoundFile(str(path), "w", sr, 1, subtype="PCM_16") as f:
        for k in range(int(hours * 60)):
            t = (np.arange(block) + k * block) / sr
            f.write((0.05 * rng.standard_normal(block) + 0.1 * np.sin(2 * np.pi * (500 + 10 * k) * t)).astype(np.float32))


def write_tiny(folder: Path, n: int, sr: int = 16000) -> None:
    import soundfile as sf

    rng = np.random.default_rng(1)
    for i in range(n):
        sub = folder / f"{i // 500:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        sf.write(str(sub / f"{i:05d}.wav"), (0.1 * rng.standard_normal(int(1.5 * sr))).astype(np.float32), sr,
                 subtype="PCM_16")


def tiny_bundle(path: Path) -> Path:
    import torch

    from monitor.config import Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle

    torch.manual_seed(0)
    m = AST(2, 16, 16, 128, 1024, "tiny224", depth=1)
    return save_bundle(path, m, name="bench", version="0", labels=["a", "b"], task="multilabel",
                       preprocessing=Preprocess(), thresholds={"a": 0.5, "b": 0.5}).path


_WRAP = """
import atexit, os, resource, runpy, sys
def _peak():
    with open("/proc/self/status", encoding="ascii") as fh:
        own = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # a worker's peak, or own RSS at its spawn
    with open(os.environ["MONITOR_BENCH_PEAK"], "w") as fh:
        fh.write(str(max(own, workers)))
atexit.register(_peak)
sys.argv = ["monitor", *sys.argv[1:]]
runpy.run_module("monitor", run_name="__main__", alter_sys=True)
"""


def peak_run(inp: Path, out: Path, bundle: Path, workers: int) -> tuple[float, float]:
    """(peak RSS MB, wall s) of one `monitor run` child process."""
    peak_file = out.parent / "peak_kb.txt"
    t0 = time.perf_counter()
    code = subprocess.call([sys.executable, "-c", _WRAP, "run", str(inp), "--out", str(out), "--model", str(bundle),
                            "--workers", str(workers), "--batch-size", "16"], stdout=subprocess.DEVNULL,
                           env=dict(os.environ, OMP_NUM_THREADS="2", MONITOR_BENCH_PEAK=str(peak_file)))
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"monitor run failed on {inp}")
    return int(peak_file.read_text()) / 1024, wall


def one_case(kind: str, size: float, workers: int) -> None:
    """Child mode: build the input, run monitor once, print 'peak wall'."""
    tmp = Path(tempfile.mkdtemp(prefix="monitor-mem-"))
    inp = tmp / "card"
    inp.mkdir()
    if kind == "long":
        write_long(inp / "long.wav", size)
    else:
        write_tiny(inp, int(size))
    bundle = tiny_bundle(tmp / "bundle")
    peak, wall = peak_run(inp, tmp / "out", bundle, workers)
    print(f"{peak:.1f} {wall:.1f}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="15 min vs 1 h, 100 vs 1,000 files")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        return one_case(args.case[0], float(args.case[1]), args.workers)
    long_sizes = (0.25, 1.0) if args.quick else (1.0, 4.0)
    tiny_sizes = (100, 1000) if args.quick else (500, 5000)
    rows = []
    for kind, sizes, unit in (("long", long_sizes, "h at 48 kHz"), ("tiny", tiny_sizes, "files of 1.5 s")):
        for s in sizes:
            out = subprocess.run([sys.executable, __file__, "--workers", str(args.workers), "--case", kind, str(s)],
                                 capture_output=True, text=True, check=True).stdout.split()
            rows.append((kind, s, unit, float(out[0]), float(out[1])))
    print(f"{'case':<26} {'peak RSS MB':>12} {'wall s':>8}")
    for kind, s, unit, peak, wall in rows:
        print(f"{s:g} {unit:<20} {peak:>12.0f} {wall:>8.1f}")
    l1, l4, t1, t5 = (r[3] for r in rows)
    print(f"memory: peak {l1:.0f} MB ({long_sizes[0]:g} h) / {l4:.0f} MB ({long_sizes[1]:g} h), "
          f"{t1:.0f} MB ({tiny_sizes[0]} files) / {t5:.0f} MB ({tiny_sizes[1]} files)")


if __name__ == "__main__":
    main()
