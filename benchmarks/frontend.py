"""Front-end throughput and memory on one thread: what ``monitor run`` runs vs the naive whole-file path.

Writes a 1 h and a 4 h 48 kHz mono 16-bit WAV and a 20 min 384 kHz one into a temp folder, then, each
in its own subprocess, the faster of two (CPU seconds of that process; peak RSS is its own; threads
pinned to 1 before torch loads):

* production: exactly ``monitor run``'s CPU front end: ``plan.plan_batches`` (batches of 16, decode
  tasks within the decoded-sample budget) and ``decode.decode_task`` on every task (seeking
  ``audio.read_frames`` -> ``frontend.prepare_wave``: mono, sanitise, resample -> ``frontend.FrontEnd``
  on the CPU: band limit, mean removal, Kaldi fbank, pad/crop, normalise), with the time per stage
  (``features``: the ``FrontEnd`` less its band limit);
* naive: ``librosa.load(path, sr=16000)`` of the whole file (soxr HQ; warmed up first), then the same
  ``FrontEnd`` (band limit included when the preprocessing has one) per batch of segments.

Both with the bundled demo model's preprocessing (no band limit; ``poly`` resampling) and with a
200-6000 Hz band. It also times the alternatives for each stage on 60 s of 48 kHz audio.

    python benchmarks/frontend.py            # 1 h, 4 h, 20 min @ 384 kHz (a few minutes, ~2.7 GB temp)
    python benchmarks/frontend.py --quick    # 10 min, 40 min, 2 min @ 384 kHz

Last line: ``frontend: <X>x realtime, <Y>x naive, peak <A> MB (1 h) / <B> MB (4 h)`` (demo preprocessing)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load: one core, as the target is "per core"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

BATCH = 16


def _now() -> float:
    """CPU seconds of this process: per-core throughput, unaffected by other jobs on a shared machine."""
    return time.process_time()


def write_long_wav(path: Path, duration_s: float, sample_rate_hz: int, seed: int = 0) -> Path:
    """Seeded noise + bird-like chirps, 16-bit mono, written 60 s at a time (never held whole)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    block = 60 * sample_rate_hz
    total = int(duration_s * sample_rate_hz)
    with sf.SoundFile(str(path), "w", sample_rate_hz, 1, "PCM_16") as f:
        for a in range(0, total, block):
            n = min(block, total - a)
            t = (a + np.arange(n)) / sample_rate_hz
            chirp = 0.2 * np.sin(2 * np.pi * (2000 + 1500 * np.sin(2 * np.pi * 0.3 * t)) * t)
            f.write((0.05 * rng.standard_normal(n) + chirp * (np.sin(2 * np.pi * 0.1 * t) > 0.5)).astype(np.float32))
    return path


def _pre(band: tuple[float, float] | None, method: str):
    from monitor.config import BandConfig, Preprocess, ResampleConfig

    band_cfg = BandConfig(low_hz=band[0], high_hz=band[1]) if band else BandConfig()
    return Preprocess(band=band_cfg, resample=ResampleConfig(method=method))


