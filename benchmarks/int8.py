"""CPU int8 options a user can install, against each other and against fp32, on real recordings.

Same random-weight AST (base384 geometry, stride 10, as the AudioSet model) and the same real 10 s
clips from ``../shared/data`` for every option, one segment per call (int8's dynamic activation range
is per input, so ``monitor`` never batches it: a segment's score must not depend on its batch-mates):

* fp32: monitor's model in torch (eager, SDPA), and the Hugging Face ``ASTForAudioClassification``
  (sdpa) with the same weights: the peer ``int8 >= 2x`` is measured against;
* torch's own dynamic quantisation (``quantize_dynamic``, qint8 Linear layers);
* ONNX Runtime: the model exported to ONNX, fp32, and dynamically quantised (``onnxruntime.quantization
  .quantize_dynamic``, int8 weights per channel, int8 activations per input) - what ``--precision int8``
  uses when ``monitor[int8]`` is installed;
* OpenVINO: the same fp32 ONNX, and the same int8 ONNX, compiled for its CPU plugin.

Accuracy: max |logit - fp32 logit| and max |score - fp32 score| over the clips. Install weight: the
installed size of each runtime's own distributions.

    python benchmarks/int8.py                 # base384, 8 clips (~5 min on 2 cores)
    python benchmarks/int8.py --quick         # tiny224 depth 2, 4 clips

Last line: ``int8: <X>x HF fp32 (onnxruntime), <Y>x (torch), <Z>x (openvino); max |score diff| <D>``
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MONITOR_SHARED", REPO.parent / "shared"))
SIZES = {"tiny224": (192, 3), "base384": (768, 12)}


def installed_mb(*dists: str) -> float:
    total = 0
    for d in dists:
        try:
            for f in md.distribution(d).files or []:
                p = f.locate()
                if os.path.isfile(p):
                    total += os.path.getsize(p)
        except md.PackageNotFoundError:
            return float("nan")
    return total / 2**20


def real_clips(n: int):
    """``n`` real 10 s clips through monitor's front end -> (n, 1024, 128) float32 features."""
    import soundfile as sf

    from monitor.config import Preprocess
    from monitor.frontend import front_end, prepare_wave, stack_waves

    pre = Preprocess()
    pool = sorted((SHARED / "data" / "recordings").rglob("*.wav")) + sorted((SHARED / "data" / "clips" / "bird").glob("*.flac"))
    waves = []
    for p in pool:
        info = sf.info(str(p))
        if info.duration < 5:
            continue
        y, sr = sf.read(str(p), dtype="float32", always_2d=True, frames=int(10 * info.samplerate))
        waves.append(prepare_wave(y, sr, pre)[0])
        if len(waves) == n:
            break
    return front_end(pre)(*stack_waves(waves)).numpy()


