"""``--precision int8`` on a CPU through ONNX Runtime (the ``monitor[int8]`` extra), else torch's own.

Chosen by ``benchmarks/int8.py`` (torch's dynamic quantisation, ONNX Runtime and OpenVINO on the same
model and real recordings): ONNX Runtime's dynamic quantisation (int8 weights per output channel, int8
activations with a range per input) is the fastest int8 on the CPUs measured, the closest to fp32,
and the lightest install (onnxruntime + onnx). The model is exported once per bundle and kept in the
cache (``$MONITOR_CACHE/int8``), keyed by the bundle's weights hash and the runtime's version.

Without the extra, ``prepare_int8`` says so in one log line and uses torch's ``quantize_dynamic``.
Either way a segment is scored alone (the activation range is per input: batch-mates would move it).

The export writes each transformer block's attention core as ONNX Runtime's fused ``MultiHeadAttention``
(com.microsoft; fp32, no 5-D transposes, softmax fused) instead of the exported ``scaled_dot_product_attention``
graph of transposes, matmuls and a softmax over a ``heads x tokens x tokens`` tensor. Measured on 2 cores of an
Intel Xeon (Sapphire Rapids class, ``benchmarks/int8.py``): with int8 linear layers the attention core is most of
the time left (the activation-by-activation matmuls stay fp32: quantising them was slower and less exact), and
the fused op cuts it by about a quarter, identical logits to 3e-7. Dynamic quantisation then quantises the
linear layers (``MatMulConstBOnly``: weights int8 per output channel, activations per input).
"""

from __future__ import annotations

import logging
import os
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


EXPORT_VERSION = 3  # 2: attention as com.microsoft MultiHeadAttention; 3: exported from a wrapper module (cache key)


def _mha_function():
    """A torch autograd Function that computes attention from (B, N, C) q, k, v and exports as ONNX Runtime's
    ``com.microsoft::MultiHeadAttention`` (made on first use: torch is imported lazily)."""
    import torch
    from torch import nn

    class MultiHeadAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, heads: int, scale: float):  # noqa: ARG004 - torch's signature
            b, n, c = q.shape

            def split(t):
                return t.reshape(b, n, heads, c // heads).transpose(1, 2)

            o = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), scale=scale)
            return o.transpose(1, 2).reshape(b, n, c)

        @staticmethod
        def symbolic(g, q, k, v, heads: int, scale: float):
            out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads, scale_f=scale)
            out.setType(q.type())  # the output is shaped as the query
            return out

    return MultiHeadAttention


def _plain_block(blk) -> bool:
    """A timm ``Block`` whose attention is plain (no q/k norm, output norm or gate): the export graph below
    computes it exactly."""
    from torch import nn

    a = getattr(blk, "attn", None)
    parts = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    return (type(blk).__name__ == "Block" and all(hasattr(blk, p) for p in parts)
            and hasattr(a, "qkv") and hasattr(a, "proj") and hasattr(a, "num_heads") and hasattr(a, "head_dim")
            and all(isinstance(getattr(a, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm"))
            and getattr(a, "gate", None) is None and a.qkv.out_features == 3 * a.num_heads * a.head_dim)


def export_module(model):
    """The module ``export_int8`` exports: ``model`` itself, or, when every block of its ViT is plain, a
    wrapper that runs the same submodules (nothing of timm's is changed) with each block's attention core as
    one fused ``MultiHeadAttention`` node. (1, T, F) features -> (1, labels) logits, as ``model``."""
    import torch
    from torch import nn

    v = model.v
    if not all(_plain_block(b) for b in v.blocks):
        return model
    mha = _mha_function()

    class FusedAttentionAST(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.unsqueeze(1).transpose(2, 3)  # as AST.forward_features
            x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))
            for blk in v.blocks:
                a = blk.attn
                q, k, w = a.qkv(blk.norm1(x)).split(a.num_heads * a.head_dim, dim=-1)
                x = x + blk.drop_path1(blk.ls1(a.proj(mha.apply(q, k, w, int(a.num_heads), float(a.scale)))))
                x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
            return model.forward_head(v.norm(x))

    return FusedAttentionAST().eval()


def export_int8(model, folder: Path, frames: int | None = None, mel: int | None = None) -> tuple[Path, Path]:
    """Export ``model`` (an AST, eval mode) for one ``(1, frames, mel)`` input to ``folder/model.onnx`` (attention
    fused: ``export_module``) and its dynamically quantised copy ``folder/model.int8.onnx``; returns both paths."""
    import warnings

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True, exist_ok=True)
    g = model.geometry
    frames, mel = frames or g.input_tdim, mel or g.input_fdim
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    model.eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        probe = torch.randn(1, frames, mel, generator=torch.Generator().manual_seed(0))
        module = export_module(model)
        if module is not model and not torch.allclose(module(probe), model(probe), atol=1e-4, rtol=1e-4):
            log.warning("int8 export: the fused-attention graph does not match the model (another timm?); "
                        "exporting the plain graph")
            module = model
        torch.onnx.export(module, (torch.zeros(1, frames, mel),), str(fp32), input_names=["features"],
                          output_names=["logits"], opset_version=17, dynamo=False, custom_opsets={"com.microsoft": 1})
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
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
        # no spin-waiting between calls: in a cascade a second session (and the in-process front end) runs between
        # this session's calls, and a spinning thread pool takes their cores; each call is long (10-500 ms)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
            folder = monitor_cache() / "int8" / f"{sha[:32]}-ort{ort.__version__}-x{EXPORT_VERSION}"
            if not (folder / "model.int8.onnx").is_file():
                log.info("exporting %s to ONNX int8 (once; cached in %s)", getattr(bundle, "name", "model"), folder)
                tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
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