def _peak_rss_mb() -> float:
    """This process's own peak RSS (Linux ``VmHWM``). Not ``ru_maxrss``: a child spawned by a big parent
    inherits the parent's RSS at spawn time in ``ru_maxrss`` (Linux keeps it across exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # elsewhere: KiB on Linux, bytes on macOS


# (module, attribute, label): patched where production code looks them up (names imported into a module
# are that module's attributes; module stages are class attributes)
STAGES = (("monitor.decode", "read_frames", "read"), ("monitor.frontend", "resample", "resample"),
          ("monitor.frontend", "BandLimit.forward", "band"), ("monitor.frontend", "FrontEnd.forward", "frontend"))


def _time_stages() -> dict[str, float]:
    """Wrap the production stages to add up their CPU seconds (the benchmark's own instrumentation)."""
    import importlib

    acc: dict[str, float] = {}
    for mod_name, attr, label in STAGES:
        owner = importlib.import_module(mod_name)
        *path, name = attr.split(".")
        for p in path:
            owner = getattr(owner, p)
        fn = getattr(owner, name)

        def timed(*a, _fn=fn, _label=label, **k):
            t = _now()
            try:
                return _fn(*a, **k)
            finally:
                acc[_label] = acc.get(_label, 0.0) + _now() - t

        setattr(owner, name, timed)
    return acc


def child_production(path: str, band, method: str) -> dict:
    """``monitor run``'s CPU front end over one file; per-stage seconds, audio seconds, peak RSS."""
    import torch

    torch.set_num_threads(1)
    from monitor.decode import decode_task
    from monitor.plan import job_from_path, plan_batches

    pre = _pre(band, method)
    plan = plan_batches([job_from_path(path)], pre, BATCH)
    decode_task(plan.tasks[0], pre)  # warm-up: filters, mel banks, FFT plans
    acc = _time_stages()
    t0, w0 = _now(), time.perf_counter()
    n_seg, audio_s = 0, 0.0
    for task in plan.tasks:
        rows = decode_task(task, pre)
        n_seg += rows.n
        audio_s += sum((b - a) / sp.sample_rate_hz for sp in task.spans for _, a, b in sp.bounds)
    wall = _now() - t0
    return {"wall_s": wall, "real_s": time.perf_counter() - w0, "audio_s": audio_s, "segments": n_seg,
            "stages": acc, "peak_mb": _peak_rss_mb()}


def child_naive(path: str, warm_path: str, band) -> dict:
    """librosa.load of the whole file at 16 kHz (after a warm-up load), then the same ``FrontEnd`` (band
    limit included) per batch of segments."""
    import librosa
    import torch

    torch.set_num_threads(1)
    from monitor.frontend import front_end, stack_waves

    pre = _pre(band, "poly")
    front = front_end(pre)
    y, _ = librosa.load(warm_path, sr=16000)  # warm-up: imports, resampler
    front(*stack_waves([y[:160000]] * 2))
    t0, w0 = _now(), time.perf_counter()
    y, _ = librosa.load(path, sr=16000)
    t_load = _now() - t0
    chunks = [y[i:i + 160000] for i in range(0, len(y), 160000)]
    chunks = [c for c in chunks if len(c) >= 16000]
    for k in range(0, len(chunks), BATCH):
        front(*stack_waves(chunks[k:k + BATCH]))
    wall = _now() - t0
    return {"wall_s": wall, "real_s": time.perf_counter() - w0, "audio_s": len(y) / 16000, "segments": len(chunks),
            "load_s": t_load, "peak_mb": _peak_rss_mb()}


def _best_ms(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = _now()
        fn()
        times.append(_now() - t0)
    return 1e3 * min(times)


def child_alternatives() -> dict:
    """Per-stage alternatives on 60 s of 48 kHz audio cut in six 10 s segments (ms per 60 s)."""
    import torch

    torch.set_num_threads(1)
    from scipy.signal import butter, sosfiltfilt

    from monitor.audio import resample
    from monitor.features import KaldiFbank, mel_banks
    from monitor.frontend import BandLimit, bandpass

    rng = np.random.default_rng(1)
    segs48 = [(0.1 * rng.standard_normal(480000)).astype(np.float32) for _ in range(6)]
    out: dict[str, float] = {}
    out["resample poly (production: banded matrix product)"] = _best_ms(
        lambda: [resample(s, 48000, 16000, "poly") for s in segs48])
    from scipy.signal import resample_poly

    out["resample poly (scipy resample_poly)"] = _best_ms(lambda: [resample_poly(s, 1, 3) for s in segs48])

    def conv1d_decimate(x: np.ndarray) -> np.ndarray:  # the strided conv1d used before (oneDNN)
        from monitor.audio import _poly_filter

        h = _poly_filter(1, 3)
        half = (len(h) - 1) // 2
        xt = torch.nn.functional.pad(torch.from_numpy(x)[None, None], (half, half))
        return torch.nn.functional.conv1d(xt, torch.from_numpy(h[::-1].copy())[None, None], stride=3)[0, 0].numpy()

    out["resample poly (strided torch conv1d, before)"] = _best_ms(lambda: [conv1d_decimate(s) for s in segs48])
    try:
        import soxr  # noqa: F401

        out["resample soxr HQ"] = _best_ms(lambda: [resample(s, 48000, 16000, "soxr") for s in segs48])
    except ImportError:
        pass
    segs16 = [resample(s, 48000, 16000) for s in segs48]
    out["band 200-6000 Hz after resampling (16 kHz)"] = _best_ms(lambda: [bandpass(s, 16000, 200, 6000) for s in segs16])
    out["band 200-6000 Hz before resampling (48 kHz)"] = _best_ms(lambda: [bandpass(s, 48000, 200, 6000) for s in segs48])
    batch = torch.from_numpy(np.stack(segs16))
    band_torch = BandLimit(16000, 200, 6000, backend="torch")
    out["band 200-6000 Hz, the GPU's kernel (float64 FFT convolution) on the CPU"] = _best_ms(lambda: band_torch(batch))
    fbank, fbank_torch = KaldiFbank(), KaldiFbank(backend="torch")
    out["fbank batched, float64 FFT (default)"] = _best_ms(lambda: fbank(batch))
    out["fbank one call per segment"] = _best_ms(lambda: [fbank(s[None]) for s in batch])
    out["fbank batched, the GPU's kernel (torch FFT) on the CPU"] = _best_ms(lambda: fbank_torch(batch))

    sos = butter(6, [200, 6000], btype="bandpass", fs=16000, output="sos")
    bank = mel_banks(128, 512, 16000.0)

    def fbank_variant(x: torch.Tensor, fft_dtype: torch.dtype, mel: torch.Tensor) -> torch.Tensor:
        fr = x.unfold(-1, 400, 160)
        fr = fr - fr.mean(-1, keepdim=True)
        fr = (fr - 0.97 * torch.cat([fr[..., :1], fr[..., :-1]], dim=-1)) * fbank.window
        spec = torch.fft.rfft(fr.to(fft_dtype), n=512)
        power = (spec.real.square() + spec.imag.square()).float()
        return (power @ mel.T).clamp_min(float(torch.finfo(torch.float32).eps)).log()

    out["fbank batched, float32 FFT"] = _best_ms(lambda: fbank_variant(batch, torch.float32, bank))
    from scipy.signal import sosfreqz

    _, h = sosfreqz(sos, worN=np.arange(257) * 16000 / 512, fs=16000)
    folded = bank * torch.from_numpy(np.abs(h) ** 4).float()  # zero-phase |H|^2 on amplitude -> |H|^4 on power
    out["band inside fbank (|H|^4 folded into the mel matrix)"] = _best_ms(
        lambda: fbank_variant(batch, torch.float64, folded))
    ref = fbank(torch.from_numpy(np.stack([sosfiltfilt(sos, s).astype(np.float32) for s in segs16])))
    got = fbank_variant(batch, torch.float64, folded)
    out["  (folded band vs time-domain band: mean |diff| of log-mel)"] = float((got - ref).abs().mean())
    return out


def _run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _best(args: list[str], runs: int = 2) -> dict:
    """The fastest of ``runs`` fresh children (CPU time on a shared VM varies by ~10 % run to run)."""
    return min((_run_child(args) for _ in range(runs)), key=lambda r: r["wall_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 min / 40 min / 2 min files instead of 1 h / 4 h / 20 min")
    ap.add_argument("--method", default="poly", choices=["poly", "soxr"], help="resampler of the production chain")
    ap.add_argument("--band", type=float, nargs=2, default=[200.0, 6000.0], metavar=("LOW_HZ", "HIGH_HZ"),
                    help="the band-limited case (default 200 6000)")
    ap.add_argument("--tmp", type=Path, default=None, help="where to write the test files (default: system temp)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "prod":
            band = None if rest[1] == "none" else tuple(float(v) for v in rest[1].split(","))
            res = child_production(rest[0], band, rest[2])
        elif kind == "naive":
            band = None if rest[2] == "none" else tuple(float(v) for v in rest[2].split(","))
            res = child_naive(rest[0], rest[1], band)
        else:
            res = child_alternatives()
        print(json.dumps(res))
        return

    import platform

    short, long_, hi = (600, 2400, 120) if args.quick else (3600, 14400, 1200)
    band_arg = f"{args.band[0]},{args.band[1]}"
    label = lambda s: f"{s / 3600:g} h" if s >= 3600 else f"{s / 60:g} min"  # noqa: E731
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores; one thread used); {platform.python_version()}")
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="monitor-frontend-bench-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        f1 = write_long_wav(tmp_path / "a_48k.wav", short, 48000, seed=1)
        f4 = write_long_wav(tmp_path / "b_48k.wav", long_, 48000, seed=2)
        f384 = write_long_wav(tmp_path / "c_384k.wav", hi, 384000, seed=3)
        warm = write_long_wav(tmp_path / "warm.wav", 10, 48000, seed=4)
        os.sync()  # flush the ~2.7 GB just written: writeback would otherwise run under the timed children
        print(f"wrote test files in {time.perf_counter() - t0:.0f} s "
              f"({label(short)} + {label(long_)} @ 48 kHz, {label(hi)} @ 384 kHz)", flush=True)

        alt = _run_child(["alternatives"])
        print("\nstage alternatives, one thread, ms per 60 s of 48 kHz audio (best of 5):")
        for k, v in alt.items():
            print(f"  {k:<62} {v:9.3f}" if k.startswith("  ") else f"  {k:<62} {v:7.1f} ms")

        rows = {}
        for name, path, band in ((label(short), f1, "none"), (label(long_), f4, "none"),
                                 (f"{label(hi)} @ 384 kHz", f384, "none"), (f"{label(short)}, band", f1, band_arg)):
            rows[name] = _best(["prod", str(path), band, args.method])
        naive = _best(["naive", str(f1), str(warm), "none"])
        naive_band = _best(["naive", str(f1), str(warm), band_arg])

    print(f"\nproduction front end (decode.decode_task over plan.plan_batches, resample={args.method}), one thread:")
    for name, r in rows.items():
        st = r["stages"]
        print(f"  {name:<18} {r['audio_s'] / r['wall_s']:6.0f}x realtime  {r['wall_s']:6.1f} s  (read {st.get('read', 0):.1f} s, "
              f"resample {st.get('resample', 0):.1f} s, band {st.get('band', 0):.1f} s, "
              f"features {st.get('frontend', 0) - st.get('band', 0):.1f} s)  "
              f"{r['segments']} segments  peak RSS {r['peak_mb']:.0f} MB")
    for nm, nv in (("no band", naive), (f"band {band_arg.replace(',', '-')} Hz", naive_band)):
        print(f"naive librosa.load + per-segment features, {label(short)}, {nm}: {nv['audio_s'] / nv['wall_s']:.0f}x "
              f"realtime ({nv['wall_s']:.1f} s, load {nv['load_s']:.1f} s), peak RSS {nv['peak_mb']:.0f} MB")
    r1, r4, rb = rows[label(short)], rows[label(long_)], rows[f"{label(short)}, band"]
    print(f"with the band: {rb['audio_s'] / rb['wall_s']:.0f}x realtime, {naive_band['wall_s'] / rb['wall_s']:.2f}x naive")
    print(f"frontend: {r1['audio_s'] / r1['wall_s']:.0f}x realtime, {naive['wall_s'] / r1['wall_s']:.2f}x naive, "
          f"peak {r1['peak_mb']:.0f} MB ({label(short)}) / {r4['peak_mb']:.0f} MB ({label(long_)})")


if __name__ == "__main__":
    main()
