"""The AST on timm: official golden logits, AudioSet layout, HF conversion, pos-embed rule, bundles, pull."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from monitor.config import BandConfig, Preprocess
from monitor.errors import BundleError, MonitorError
from monitor.model.ast import AST, adapt_pos_embed, patch_grid
from monitor.model.bundle import load_bundle, save_bundle
from monitor.model.checkpoints import from_hf_checkpoint, from_official_checkpoint, load_state_dict_file, pull

torch.set_num_threads(1)


@pytest.mark.parametrize("case", ["tiny_f10t10_td100", "tiny_f16t16_td200"])
def test_official_golden_logits(shared, case):
    d = torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)[case]
    c = d["config"]
    m = from_official_checkpoint(d["state_dict"], depth=2, **c)
    with torch.no_grad():
        out = m(d["input"])
    assert (out - d["logits"]).abs().max().item() <= 1e-4
    assert m.v.patch_embed.proj.stride == (c["fstride"], c["tstride"])


def test_official_checkpoint_from_file(shared, tmp_path):
    d = torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)["tiny_f10t10_td100"]
    p = tmp_path / "best_audio_model.pth"
    torch.save(d["state_dict"], p)
    m = from_official_checkpoint(p, depth=2, **d["config"])
    with torch.no_grad():
        assert (m(d["input"]) - d["logits"]).abs().max() <= 1e-4


def test_audioset_base384_layout_loads_with_new_head(shared):
    keys = json.loads((shared / "golden" / "ast_audioset_base384_keys.json").read_text())
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*shape, generator=g) * 0.02 for k, shape in keys.items()}
    m = from_official_checkpoint(sd, label_dim=2, fstride=10, tstride=10, input_fdim=128, input_tdim=1000,
                                 model_size="base384")
    assert (m.f_dim, m.t_dim) == (12, 99)
    assert m.mlp_head[1].out_features == 2
    # everything but the head is kept; time is cut from the 12x101 grid's centre (101 -> 99)
    assert torch.equal(m.v.blocks[11].attn.qkv.weight, sd["module.v.blocks.11.attn.qkv.weight"])
    assert torch.equal(m.v.patch_embed.proj.weight, sd["module.v.patch_embed.proj.weight"])
    grid = sd["module.v.pos_embed"][:, 2:, :].reshape(1, 12, 101, 768)
    got = m.v.pos_embed[:, 2:, :].reshape(1, 12, 99, 768)
    assert torch.equal(got, grid[:, :, 1:100, :])
    assert torch.equal(m.v.pos_embed[:, :2], sd["module.v.pos_embed"][:, :2])
    assert not torch.equal(m.mlp_head[1].weight[:2], sd["module.mlp_head.1.weight"][:2, :])
    with torch.no_grad():
        assert m(torch.randn(1, 1000, 128)).shape == (1, 2)


def test_pos_embed_rule_crop_and_interpolate():
    g = torch.arange(2 * 12 * 101, dtype=torch.float32).reshape(1, 2, 12, 101)
    crop = adapt_pos_embed(g, 12, 49)
    assert torch.equal(crop, g[:, :, :, 50 - 24:50 - 24 + 49])
    up = adapt_pos_embed(g, 12, 200)
    assert up.shape == (1, 2, 12, 200)
    ref = torch.nn.functional.interpolate(g, size=(12, 200), mode="bilinear")
    assert torch.equal(up, ref)
    sq = torch.randn(1, 2, 14, 14)
    assert torch.equal(adapt_pos_embed(sq, 12, 14), sq[:, :, 1:13, :])  # frequency crop from the centre
    assert adapt_pos_embed(sq, 24, 101).shape == (1, 2, 24, 101)
    assert patch_grid(10, 10, 128, 1024) == (12, 101)
    assert patch_grid(16, 16, 128, 1024) == (8, 64)


def test_hf_conversion_matches_logits():
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(0)
    cfg = ASTConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
                    frequency_stride=12, time_stride=12, max_length=160, num_mel_bins=128, num_labels=3)
    hf = ASTForAudioClassification(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # make every tensor matter, LayerNorms included
            p.add_(torch.randn_like(p) * 0.02)
    m = from_hf_checkpoint(hf)
    x = torch.randn(2, 160, 128)
    with torch.no_grad():
        a, b = hf(x).logits, m(x)
    assert a.abs().max() > 1e-3
    assert (a - b).abs().max().item() <= 1e-4


def test_imagenet_init_through_timm_pretrained_mechanism(tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    w = tmp_path / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(w))
    m = AST(2, 16, 16, 128, 256, "tiny224", depth=2, imagenet_pretrain=True, pretrained_file=str(w))
    rgb = src.patch_embed.proj.weight
    assert torch.allclose(m.v.patch_embed.proj.weight, rgb.sum(dim=1, keepdim=True))
    assert torch.equal(m.v.blocks[1].mlp.fc1.weight, src.blocks[1].mlp.fc1.weight)
    grid = src.pos_embed[:, 2:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    want = adapt_pos_embed(grid, 8, 16).permute(0, 2, 3, 1).reshape(1, 128, 192)
    assert torch.allclose(m.v.pos_embed[:, 2:], want)


def _tiny(label_dim=2, tdim=128):
    torch.manual_seed(1)
    return AST(label_dim, 16, 16, 128, tdim, "tiny224", depth=1)


def _pre(tdim=128):
    from monitor.config import FbankConfig

    return Preprocess(band=BandConfig(low_hz=100.0, high_hz=3000.0), fbank=FbankConfig(target_frames=tdim))


def test_bundle_round_trip_and_fp16(tmp_path):
    m = _tiny().eval()
    b = save_bundle(tmp_path / "b", m, name="t", version="1.2.3", labels=["frog", "bird"], task="multilabel",
                    preprocessing=_pre(), thresholds={"frog": 0.3, "bird": 0.7}, provenance={"data": "test"})
    assert (tmp_path / "b" / "bundle.json").is_file() and (tmp_path / "b" / "model.safetensors").is_file()
    b2 = load_bundle(tmp_path / "b")
    assert b2.labels == ["frog", "bird"] and b2.thresholds == {"frog": 0.3, "bird": 0.7}
    assert b2.preprocessing == _pre() and b2.sha256 == b.sha256 and len(b2.sha256) == 64
    x = torch.randn(3, 128, 128)
    with torch.no_grad():
        assert torch.equal(b2.build_model()(x), m(x))
    h = save_bundle(tmp_path / "h", m, name="t", version="1", labels=["frog", "bird"], task="multilabel",
                    preprocessing=_pre(), thresholds={"frog": 0.5, "bird": 0.5}, fp16=True)
    assert (tmp_path / "h" / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "b" / "model.safetensors").stat().st_size
    with torch.no_grad():
        assert (h.build_model()(x) - m(x)).abs().max() < 1e-2
    p = b2.scores(torch.tensor([[0.0, 100.0]]))
    assert torch.allclose(p, torch.tensor([[0.5, 1.0]]))


def _write(folder, data):
    (folder / "bundle.json").write_text(json.dumps(data))


def test_bundle_validation_messages(tmp_path):
    save_bundle(tmp_path / "b", _tiny(), name="t", version="1", labels=["frog", "bird"], task="multilabel",
                preprocessing=_pre(), thresholds={"frog": 0.5, "bird": 0.5})
    good = json.loads((tmp_path / "b" / "bundle.json").read_text())
    cases = [
        (lambda d: d.pop("labels"), "missing 'labels'"),
        (lambda d: d.update(task="regression"), "'task' must be one of"),
        (lambda d: d["thresholds"].update(frog=1.5), "threshold for 'frog'"),
        (lambda d: d["preprocessing"]["band"].update(hihg_hz=1), "unknown config key"),
        (lambda d: d.update(weights={"file": "../../etc/passwd", "dtype": "float32"}), "outside the bundle folder"),
        (lambda d: d["architecture"].update(depth=2), "blocks"),
        (lambda d: d["architecture"].update(fstride=10), "shape"),
    ]
    for mutate, msg in cases:
        d = json.loads(json.dumps(good))
        mutate(d)
        _write(tmp_path / "b", d)
        with pytest.raises(BundleError, match=msg) as e:
            load_bundle(tmp_path / "b")
        assert "\n" not in str(e.value)
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle("no-such-model")


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    p = tmp_path / "evil.pth"
    with open(p, "wb") as fh:
        pickle.dump({"module.v.cls_token": Evil()}, fh)
    with pytest.raises(BundleError, match="refusing to unpickle"):
        load_state_dict_file(p)
    assert not (tmp_path / "pwned").exists()
    # a bundle never reads pickles: weights must be safetensors
    save_bundle(tmp_path / "b", _tiny(), name="t", version="1", labels=["frog", "bird"], task="multilabel",
                preprocessing=_pre(), thresholds={"frog": 0.5, "bird": 0.5})
    os.replace(p, tmp_path / "b" / "model.safetensors")
    with pytest.raises(BundleError, match="not a safetensors file"):
        load_bundle(tmp_path / "b")
    assert not (tmp_path / "pwned").exists()


def test_pull_from_local_url_with_resume_and_checksum(tmp_path):
    import hashlib

    src = tmp_path / "server" / "audioset.pth"
    src.parent.mkdir()
    payload = np.random.default_rng(0).bytes(3_000_000)
    src.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    cache = tmp_path / "cache"
    # a partial earlier download is resumed, not restarted
    part = cache / "checkpoints" / "audioset_10_10_0.4593.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:1_000_000])
    got = pull("audioset-10-10", url=src.as_uri(), cache=cache, sha256=digest, progress=False)
    assert got.read_bytes() == payload and not part.exists()
    assert (cache / "checkpoints" / "audioset_10_10_0.4593.pth.sha256").read_text().strip() == digest
    # cached: no second download
    src.unlink()
    assert pull("audioset-10-10", url=src.as_uri(), cache=cache, sha256=digest, progress=False) == got
    with pytest.raises(MonitorError, match="checksum mismatch"):
        src.write_bytes(payload)
        pull("audioset-12-12", url=src.as_uri(), cache=cache, sha256="0" * 64, progress=False)
    with pytest.raises(MonitorError, match="no network"):
        pull("audioset-14-14", url=(tmp_path / "missing.pth").as_uri(), cache=cache, progress=False)
    with pytest.raises(MonitorError, match="unknown pretrained"):
        pull("imagenet", cache=cache)


def test_models_cli_import_info_list(shared, tmp_path):
    d = torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)["tiny_f16t16_td200"]
    ck = tmp_path / "best_audio_model.pth"
    sd = dict(d["state_dict"])
    for i in range(2, 12):  # the golden model has 2 blocks; a tiny224 import expects the full depth
        for k, v in list(d["state_dict"].items()):
            if k.startswith("module.v.blocks.1."):
                sd[k.replace("blocks.1.", f"blocks.{i}.")] = v.clone()
    torch.save(sd, ck)
    labels = tmp_path / "class_labels_indices.csv"
    labels.write_text("index,mid,display_name\n" + "\n".join(f"{i},/m/{i},sp{i}" for i in range(5)) + "\n")
    env = dict(os.environ, MONITOR_CACHE=str(tmp_path / "cache"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "monitor", *a], capture_output=True, text=True, env=env)
    r = run("models", "import", str(ck), "--labels", str(labels), "--out", str(tmp_path / "bundle"),
            "--model-size", "tiny224", "--fstride", "16", "--tstride", "16", "--input-tdim", "200",
            "--high-hz", "3000")
    assert r.returncode == 0, r.stderr
    b = load_bundle(tmp_path / "bundle")
    assert b.labels == [f"sp{i}" for i in range(5)] and b.preprocessing.band.high_hz == 3000
    r = run("models", "info", str(tmp_path / "bundle"))
    assert r.returncode == 0 and "sp0, sp1" in r.stdout and "16/16" in r.stdout
    r = run("models", "list")
    assert r.returncode == 0 and "audioset-10-10" in r.stdout
    r = run("models", "info", "nope")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
