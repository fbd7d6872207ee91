"""GPU throughput of ``monitor run`` on a generated AudioMoth-like card, against the Hugging Face pipeline.

One prepared script for a machine with a GPU (it also runs on a CPU with small sizes, to prove it works):

1. the dense bf16 matrix rate of this GPU (the peak the model's share is quoted against);
2. a card of ``--hours`` of 48 kHz 16-bit mono WAV in ``--file-hours`` files named like an AudioMoth's;
3. ``monitor run`` on it as a subprocess (the real CLI, defaults: every GPU, auto batch size, auto
   precision, workers = cores - 1), with a random-weight bundle of the base384 geometry at stride 10
   (the AudioSet model's) and at stride 16: end-to-end segments/s from ``run.json``;
4. the model alone on the GPU (same precision and batch size): segments/s, TFLOP/s (counted by
   ``torch.utils.flop_counter``) and share of the measured bf16 peak;
5. decoding + resampling (what a worker does with a GPU) segments/s on one CPU core, and the CPU-only
   front end per core for comparison;
6. the batched GPU front end (band, fbank, normalise) segments/s;
7. the HF pipeline on the same GPU over ``--hf-hours`` of the card: load + soxr HQ (``librosa.load``'s
   resampler) + ``ASTFeatureExtractor`` on the CPU, ``ASTForAudioClassification`` (sdpa, same dtype) on the GPU.

    python benchmarks/gpu.py                              # 20 h card, base384; ~5 min on an H100/H200
    python benchmarks/gpu.py --device cpu --quick         # tiny sizes on a CPU: checks the script (~2 min)

Last line: ``gpu: <E> segments/s end to end, <M> segments/s model, <P> % of bf16 peak, <R>x HF`` (stride 10).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

SIZES = {"tiny224": (192, 3), "small224": (384, 6), "base224": (768, 12), "base384": (768, 12)}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak_tflops(device: str, seconds: float = 3.0) -> tuple[float, str]:
    """Dense matrix rate: bf16 8192^3 on a GPU, fp32 2048^3 on a CPU (TFLOP/s, dtype)."""
    import torch

    cuda = device.startswith("cuda")
    n, dtype = (8192, torch.bfloat16) if cuda else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
        if k % 10 == 0:
            _sync(device)
    _sync(device)
    return 2 * n ** 3 * k / (time.perf_counter() - t0) / 1e12, str(dtype).replace("torch.", "")


def _write_one(args: tuple[str, float, int, int]) -> None:
    """One AudioMoth-like file: seeded noise, a chirping 'bird' now and then, 16-bit mono, 60 s blocks."""
    import soundfile as sf

    path, seconds, sr, seed = args
    rng = np.random.default_rng(seed)
    block, total = 60 * sr, int(seconds * sr)
    with sf.SoundFile(path, "w", sr, 1, "PCM_16") as f:
        for a in range(0, total, block):
            n = min(block, total - a)
            t = (a + np.arange(n, dtype=np.float64)) / sr
            chirp = 0.2 * np.sin(2 * np.pi * (2500 + 1500 * np.sin(2 * np.pi * 0.3 * t)) * t)
            gate = np.sin(2 * np.pi * 0.01 * t + seed) > 0.7
            f.write((0.03 * rng.standard_normal(n) + chirp * gate).astype(np.float32))


def write_card(root: Path, hours: float, file_hours: float, sr: int = 48000) -> list[Path]:
    """``hours`` of audio in files of ``file_hours``, named ``YYYYMMDD_HHMMSS.WAV`` (written in parallel)."""
    import multiprocessing as mp

    root.mkdir(parents=True, exist_ok=True)
    n_files = max(1, int(round(hours / file_hours)))
    start = datetime(2025, 5, 1, 18, 0, 0)
    jobs = [(str(root / f"{(start + timedelta(hours=i * file_hours)):%Y%m%d_%H%M%S}.WAV"), file_hours * 3600, sr, i)
            for i in range(n_files)]
    with mp.get_context("spawn").Pool(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        pool.map(_write_one, jobs)
    return [Path(j[0]) for j in jobs]


def make_bundle(dst: Path, size: str, stride: int, depth: int | None) -> Path:
    import torch

    from monitor.config import Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle

    torch.manual_seed(0)
    model = AST(label_dim=2, fstride=stride, tstride=stride, input_tdim=1024, model_size=size, depth=depth)
    return save_bundle(dst, model, name=f"bench-{size}-s{stride}", version="0", labels=["a", "b"],
                       task="multilabel", preprocessing=Preprocess(), thresholds={"a": 0.5, "b": 0.5}).path


def monitor_run(card: Path, out: Path, bundle: Path, device: str, batch_size: str, workers: str | None,
                precision: str, extra: list[str]) -> dict:
    """The real CLI in a subprocess; returns run.json plus the whole command's wall time."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "monitor", "run", str(card), "--out", str(out), "--model", str(bundle),
           "--device", device, "--batch-size", batch_size, "--precision", precision, *extra]
    if workers is not None:
        cmd += ["--workers", workers]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    whole = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"monitor run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    info = json.loads((out / "run.json").read_text())
    info["whole_s"] = whole
    return info


