"""Inference throughput: monitor vs the Hugging Face AST pipeline, same weights, same real audio.

HF side: librosa.load(sr=16000) of each file, 10 s chunks, ``ASTFeatureExtractor`` +
``ASTForAudioClassification`` (attn_implementation="sdpa"), batched. monitor side: ``monitor.run``
(planned batches, decoding and front end in process or in worker processes overlapping the model). Both on
CPU, fp32; and monitor's ``--precision int8`` (ONNX Runtime with ``monitor[int8]``, else torch's own).
Weights: a random HF model converted with ``from_hf_checkpoint``, so logits must agree.

    python benchmarks/inference.py            # base384 geometry (the AudioSet model's), ~4 min audio
    python benchmarks/inference.py --quick    # tiny224, ~1 min audio

Last line: ``inference: <X> segments/s monitor fp32, <Y> segments/s HF, ratio <R>, int8 ratio <R8>``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MONITOR_SHARED", REPO.parent / "shared"))
SIZES = {"tiny224": (192, 3), "small224": (384, 6), "base224": (768, 12), "base384": (768, 12)}


def gather_audio(dst: Path, minutes: float) -> float:
    """Copy real recordings from ../shared/data into ``dst`` until ``minutes`` of audio; returns seconds."""
    import soundfile as sf

    pool = sorted((SHARED / "data" / "recordings").rglob("*.wav")) + sorted((SHARED / "data" / "clips" / "bird").glob("*.flac"))
    total = 0.0
    for p in pool:
        d = sf.info(str(p)).duration
        shutil.copy(p, dst / p.name)
        total += d
        if total >= minutes * 60:
            break
    return total


def hf_model(size: str, stride: int, depth: int | None, labels: int):
    import torch
    from transformers import ASTConfig, ASTForAudioClassification

    dim, heads = SIZES[size]
    cfg = ASTConfig(hidden_size=dim, num_attention_heads=heads, intermediate_size=4 * dim,
                    num_hidden_layers=depth or 12, frequency_stride=stride, time_stride=stride,
                    max_length=1024, num_mel_bins=128, num_labels=labels, attn_implementation="sdpa")
    torch.manual_seed(0)
    return ASTForAudioClassification(cfg).eval()


def hf_end_to_end(files: list[Path], fe, model, batch_size: int) -> tuple[dict, float, int]:
    """librosa load -> 10 s chunks (final >= 1 s kept) -> feature extractor -> model; scores per (file, seg)."""
    import librosa
    import torch

    t0 = time.perf_counter()
    out, n = {}, 0
    for p in files:
        y, _ = librosa.load(str(p), sr=16000, mono=True)
        chunks = [y[i:i + 160000] for i in range(0, len(y), 160000)]
        chunks = [c for c in chunks if len(c) >= 16000]
        for k in range(0, len(chunks), batch_size):
            batch = chunks[k:k + batch_size]
            x = fe(batch, sampling_rate=16000, return_tensors="pt")["input_values"]
            with torch.inference_mode():
                s = torch.sigmoid(model(x).logits).numpy()
            for j, row in enumerate(s):
                out[(p.name, k + j)] = row
            n += len(batch)
    return out, time.perf_counter() - t0, n


WHOLE: dict[str, float] = {}


def monitor_run(inp: Path, out: Path, bundle: Path, batch_size: int, workers: int, precision: str) -> tuple[float, int]:
    """Seconds from the first decoded block to the last score (``run.json`` wall_s: worker start-up,
    decoding, front end, model), the span the HF loop measures; the whole call is kept in WHOLE."""
    from monitor import run

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    info = run(inp, out, models=[str(bundle)], device="cpu", batch_size=batch_size, workers=workers,
               precision=precision, progress=False)
    WHOLE[out.name] = time.perf_counter() - t0
    return float(info.wall_s), int(info.counts["segments"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="base384", choices=list(SIZES))
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=4,
                    help="both sides; on 2 CPU cores base384 costs 1.5-1.65 s/segment at any batch of 2-16")
    ap.add_argument("--workers", type=int, default=None, help="monitor's workers (default: its own CPU default)")
    ap.add_argument("--resample", default="soxr", choices=["soxr", "poly"],
                    help="monitor's resampler for the comparison (HF's librosa.load uses soxr_hq)")
    ap.add_argument("--quick", action="store_true", help="tiny224 and ~1 min of audio")
    ap.add_argument("--rounds", type=int, default=2,
                    help="HF and monitor fp32 timed alternately this many times each; the best of each is kept "
                         "(on a 2-core machine the order alone moved the ratio by ~10 %%)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.minutes = "tiny224", 1.0

    import pandas as pd
    import torch
    from transformers import ASTFeatureExtractor

    from monitor.config import FbankConfig, Preprocess, ResampleConfig
    from monitor.model.bundle import load_bundle, save_bundle
    from monitor.model.checkpoints import from_hf_checkpoint

    labels = ["a", "b"]
    tmp = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    os.environ["MONITOR_CACHE"] = str(tmp / "cache")  # the int8 export goes here, not into the user's cache
    inp = tmp / "card"
    inp.mkdir()
    audio_s = gather_audio(inp, args.minutes)
    files = sorted(inp.iterdir())
    print(f"CPU: {cpu_name()}")
    print(f"audio: {len(files)} real files, {audio_s / 60:.1f} min; geometry {args.size} depth {args.depth or 12}; "
          f"batch {args.batch_size}, monitor resampler {args.resample}; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores")

    rows = []
    # Exact mode mirrors the HF path: its extractor does not subtract the waveform mean, and
    # librosa.load resamples with soxr_hq, which monitor offers as resample.method "soxr".
    pre = Preprocess(fbank=FbankConfig(remove_wave_mean=False),
                     resample=ResampleConfig(method=args.resample))
    hf = hf_model(args.size, 10, args.depth, len(labels))
    ours = from_hf_checkpoint(hf)
    bundle = save_bundle(tmp / "bundle10", ours, name="bench", version="0", labels=labels, task="multilabel",
                         preprocessing=pre, thresholds={k: 0.5 for k in labels}).path
    fe = ASTFeatureExtractor()

    # exact mode: the same fbank input gives the same logits
    import soundfile as sf

    y, sr = sf.read(str(files[0]), dtype="float32", always_2d=True)
    from monitor.frontend import prepare_wave

    wave, _ = prepare_wave(y[: sr * 10], sr, pre)
    x = fe([wave], sampling_rate=16000, return_tensors="pt")["input_values"]
    with torch.inference_mode():
        logit_diff = (hf(x).logits - ours.eval()(x)).abs().max().item()

    from monitor.decode import default_workers

    auto = default_workers("cpu")
    workers = auto if args.workers is None else args.workers
    other = 1 if workers == 0 else 0
    # warm up both sides once, then time them alternately (best of --rounds each): same conditions for both
    hf_end_to_end(files[:1], fe, hf, args.batch_size)
    monitor_run(inp, tmp / "warm", bundle, args.batch_size, 0, "fp32")
    hf_times, fp_times = [], []
    for _ in range(max(1, args.rounds)):
        hf_scores, t, hf_n = hf_end_to_end(files, fe, hf, args.batch_size)
        hf_times.append(t)
        t, fp_n = monitor_run(inp, tmp / "out_fp32", bundle, args.batch_size, workers, "fp32")
        fp_times.append(t)
    hf_s, fp_s = min(hf_times), min(fp_times)
    rows.append(("HF ASTFeatureExtractor + ASTForAudioClassification (sdpa), fp32", hf_n, hf_s))
    rows.append((f"monitor fp32, workers {workers}" + (" (default here)" if workers == auto else ""), fp_n, fp_s))
    o_s, o_n = monitor_run(inp, tmp / f"out_w{other}", bundle, args.batch_size, other, "fp32")
    rows.append((f"monitor fp32, workers {other}" + (" (default here)" if other == auto else ""), o_n, o_s))
    (w0_s, n0), (w1_s, n1) = ((fp_s, fp_n), (o_s, o_n)) if workers == 0 else ((o_s, o_n), (fp_s, fp_n))
    from monitor.infer import prepare_models
    from monitor.int8 import available

    t_exp = time.perf_counter()  # the one-time ONNX export (cached per bundle) is not part of a run's rate
    prepare_models([load_bundle(bundle)], "cpu", "int8")
    t_exp = time.perf_counter() - t_exp
    runtime = "ONNX Runtime" if available() else "torch quantize_dynamic (monitor[int8] not installed)"
    i8_s, i8_n = monitor_run(inp, tmp / "out_int8", bundle, args.batch_size, workers, "int8")
    rows.append((f"monitor int8 ({runtime}), workers {workers}", i8_n, i8_s))

    torch.manual_seed(0)
    from monitor.model.ast import AST

    s16 = AST(label_dim=2, fstride=16, tstride=16, input_tdim=1024, model_size=args.size, depth=args.depth)
    b16 = save_bundle(tmp / "bundle16", s16, name="bench16", version="0", labels=labels, task="multilabel",
                      preprocessing=pre, thresholds={k: 0.5 for k in labels}).path
    s16_s, s16_n = monitor_run(inp, tmp / "out_s16", b16, args.batch_size, workers, "fp32")
    rows.append((f"monitor fp32, stride 16 geometry, workers {workers}", s16_n, s16_s))

    # end-to-end score agreement with HF, and int8 vs fp32 scores
    seg = pd.read_csv(tmp / "out_fp32" / "segments.csv")
    seg8 = pd.read_csv(tmp / "out_int8" / "segments.csv")
    e2e = max(np.abs(np.asarray(hf_scores[(r.file, r.segment)]) - np.array([getattr(r, k) for k in labels])).max()
              for r in seg.itertuples())
    # int8 logit error against fp32 on the real clips
    from monitor.frontend import front_end, stack_waves

    waves = []
    for p in files[:16]:
        y, sr = sf.read(str(p), dtype="float32", always_2d=True)
        waves.append(prepare_wave(y[: sr * 10], sr, pre)[0])
    feats = front_end(pre)(*stack_waves(waves))
    q = prepare_models([load_bundle(bundle)], "cpu", "int8")[0][0]
    with torch.inference_mode():  # int8 scores one segment per call, as monitor.infer.Scorer does
        lf = ours(feats).flatten().numpy()
        lq = torch.cat([q(feats[i:i + 1]) for i in range(len(feats))]).flatten().numpy()
    i8_err, i8_corr = float(np.abs(lf - lq).max()), float(np.corrcoef(lf, lq)[0, 1])

    print()
    print(f"{'path':<75} {'segments':>8} {'time s':>8} {'seg/s':>8}")
    for name, n, s in rows:
        print(f"{name:<75} {n:>8} {s:>8.2f} {n / s:>8.2f}")
    hf_rate, fp_rate, i8_rate = hf_n / hf_s, fp_n / fp_s, i8_n / i8_s
    print()
    print(f"same fbank input, monitor vs HF logits: max abs diff {logit_diff:.2e} (target <= 1e-4)")
    print(f"end to end (WAV -> scores), monitor vs HF: max abs score diff {e2e:.2e} (target <= 1e-3)")
    print(f"int8 vs fp32 logits on {len(waves)} real clips: max abs diff {i8_err:.3f}, correlation {i8_corr:.5f}; "
          f"int8 vs fp32 scores in the run: max abs diff {np.abs(seg[labels].to_numpy() - seg8[labels].to_numpy()).max():.3f}")
    print(f"overlap: decoding in 1 worker process vs in process: {(n1 / w1_s) / (n0 / w0_s):.2f}x "
          f"(default workers on this {os.cpu_count()}-core CPU: {auto})")
    print(f"rounds (alternating, s): HF {', '.join(f'{t:.1f}' for t in hf_times)}; "
          f"monitor fp32 {', '.join(f'{t:.1f}' for t in fp_times)}")
    print(f"int8 model preparation (ONNX export + quantisation, once per bundle, cached): {t_exp:.0f} s")
    print("whole `monitor.run` calls incl. discovery, metadata, store and all reports: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in WHOLE.items() if k != "warm"))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"inference: {fp_rate:.2f} segments/s monitor fp32, {hf_rate:.2f} segments/s HF, "
          f"ratio {fp_rate / hf_rate:.2f}, int8 ratio {i8_rate / hf_rate:.2f}")


if __name__ == "__main__":
    sys.exit(main())
