"""``--precision int8`` on a CPU through ONNX Runtime (the ``monitor[int8]`` extra), else torch's own.

Chosen by ``benchmarks/int8.py`` (torch's dynamic quantisation, ONNX Runtime and OpenVINO on the same
model and real recordings): ONNX Runtime's dynamic quantisation (int8 weights per output channel, int8
activations with a range per input) is the fastest int8 on the CPUs measured, the closest to fp32,
and the lightest install (onnxruntime + onnx). The model is exported once per bundle and kept in the
cache (``$MONITOR_CACHE/int8``), keyed by the bundle's weights hash and the runtime's version.

Without the extra, ``prepare_int8`` says so in one log line and uses torch's ``quantize_dynamic``.
Either way a segment is scored alone (the activation range is per input: batch-mates would move it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from monitor.resources import monitor_cache

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'monitor[int8]' (onnxruntime, onnx)"


def available() -> bool:
    """True when ONNX Runtime and its quantisation tools (onnx) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_int8(model, folder: Path, frames: int | None = None, mel: int | None = None) -> tuple[Path, Path]:
    """Export ``model`` (an AST, eval mode) for one ``(1, frames, mel)`` input to ``folder/model.onnx`` and its
    dynamically quantised copy ``folder/model.int8.onnx``; returns both paths."""
    import warnings

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True, exist_ok=True)
    g = model.geometry
    frames, mel = frames or g.input_tdim, mel or g.input_fdim
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, frames, mel),), str(fp32), input_names=["features"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    return fp32, int8


class OrtModel:
    """An ONNX Runtime session that scores like the torch model it came from: ``(1, T, F)`` tensor in,
    float32 logits tensor out (one segment per call)."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        import torch

        out = self.session.run(None, {"features": x.detach().cpu().numpy().astype("float32", copy=False)})[0]
        return torch.from_numpy(out)

    def eval(self) -> "OrtModel":
        return self

    def to(self, device) -> "OrtModel":
        if str(device) != "cpu":
            raise ValueError("int8 (ONNX Runtime) runs on the CPU only")
        return self


def prepare_int8(bundle, model, threads: int):
    """The int8 model for ``bundle`` (``model``: its fp32 torch model): ONNX Runtime when installed
    (exported once into the cache), else torch's dynamic quantisation with a one-line notice."""
    import torch

    if available():
        import onnxruntime as ort

        sha = getattr(bundle, "sha256", "") or ""
        if sha:
            folder = monitor_cache() / "int8" / f"{sha[:32]}-ort{ort.__version__}"
            if not (folder / "model.int8.onnx").is_file():
                log.info("exporting %s to ONNX int8 (once; cached in %s)", getattr(bundle, "name", "model"), folder)
                tmp = folder.with_name(folder.name + f".tmp{__import__('os').getpid()}")
                export_int8(model, tmp)
                try:
                    tmp.rename(folder)
                except OSError:  # another process finished first
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True)
            return OrtModel(folder / "model.int8.onnx", threads), "onnxruntime"
    log.warning("int8 runs on torch's dynamic quantisation (slower); for ONNX Runtime: %s", INSTALL_HINT)
    import warnings

    with warnings.catch_warnings():  # torch marks its eager dynamic quantisation deprecated; it works
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8), "torch"
