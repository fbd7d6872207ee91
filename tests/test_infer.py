"""The scoring engine's guarantees: a segment's score never depends on its batch-mates (fp32 padded to
one shape, int8 one segment per call), int8 really quantises and stays close to fp32, and the worker
pool returns exactly what in-process decoding returns, in task order."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_wav


@pytest.fixture(scope="module")
def scorers(one_torch_thread, tmp_path_factory):
    import os

    import torch

    old_cache = os.environ.get("MONITOR_CACHE")
    os.environ["MONITOR_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # the int8 export is cached there

    from monitor.config import Preprocess
    from monitor.infer import Scorer, prepare_models
    from monitor.model.ast import AST
    from monitor.model.bundle import Bundle, save_bundle

    torch.manual_seed(0)
    model = AST(label_dim=2, fstride=16, tstride=16, input_fdim=128, input_tdim=1024, model_size="tiny224", depth=2)
    b = save_bundle(tmp_path_factory.mktemp("bundle") / "b", model, name="t", version="0", labels=["a", "b"], task="multilabel",
                    preprocessing=Preprocess(), thresholds={"a": 0.5, "b": 0.5})
    assert isinstance(b, Bundle)
    out = {}
    for prec in ("fp32", "int8"):
        nets, p = prepare_models([b], "cpu", prec)
        out[prec] = Scorer([b], nets, "cpu", p, batch_size=4)
    out["int8-torch"] = Scorer([b], [_torch_int8(b)], "cpu", "int8", batch_size=4)
    out["bundle"] = b
    yield out
    if old_cache is None:
        os.environ.pop("MONITOR_CACHE", None)
    else:
        os.environ["MONITOR_CACHE"] = old_cache


def _torch_int8(bundle):
    """torch's dynamic quantisation: what --precision int8 uses without monitor[int8]."""
    import monitor.int8 as int8

    keep = int8.available
    int8.available = lambda: False
    try:
        return int8.prepare_int8(bundle, bundle.build_model(), 1)[0]
    finally:
        int8.available = keep


def _feats(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1024, 128)).astype(np.float32)


@pytest.mark.parametrize("prec", ["fp32", "int8", "int8-torch"])
def test_score_independent_of_batch_mates(scorers, prec):
    s = scorers[prec]
    x = _feats(0, 1)
    mates_a, mates_b = _feats(1, 3) * 5.0, _feats(2, 2) * 0.1  # very different ranges around it
    alone = s(x)[0]
    with_a = s(np.concatenate([mates_a[:1], x, mates_a[1:]]))[1]
    with_b = s(np.concatenate([x, mates_b]))[0]
    np.testing.assert_array_equal(alone, with_a)
    np.testing.assert_array_equal(alone, with_b)


def test_int8_quantises_and_stays_close(scorers):
    import torch

    from monitor.int8 import OrtModel, available

    net = scorers["int8-torch"].models[0]
    kinds = {type(m).__module__ for m in net.modules() if "Linear" in type(m).__name__}
    assert any("quantized" in k for k in kinds), kinds  # the Linear layers really are int8
    assert not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in net.modules())
    x = _feats(3, 4)
    ref = scorers["fp32"](x)
    for name in ("int8", "int8-torch"):
        d = np.abs(scorers[name](x) - ref)
        assert d.max() < 0.05 and d.max() > 0, name  # quantised (not identical) yet close
    if available():  # monitor[int8]: an ONNX Runtime session on a dynamically quantised graph
        import onnx

        ort_net = scorers["int8"].models[0]
        assert isinstance(ort_net, OrtModel)
        ops = {n.op_type for n in onnx.load(str(ort_net.path)).graph.node}
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops
        assert ort_net.path.is_relative_to(__import__("os").environ["MONITOR_CACHE"])


def test_worker_pool_equals_in_process(tmp_path):
    from monitor.config import BandConfig, Preprocess
    from monitor.decode import WorkerPool
    from monitor.plan import job_from_path, plan_batches

    pre = Preprocess(band=BandConfig(low_hz=200.0, high_hz=6000.0))
    files = [write_wav(tmp_path / f"f{i}.wav", d, sr, freq_hz=700 + 300 * i, noise=0.05, seed=i)
             for i, (d, sr) in enumerate([(25.0, 48000), (12.0, 16000), (31.0, 22050)])]
    plan = plan_batches([job_from_path(p) for p in files], pre, 2, task_samples=500_000)
    assert len(plan.tasks) > 3
    for output in ("features", "waves"):
        with WorkerPool(pre, 0, output) as pool:
            ref = list(pool.results(plan.tasks))
        with WorkerPool(pre, 2, output) as pool:
            got = list(pool.results(plan.tasks))
        assert [r.first for r in got] == [r.first for r in ref] == [t.first for t in plan.tasks]
        assert sum(r.n for r in got) == 3 + 2 + 4
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a.data, b.data)
            assert a.errors == b.errors


def test_default_workers():
    from monitor.decode import default_workers

    assert [default_workers("cpu", c) for c in (1, 2, 3, 4, 16)] == [0, 0, 0, 1, 1]  # the model uses the cores
    assert [default_workers("cuda", c) for c in (1, 2, 8, 16)] == [0, 1, 7, 15]  # the GPU waits for decoding


def test_attention_is_fused_sdpa():
    """timm's Attention calls F.scaled_dot_product_attention (flash / memory-efficient kernels on a GPU)."""
    from monitor.model.ast import AST

    m = AST(label_dim=2, fstride=16, tstride=16, input_tdim=1024, model_size="tiny224", depth=2)
    flags = [a.fused_attn for a in m.modules() if type(a).__name__ == "Attention"]
    assert flags == [True, True]


def test_int8_export_fuses_attention_without_touching_the_model(one_torch_thread, tmp_path):
    """The exported graph has one fused MultiHeadAttention per block, its fp32 logits equal the model's, and the
    model's own (timm) modules are not changed by the export."""
    import onnx
    import torch

    from monitor.int8 import OrtModel, export_int8
    from monitor.model.ast import AST

    torch.manual_seed(1)
    model = AST(label_dim=3, fstride=16, tstride=16, input_fdim=128, input_tdim=1024, model_size="tiny224", depth=2)
    forwards = [type(b.attn).forward for b in model.v.blocks]
    fp32, int8 = export_int8(model, tmp_path)
    ops = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops
    assert all("forward" not in vars(b.attn) for b in model.v.blocks)
    assert [type(b.attn).forward for b in model.v.blocks] == forwards
    x = torch.from_numpy(_feats(3, 1))
    with torch.no_grad():
        ref = model.eval()(x)
    assert float((OrtModel(fp32, 1)(x) - ref).abs().max()) < 1e-5
    q = OrtModel(int8, 1)(x)
    assert 0 < float((q - ref).abs().max()) < 0.1  # really quantised, still close
