"""Model bundles: round trip, fp16 storage, validation on load, name resolution, listing."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from monitor.config import BandConfig, FbankConfig, Preprocess, SegmentConfig
from monitor.errors import BundleError
from monitor.infer import to_scores
from monitor.model.ast import AST
from monitor.model.bundle import DEFAULT_MODEL, list_models, load_bundle, save_bundle

torch.set_num_threads(1)
LABELS = ["frog", "bird"]


def _tiny(label_dim=2, tdim=128):
    torch.manual_seed(1)
    return AST(label_dim, 16, 16, 128, tdim, "tiny224", depth=1).eval()


def _pre(tdim=128):
    return Preprocess(segment=SegmentConfig(window_s=5.0, hop_s=2.5), band=BandConfig(low_hz=100.0, high_hz=3000.0),
                      fbank=FbankConfig(target_frames=tdim, norm_mean=-5.0, norm_std=3.0))


def _save(folder, model=None, **kw):
    args = dict(name="t", version="1.2.3", labels=LABELS, task="multilabel", preprocessing=_pre(),
                thresholds={"frog": 0.3, "bird": 0.7}, provenance={"data": "test"})
    args.update(kw)
    return save_bundle(folder, model if model is not None else _tiny(), **args)


def test_bundle_round_trip_and_fp16(tmp_path):
    m = _tiny()
    b = _save(tmp_path / "b", m)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bundle.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    raw = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert raw["format_version"] == 1 and raw["task"] == "multilabel" and raw["labels"] == LABELS
    assert raw["architecture"] == {"model_size": "tiny224", "depth": 1, "fstride": 16, "tstride": 16,
                                   "input_fdim": 128, "input_tdim": 128, "label_dim": 2, "norm_eps": 1e-6,
                                   "head_norm_eps": 1e-5}
    b2 = load_bundle(tmp_path / "b")
    assert b2.labels == LABELS and b2.thresholds == {"frog": 0.3, "bird": 0.7} and b2.provenance == {"data": "test"}
    assert b2.preprocessing == _pre() and b2.to_json() == raw
    assert b2.sha256 == b.sha256 and len(b2.sha256) == 64 and b2.path == tmp_path / "b"
    x = torch.randn(3, 128, 128)
    model = b2.build_model()
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(x), m(x))
    h = _save(tmp_path / "h", m, fp16=True)
    assert h.weights_dtype == "float16" and h.sha256 != b.sha256
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("h") < 0.55 * size("b")
    mh = h.build_model()
    assert all(p.dtype == torch.float32 for p in mh.parameters())
    with torch.no_grad():
        err = (mh(x) - m(x)).abs().max().item()
    assert 0 < err < 1e-2
    # scores: sigmoid for multilabel, softmax for multiclass
    logits = torch.tensor([[0.0, 100.0]])
    assert torch.allclose(to_scores(logits, b2.task), torch.tensor([[0.5, 1.0]]))
    mc = _save(tmp_path / "mc", m, task="multiclass")
    assert torch.allclose(to_scores(torch.tensor([[0.0, 0.0]]), mc.task), torch.tensor([[0.5, 0.5]]))


def test_resave_replaces_bundle_keeps_other_files_and_refuses_foreign_folders(tmp_path):
    b1 = _save(tmp_path / "b")
    (tmp_path / "b" / "model_card.md").write_text("card")
    b2 = _save(tmp_path / "b", _tiny(), version="2.0.0")
    assert b2.version == "2.0.0" and (tmp_path / "b" / "model_card.md").read_text() == "card"
    assert b2.sha256 != b1.sha256
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.docx").write_text("precious")
    with pytest.raises(BundleError, match="not a model bundle; choose a new or empty folder"):
        _save(tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.docx").read_text() == "precious"
    with pytest.raises(BundleError, match="one value per label"):
        _save(tmp_path / "c", thresholds={"frog": 0.5})
    with pytest.raises(BundleError, match="label_dim 2 != 3 labels"):
        _save(tmp_path / "c", labels=["a", "b", "c"], thresholds={"a": 0.5, "b": 0.5, "c": 0.5})
    assert not (tmp_path / "c").exists()


def _mutate_json(d, f):
    f(d)
    return d


CASES = [
    ("missing labels", lambda d: d.pop("labels"), "missing 'labels'"),
    ("missing preprocessing", lambda d: d.pop("preprocessing"), "missing 'preprocessing'"),
    ("unknown task", lambda d: d.update(task="regression"), "'task' must be one of multilabel, multiclass"),
    ("version not a string", lambda d: d.update(version=2), "'version' must be a string"),
    ("threshold out of range", lambda d: d["thresholds"].update(frog=1.5), "threshold for 'frog'"),
    ("threshold missing", lambda d: d["thresholds"].pop("bird"), "one value per label"),
    ("typo in preprocessing", lambda d: d["preprocessing"]["band"].update(hihg_hz=1), "unknown config key"),
    ("unknown top field", lambda d: d.update(lables=[]), "unknown field 'lables'"),
    ("unknown arch field", lambda d: d["architecture"].update(detph=1), "unknown architecture field 'detph'"),
    ("depth as string", lambda d: d["architecture"].update(depth="1"), "'depth' must be int"),
    ("label_dim mismatch", lambda d: d["labels"].append("bat"), "label_dim 2 != 3 labels"),
    ("format version", lambda d: d.update(format_version=2), "format_version 2 is not supported"),
    ("fbank vs geometry", lambda d: d["preprocessing"]["fbank"].update(target_frames=256), "must equal"),
    ("path outside", lambda d: d.update(weights={"file": "../other/model.safetensors", "dtype": "float32"}),
     "outside the bundle folder"),
    ("absolute path", lambda d: d.update(weights={"file": "/etc/passwd", "dtype": "float32"}),
     "outside the bundle folder"),
    ("weights not an object", lambda d: d.update(weights="model.safetensors"), "weights must be a JSON object"),
    ("dtype lie", lambda d: d["weights"].update(dtype="float16"), "tensor .* is F32, bundle.json says float16"),
    ("wrong tensor shape", lambda d: d["architecture"].update(fstride=10), "tensor v.pos_embed has shape"),
    ("wrong head shape", lambda d: (d.update(labels=["a", "b", "c"], thresholds={"a": .5, "b": .5, "c": .5}),
                                    d["architecture"].update(label_dim=3)),
     r"tensor mlp_head\.1\.weight has shape \[2, 192\], the architecture needs \[3, 192\]"),
    ("more blocks declared", lambda d: d["architecture"].update(depth=2), "lack tensor v.blocks.1."),
    ("other model size", lambda d: d["architecture"].update(model_size="small224"), "has shape"),
    ("unknown size", lambda d: d["architecture"].update(model_size="huge"), "unknown model_size 'huge'"),
]


@pytest.mark.parametrize("case,mutate,msg", CASES, ids=[c[0] for c in CASES])
def test_bundle_validation_is_one_line(tmp_path, case, mutate, msg):
    _save(tmp_path / "b")
    good = json.loads((tmp_path / "b" / "bundle.json").read_text())
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(_mutate_json(good, mutate)))
    with pytest.raises(BundleError, match=msg) as e:
        load_bundle(tmp_path / "b")
    assert "\n" not in str(e.value)


def test_damaged_or_foreign_files_are_refused(tmp_path):
    _save(tmp_path / "b")
    meta, weights = tmp_path / "b" / "bundle.json", tmp_path / "b" / "model.safetensors"
    good_json, good_weights = meta.read_text(), weights.read_bytes()
    meta.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "b")
    meta.write_text(good_json)
    weights.write_bytes(good_weights[:-100])
    with pytest.raises(BundleError, match="truncated or damaged"):
        load_bundle(tmp_path / "b")
    weights.unlink()
    with pytest.raises(BundleError, match="missing its weights file"):
        load_bundle(tmp_path / "b")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    weights.write_bytes(pickle.dumps({"v.cls_token": Evil()}))  # a pickle posing as weights is never unpickled
    with pytest.raises(BundleError, match="not a safetensors file"):
        load_bundle(tmp_path / "b")
    assert not (tmp_path / "pwned").exists()
    # a symlink that leaves the folder is refused like a ../ path
    weights.unlink()
    (tmp_path / "elsewhere.safetensors").write_bytes(good_weights)
    weights.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="is a file, not a model bundle folder.*models import"):
        load_bundle(tmp_path / "elsewhere.safetensors")


def test_names_resolve_through_search_path_and_default_model_message(tmp_path, monkeypatch):
    import monitor

    monkeypatch.setenv("MONITOR_MODELS", str(tmp_path / "mine"))
    monkeypatch.setenv("MONITOR_CACHE", str(tmp_path / "cache"))
    _save(tmp_path / "mine" / "frogs", name="frogs")
    _save(tmp_path / "cache" / "models" / "frogs", name="frogs-cached", version="0.1")
    _save(tmp_path / "cache" / "models" / "birds", name="birds")
    assert load_bundle("frogs").name == "frogs"  # $MONITOR_MODELS before the cache
    assert load_bundle("birds").path == tmp_path / "cache" / "models" / "birds"
    with pytest.raises(BundleError, match="no model bundle 'bats'.*monitor models list"):
        load_bundle("bats")
    if (Path(monitor.__file__).resolve().parents[1] / "models" / DEFAULT_MODEL / "bundle.json").is_file():
        assert load_bundle(DEFAULT_MODEL).name  # the bundled demo model, once it ships
    else:
        with pytest.raises(BundleError, match="pass --model .*train one"):
            load_bundle(DEFAULT_MODEL)
    (tmp_path / "cache" / "checkpoints").mkdir(parents=True)
    (tmp_path / "cache" / "checkpoints" / "audioset_10_10_0.4593.pth").write_bytes(b"x")
    rows = {r["name"]: r for r in list_models()}
    assert rows["frogs"]["kind"] == "bundle" and rows["frogs"]["path"] == str(tmp_path / "mine" / "frogs")
    assert rows["birds"]["labels"] == "frog, bird"
    assert rows["audioset-10-10"]["cached"] and rows["audioset-10-10"]["kind"] == "checkpoint"
    assert not rows["audioset-16-16"]["cached"] and "monitor models pull" in rows["audioset-16-16"]["path"]
    (tmp_path / "mine" / "frogs" / "bundle.json").write_text("{}")
    rows = {r["name"]: r for r in list_models()}
    assert rows["frogs"]["kind"] == "bundle (invalid)" and "missing 'format_version'" in rows["frogs"]["labels"]