def timed(fn, xs: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds per segment (one per call, after one warm-up call) and the stacked logits."""
    fn(xs[:1])
    t0 = time.perf_counter()
    out = [np.asarray(fn(xs[i:i + 1]), dtype=np.float32).reshape(1, -1) for i in range(len(xs))]
    return (time.perf_counter() - t0) / len(xs), np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="base384", choices=list(SIZES))
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.size, args.depth, args.clips = "tiny224", 2, 4
    warnings.filterwarnings("ignore")
    import torch

    from monitor.model.ast import AST
    from monitor.model.checkpoints import from_hf_checkpoint

    threads = torch.get_num_threads()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores, {threads} threads); torch {torch.__version__}; "
          f"{args.size} depth {args.depth or 12} stride 10; {args.clips} real clips, one per call", flush=True)
    from transformers import ASTConfig, ASTForAudioClassification

    dim, heads = SIZES[args.size]
    cfg = ASTConfig(hidden_size=dim, num_attention_heads=heads, intermediate_size=4 * dim,
                    num_hidden_layers=args.depth or 12, frequency_stride=10, time_stride=10, max_length=1024,
                    num_mel_bins=128, num_labels=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = ASTForAudioClassification(cfg).eval()
    ours: AST = from_hf_checkpoint(hf).eval()
    xs = real_clips(args.clips)
    rows = []

    def run_torch(m):
        def f(x):
            with torch.inference_mode():
                out = m(torch.from_numpy(x))
            return (out.logits if hasattr(out, "logits") else out).numpy()
        return f

    rows.append(("HF ASTForAudioClassification fp32 (sdpa)", *timed(run_torch(hf), xs), "transformers"))
    rows.append(("monitor fp32 (torch eager, SDPA)", *timed(run_torch(ours), xs), "-"))
    from monitor.int8 import export_int8

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        tq = quantize_dynamic(ours, {torch.nn.Linear}, dtype=torch.qint8)
    rows.append(("torch dynamic quantisation int8", *timed(run_torch(tq), xs), "torch (built in)"))

    with tempfile.TemporaryDirectory(prefix="monitor-int8-bench-") as tmp:
        t0 = time.perf_counter()
        fp32_onnx, int8_onnx = export_int8(ours, Path(tmp))
        print(f"export to ONNX + dynamic quantisation: {time.perf_counter() - t0:.0f} s; "
              f"{fp32_onnx.stat().st_size / 2**20:.0f} MB fp32, {int8_onnx.stat().st_size / 2**20:.0f} MB int8", flush=True)
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            for name, path in (("ONNX Runtime fp32", fp32_onnx), ("ONNX Runtime dynamic int8 (monitor[int8])", int8_onnx)):
                s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                rows.append((name, *timed(lambda x, s=s: s.run(None, {"features": x})[0], xs), "onnxruntime"))
        except ImportError:
            print("onnxruntime not installed: pip install onnxruntime onnx")
        try:
            import openvino as ov

            core = ov.Core()
            for name, path in (("OpenVINO fp32", fp32_onnx), ("OpenVINO on the dynamic int8 ONNX", int8_onnx)):
                c = core.compile_model(core.read_model(str(path)), "CPU",
                                       {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
                rows.append((name, *timed(lambda x, c=c: c(x)[0], xs), "openvino"))
        except ImportError:
            print("openvino not installed: pip install openvino")

    hf_s, hf_logits = rows[0][1], rows[0][2]
    ref = rows[1][2]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    weights = {"transformers": installed_mb("transformers"), "onnxruntime": installed_mb("onnxruntime", "onnx"),
               "openvino": installed_mb("openvino", "openvino-telemetry"), "torch (built in)": 0.0, "-": 0.0}
    print()
    print(f"{'option':<44} {'s/segment':>10} {'x HF fp32':>10} {'max|dlogit|':>12} {'max|dscore|':>12} {'install MB':>11}")
    for name, s, logits, dist in rows:
        print(f"{name:<44} {s:>10.3f} {hf_s / s:>10.2f} {np.abs(logits - ref).max():>12.4f} "
              f"{np.abs(sig(logits) - sig(ref)).max():>12.4f} {weights[dist]:>11.0f}")
    print(f"(HF vs monitor fp32 logits: {np.abs(hf_logits - ref).max():.1e}: the same weights)")
    by = {r[0]: r for r in rows}
    ort_r = by.get("ONNX Runtime dynamic int8 (monitor[int8])")
    ov_r = by.get("OpenVINO on the dynamic int8 ONNX")
    tq_r = by["torch dynamic quantisation int8"]
    fmt = lambda r: f"{hf_s / r[1]:.2f}x" if r else "n/a"  # noqa: E731
    worst = np.abs(sig(ort_r[2]) - sig(ref)).max() if ort_r else float("nan")
    print(f"int8: {fmt(ort_r)} HF fp32 (onnxruntime), {fmt(tq_r)} (torch), {fmt(ov_r)} (openvino); "
          f"max |score diff| {worst:.4f}")


if __name__ == "__main__":
    sys.exit(main())