def model_only(bundle: Path, device: str, precision: str, batch_size: int, seconds: float) -> tuple[float, float]:
    """(segments/s, FLOP per segment) of the model alone on ``device``, through the run's own Scorer."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from monitor.device import set_matmul_policy
    from monitor.infer import Scorer, prepare_models
    from monitor.model.bundle import load_bundle

    set_matmul_policy()
    b = load_bundle(str(bundle))
    nets, prec = prepare_models([b], device, precision)
    scorer = Scorer([b], nets, device, prec, batch_size)
    x = np.random.default_rng(0).standard_normal((batch_size, 1024, 128)).astype(np.float32)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        nets[0](torch.from_numpy(x[:1]).to(device))
    flops = float(fc.get_total_flops())
    xd = torch.from_numpy(x).to(device)
    from monitor.device import autocast_dtype

    def step():
        with torch.inference_mode():
            if autocast_dtype(prec) is not None:
                with torch.autocast(torch.device(device).type, dtype=autocast_dtype(prec)):
                    return nets[0](xd)
            return nets[0](xd)

    for _ in range(2):
        step()
    _sync(device)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or k < 2:
        step()
        k += 1
    _sync(device)
    del scorer
    return batch_size * k / (time.perf_counter() - t0), flops


def decode_rate(files: list[Path], output: str, max_tasks: int = 40) -> float:
    """Segments/s of ``decode.decode_task`` on one core (this process pinned to one thread)."""
    import torch

    from monitor.config import Preprocess
    from monitor.decode import decode_task
    from monitor.plan import job_from_path, plan_batches

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pre = Preprocess()
        plan = plan_batches([job_from_path(files[0])], pre, 16)
        tasks = plan.tasks[:max_tasks]
        decode_task(tasks[0], pre, output)
        t0, n = time.process_time(), 0
        for t in tasks:
            n += decode_task(t, pre, output).n
        return n / (time.process_time() - t0)
    finally:
        torch.set_num_threads(n_threads)


def gpu_frontend_rate(files: list[Path], device: str, batch: int, seconds: float) -> float:
    """Segments/s of ``frontend.FrontEnd`` on the device, on a batch of 16 kHz waves already there."""
    import torch

    from monitor.config import Preprocess
    from monitor.decode import decode_task
    from monitor.frontend import front_end
    from monitor.plan import job_from_path, plan_batches

    pre = Preprocess()
    plan = plan_batches([job_from_path(files[0])], pre, batch)
    rows = decode_task(plan.tasks[0], pre, "waves")
    waves = torch.from_numpy(np.resize(rows.data, (batch, rows.data.shape[1]))).to(device)
    lengths = [waves.shape[1]] * batch
    front = front_end(pre, device)
    with torch.inference_mode():
        front(waves, lengths)
        _sync(device)
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or k < 2:
            front(waves, lengths)
            k += 1
        _sync(device)
    return batch * k / (time.perf_counter() - t0)


def hf_pipeline(files: list[Path], hours: float, size: str, stride: int, depth: int | None, device: str,
                precision: str, batch: int) -> tuple[float, int]:
    """The HF peer on the same device: load + soxr HQ to 16 kHz (what ``librosa.load(sr=16000)`` does) ->
    ``ASTFeatureExtractor`` (CPU) -> ``ASTForAudioClassification`` (sdpa)."""
    import soundfile as sf
    import soxr
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    from monitor.device import autocast_dtype

    dim, heads = SIZES[size]
    cfg = ASTConfig(hidden_size=dim, num_attention_heads=heads, intermediate_size=4 * dim,
                    num_hidden_layers=depth or 12, frequency_stride=stride, time_stride=stride, max_length=1024,
                    num_mel_bins=128, num_labels=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = ASTForAudioClassification(cfg).eval().to(device)
    dtype = autocast_dtype(precision)
    if dtype is not None:
        model = model.to(dtype)
    fe = ASTFeatureExtractor()
    budget_s, n = hours * 3600, 0
    t0 = time.perf_counter()
    for p in files:
        info = sf.info(str(p))
        y, sr = sf.read(str(p), dtype="float32", frames=int(min(budget_s, info.duration) * info.samplerate))
        y = soxr.resample(y if y.ndim == 1 else y.mean(axis=1), sr, 16000, quality="HQ")
        chunks = [y[i:i + 160000] for i in range(0, len(y), 160000)]
        chunks = [c for c in chunks if len(c) >= 16000]
        for k in range(0, len(chunks), batch):
            x = fe(chunks[k:k + batch], sampling_rate=16000, return_tensors="pt")["input_values"].to(device)
            if dtype is not None:
                x = x.to(dtype)
            with torch.inference_mode():
                torch.sigmoid(model(x).logits.float()).cpu()
            n += len(chunks[k:k + batch])
        budget_s -= len(y) / 16000
        if budget_s <= 0:
            break
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--hours", type=float, default=20.0, help="audio on the generated card")
    ap.add_argument("--file-hours", type=float, default=1.0, help="length of each file")
    ap.add_argument("--hf-hours", type=float, default=1.0, help="audio the HF pipeline scores")
    ap.add_argument("--size", default="base384", choices=list(SIZES))
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--strides", type=int, nargs="+", default=[10, 16])
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--workers", default=None, help="monitor's --workers (default: its own)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true", help="also run stride 10 with --compile")
    ap.add_argument("--seconds", type=float, default=10.0, help="timing window of the model-only and front-end loops")
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the card and outputs")
    ap.add_argument("--quick", action="store_true",
                    help="tiny224 depth 1, 6 min of audio in 3 min files, 1 min for HF, 2 s loops (a CPU check)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.depth, args.hours, args.file_hours, args.hf_hours, args.seconds = \
            "tiny224", 1, 0.1, 0.05, 0.02, 2.0
        if args.batch_size == "auto" and args.device == "cpu":
            args.batch_size = "8"

    import torch

    from monitor.device import resolve_precision

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --device cpu --quick to check the script")
    precision = resolve_precision(args.precision, device)
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "none"
    n_gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    print(f"device: {device} ({gpu}, {n_gpus} GPU(s)); CPU: {cpu_name()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}; precision {precision}; geometry {args.size} depth {args.depth or 12}", flush=True)

    peak, peak_dtype = matmul_peak_tflops(device)
    print(f"measured dense {peak_dtype} matmul peak: {peak:.1f} TFLOP/s", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="monitor-gpu-bench-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        files = write_card(tmp / "card", args.hours, args.file_hours)
        os.sync()
        print(f"card: {len(files)} files, {args.hours:g} h of 48 kHz 16-bit mono, written in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)

        rows, first = [], None
        for stride in args.strides:
            bundle = make_bundle(tmp / f"bundle{stride}", args.size, stride, args.depth)
            variants = [("", [])] + ([(" --compile", ["--compile"])] if args.compile and stride == args.strides[0] else [])
            for tag, extra in variants:
                info = monitor_run(tmp / "card", tmp / f"out{stride}{tag.strip()}", bundle, device, args.batch_size,
                                   args.workers, args.precision, extra)
                seg = info["counts"]["segments"]
                e2e = seg / info["wall_s"]
                rows.append((f"monitor run, stride {stride}{tag}", seg, info["wall_s"], e2e, info["whole_s"]))
                print(f"  monitor run stride {stride}{tag}: {seg} segments in {info['wall_s']:.1f} s "
                      f"({e2e:.0f} segments/s; whole command {info['whole_s']:.1f} s)", flush=True)
                if first is None:
                    first = (stride, bundle, e2e)

        stride, bundle, e2e = first
        if args.batch_size == "auto":
            from monitor.engine import LocalEngine
            from monitor.model.bundle import load_bundle

            with LocalEngine([load_bundle(str(bundle))], device=device, precision=args.precision, workers=0) as eng:
                eng.scorers()
                bs = int(eng.batch_size)
        else:
            bs = int(args.batch_size)
        m_rate, flops = model_only(bundle, device, precision, bs, args.seconds)
        tflops = m_rate * flops / 1e12
        print(f"  model alone, stride {stride}, batch {bs}: {m_rate:.0f} segments/s, {flops / 1e9:.0f} GFLOP/segment, "
              f"{tflops:.1f} TFLOP/s = {100 * tflops / peak:.0f} % of the measured {peak_dtype} peak", flush=True)
        dec_w = decode_rate(files, "waves")
        dec_f = decode_rate(files, "features")
        print(f"  one CPU core: decode + resample (a GPU run's worker) {dec_w:.0f} segments/s; "
              f"whole CPU front end {dec_f:.0f} segments/s", flush=True)
        fe_rate = gpu_frontend_rate(files, device, min(bs, 64), args.seconds)
        print(f"  batched front end on {device} (band, fbank, normalise): {fe_rate:.0f} segments/s", flush=True)
        hf_rate, hf_n = hf_pipeline(files, args.hf_hours, args.size, stride, args.depth, device, precision,
                                    min(bs, 64))
        print(f"  HF pipeline, stride {stride}, {hf_n} segments: {hf_rate:.1f} segments/s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'what':<44} {'segments':>9} {'s':>8} {'seg/s':>9}")
    for name, n, s, r, _ in rows:
        print(f"{name:<44} {n:>9} {s:>8.1f} {r:>9.1f}")
    print(f"{'model alone (stride %d, batch %d)' % (stride, bs):<44} {'':>9} {'':>8} {m_rate:>9.1f}")
    print(f"{'decode + resample, one CPU core':<44} {'':>9} {'':>8} {dec_w:>9.1f}")
    print(f"{'GPU front end' if device != 'cpu' else 'torch front end (CPU)':<44} {'':>9} {'':>8} {fe_rate:>9.1f}")
    print(f"{'HF pipeline (stride %d)' % stride:<44} {hf_n:>9} {'':>8} {hf_rate:>9.1f}")
    if device.startswith("cuda"):
        print(f"targets: end to end >= 1000 segments/s: {e2e:.0f}; model >= 40 % of peak: {100 * tflops / peak:.0f} %; "
              f">= 5x HF: {e2e / hf_rate:.1f}x; 72 h card (25,920 segments) in {25920 / e2e:.0f} s")
    print(f"gpu: {e2e:.0f} segments/s end to end, {m_rate:.0f} segments/s model, {100 * tflops / peak:.0f} % of "
          f"{peak_dtype} peak, {e2e / hf_rate:.1f}x HF")


if __name__ == "__main__":
    main()
