"""Checkpoint loading: official golden logits, the AudioSet layout, HF conversion, safe loading, ``pull``."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import pickle
import threading

import numpy as np
import pytest
import torch

from monitor.errors import BundleError, MonitorError
from monitor.model.ast import adapt_pos_embed
from monitor.model.checkpoints import (PRETRAINED, from_hf_checkpoint, from_official_checkpoint, hf_to_official,
                                       load_state_dict_file, pull)

torch.set_num_threads(1)


def _golden(shared, case):
    return torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)[case]


@pytest.mark.parametrize("case", ["tiny_f10t10_td100", "tiny_f16t16_td200"])
def test_official_golden_logits(shared, case, tmp_path):
    d = _golden(shared, case)
    c = d["config"]
    m = from_official_checkpoint(d["state_dict"], depth=2, **c)
    with torch.no_grad():
        out = m(d["input"])
    assert out.shape == d["logits"].shape and d["logits"].abs().max() > 1e-2
    assert (out - d["logits"]).abs().max().item() <= 1e-4
    assert m.v.patch_embed.proj.stride == (c["fstride"], c["tstride"]) and not m.training
    # from a .pth file, without naming the depth (taken from the checkpoint's blocks)
    p = tmp_path / "best_audio_model.pth"
    torch.save(d["state_dict"], p)
    m2 = from_official_checkpoint(p, **c)
    assert m2.geometry.depth == 2
    with torch.no_grad():
        assert (m2(d["input"]) - d["logits"]).abs().max().item() <= 1e-4


def test_official_checkpoint_mismatches_are_one_line_errors(shared):
    d = _golden(shared, "tiny_f10t10_td100")
    c = dict(d["config"])
    with pytest.raises(BundleError, match="width 192.*tiny224"):
        from_official_checkpoint(d["state_dict"], **{**c, "model_size": "base384"})
    with pytest.raises(BundleError, match="2 transformer blocks.*asks for 3"):
        from_official_checkpoint(d["state_dict"], depth=3, **c)
    with pytest.raises(BundleError, match="not an AST checkpoint"):
        from_official_checkpoint({"module.foo": torch.zeros(1)}, **c)


def test_audioset_base384_layout_loads_at_1000_frames_with_new_head(shared):
    keys = json.loads((shared / "golden" / "ast_audioset_base384_keys.json").read_text())
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*shape, generator=g) * 0.02 for k, shape in keys.items()}
    m = from_official_checkpoint(sd, label_dim=2, fstride=10, tstride=10, input_fdim=128, input_tdim=1000,
                                 model_size="base384")
    assert (m.f_dim, m.t_dim) == (12, 99)
    assert m.mlp_head[1].out_features == 2 and m.mlp_head[1].weight.shape == (2, 768)
    # everything but the head is kept
    ours = m.state_dict()
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if k.startswith(("mlp_head.", "v.head.", "v.head_dist.")) or k == "v.pos_embed":
            continue  # timm's unused DeiT heads are dropped
        assert torch.equal(ours[k], v), k
    # time is cut from the 12x101 grid's centre (101 -> 99), the cls/dist tokens kept
    grid = sd["module.v.pos_embed"][:, 2:, :].reshape(1, 12, 101, 768)
    assert torch.equal(m.v.pos_embed[:, 2:, :].reshape(1, 12, 99, 768), grid[:, :, 1:100, :])
    assert torch.equal(m.v.pos_embed[:, :2], sd["module.v.pos_embed"][:, :2])
    # the head is re-initialised: fresh LayerNorm and a small random Linear, not the checkpoint's rows
    assert torch.equal(m.mlp_head[0].weight, torch.ones(768))
    assert not torch.equal(m.mlp_head[1].weight, sd["module.mlp_head.1.weight"][:2])
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 1000, 128))).all()


def test_pos_embed_adapted_by_crop_and_interpolation_on_load(shared):
    """A stride-16, 200-frame checkpoint (8x12 grid) into stride 10 at 100 frames (12x9): time is
    cropped from the centre, frequency interpolated; then 8x12 -> 8x24, interpolated in time."""
    d = _golden(shared, "tiny_f16t16_td200")
    pe = d["state_dict"]["module.v.pos_embed"]
    grid = pe[:, 2:].reshape(1, 8, 12, 192).permute(0, 3, 1, 2)
    m = from_official_checkpoint(d["state_dict"], label_dim=5, fstride=10, tstride=10, input_fdim=128,
                                 input_tdim=100, model_size="tiny224", source_grid=(8, 12))
    got = m.v.pos_embed[:, 2:].reshape(1, 12, 9, 192).permute(0, 3, 1, 2)
    cropped = grid[:, :, :, 6 - 4:6 - 4 + 9]
    assert torch.equal(got, torch.nn.functional.interpolate(cropped, size=(12, 9), mode="bilinear"))
    assert torch.equal(m.v.pos_embed[:, :2], pe[:, :2])
    # the same label count keeps the fine-tuned head
    assert torch.equal(m.mlp_head[1].weight, d["state_dict"]["module.mlp_head.1.weight"])
    # same frequency stride, more time patches: the grid is inferred from the model's rows
    m2 = from_official_checkpoint(d["state_dict"], label_dim=5, fstride=16, tstride=8, input_fdim=128,
                                  input_tdim=200, model_size="tiny224")
    got2 = m2.v.pos_embed[:, 2:].reshape(1, 8, 24, 192).permute(0, 3, 1, 2)
    assert torch.equal(got2, torch.nn.functional.interpolate(grid, size=(8, 24), mode="bilinear"))
    with pytest.raises(BundleError, match="source_grid"):
        from_official_checkpoint(d["state_dict"], label_dim=5, fstride=16, tstride=16, input_fdim=128,
                                 input_tdim=200, model_size="tiny224", source_grid=(9, 12))


def test_published_stride_variant_grids_are_recognised(shared):
    """A 16/16 AudioSet-style checkpoint (8x64 patches) into a 10/10 model: 8 -> 12 rows, 64 -> 9 columns."""
    d = _golden(shared, "tiny_f10t10_td100")
    sd = dict(d["state_dict"])
    g = torch.Generator().manual_seed(1)
    sd["module.v.pos_embed"] = torch.randn(1, 2 + 8 * 64, 192, generator=g)
    m = from_official_checkpoint(sd, label_dim=3, fstride=10, tstride=10, input_fdim=128, input_tdim=100,
                                 model_size="tiny224")
    grid = sd["module.v.pos_embed"][:, 2:].reshape(1, 8, 64, 192).permute(0, 3, 1, 2)
    want = adapt_pos_embed(grid, 12, 9)
    assert torch.equal(m.v.pos_embed[:, 2:].reshape(1, 12, 9, 192).permute(0, 3, 1, 2), want)


def _hf_model(frequency_stride=12, time_stride=12, max_length=160, num_labels=3, seed=0):
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(seed)
    cfg = ASTConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
                    frequency_stride=frequency_stride, time_stride=time_stride, max_length=max_length,
                    num_mel_bins=128, num_labels=num_labels)
    hf = ASTForAudioClassification(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # make every tensor matter, LayerNorms and biases included
            p.add_(torch.randn_like(p) * 0.05)
    return hf


def _to_v4_names(sd):
    """transformers 4.x key names (the published MIT/ast-* checkpoints) from 5.x ones."""
    ren = {"attention.q_proj.": "attention.attention.query.", "attention.k_proj.": "attention.attention.key.",
           "attention.v_proj.": "attention.attention.value.", "attention.o_proj.": "attention.output.dense.",
           "mlp.fc1.": "intermediate.dense.", "mlp.fc2.": "output.dense."}
    out = {}
    for k, v in sd.items():
        k = k.replace(".layers.", ".encoder.layer.")
        for a, b in ren.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def test_hf_conversion_matches_logits(tmp_path):
    hf = _hf_model()
    x = torch.randn(2, 160, 128)
    with torch.no_grad():
        ref = hf(x).logits
    assert ref.abs().max() > 1e-2
    m = from_hf_checkpoint(hf)
    assert m.geometry.norm_eps == 1e-12 and m.geometry.head_norm_eps == 1e-12
    assert (m.geometry.fstride, m.geometry.tstride, m.geometry.input_tdim) == (12, 12, 160)
    with torch.no_grad():
        assert (m(x) - ref).abs().max().item() <= 1e-4
    # a saved folder (config.json + model.safetensors)
    hf.save_pretrained(tmp_path / "hf")
    m2 = from_hf_checkpoint(tmp_path / "hf")
    # transformers 4.x key names + a config mapping, as a bare state dict
    m3 = from_hf_checkpoint(_to_v4_names(hf.state_dict()), config=hf.config.to_dict())
    assert hf_to_official(_to_v4_names(hf.state_dict())).keys() == hf_to_official(hf.state_dict()).keys()
    with torch.no_grad():
        assert (m2(x) - ref).abs().max().item() <= 1e-4
        assert (m3(x) - ref).abs().max().item() <= 1e-4
    # a new label count re-initialises only the head
    m4 = from_hf_checkpoint(hf, label_dim=7)
    assert m4.mlp_head[1].out_features == 7
    assert torch.equal(m4.v.blocks[1].attn.qkv.weight, m.v.blocks[1].attn.qkv.weight)
    with pytest.raises(BundleError, match="give the checkpoint's config"):
        from_hf_checkpoint(hf.state_dict(), config={"max_length": 1024})


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    p = tmp_path / "evil.pth"
    with open(p, "wb") as fh:
        pickle.dump({"module.v.cls_token": Evil()}, fh, protocol=2)
    with pytest.raises(BundleError, match="refusing to unpickle"):
        load_state_dict_file(p)
    with pytest.raises(BundleError, match="refusing to unpickle"):
        from_official_checkpoint(p, label_dim=2, fstride=10, tstride=10, input_fdim=128, input_tdim=100,
                                 model_size="tiny224")
    assert not (tmp_path / "pwned").exists()


def test_load_state_dict_file_formats(tmp_path):
    from safetensors.torch import save_file

    sd = {"module.v.cls_token": torch.randn(1, 1, 4)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    assert torch.equal(load_state_dict_file(tmp_path / "wrapped.pth")["module.v.cls_token"], sd["module.v.cls_token"])
    save_file(sd, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_state_dict_file(tmp_path / "w.safetensors")["module.v.cls_token"], sd["module.v.cls_token"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(BundleError, match="not a readable safetensors"):
        load_state_dict_file(tmp_path / "bad.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(BundleError, match="does not hold a state dict"):
        load_state_dict_file(tmp_path / "list.pth")
    with pytest.raises(BundleError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")


# --- pull ----------------------------------------------------------------------------------------------

def _payload(n=3_000_000):
    data = np.random.default_rng(0).bytes(n)
    return data, hashlib.sha256(data).hexdigest()


def test_registry_has_the_official_readme_links():
    assert set(PRETRAINED) >= {"audioset-10-10", "audioset-10-10-0.4495", "audioset-12-12", "audioset-14-14",
                               "audioset-16-16"}
    assert PRETRAINED["audioset-10-10"].url.endswith("/audioset_10_10_0.4593.pth?dl=1")
    for name, s in PRETRAINED.items():
        assert s.url.startswith("https://www.dropbox.com/s/") and s.filename in s.url
        assert name.startswith(f"audioset-{s.fstride}-{s.tstride}") and s.label_dim == 527


def test_pull_file_url_resumes_by_seeking_and_checks_checksum(tmp_path):
    payload, digest = _payload()
    src = tmp_path / "server" / "audioset.pth"
    src.parent.mkdir()
    src.write_bytes(payload)
    cache = tmp_path / "cache"
    part = cache / "checkpoints" / "audioset_10_10_0.4593.pth.part"
    part.parent.mkdir(parents=True)
    # a partial earlier download is continued, not restarted: its (deliberately different) bytes stay
    part.write_bytes(b"X" * 1_000_000)
    got = pull("audioset-10-10", url=src.as_uri(), cache_dir=cache, progress=False)
    assert got == cache / "checkpoints" / "audioset_10_10_0.4593.pth" and not part.exists()
    assert got.read_bytes() == b"X" * 1_000_000 + payload[1_000_000:]
    got.unlink()
    # with the right checksum a correctly resumed file is accepted and its digest recorded
    part.write_bytes(payload[:1_000_000])
    got = pull("audioset-10-10", url=src.as_uri(), cache_dir=cache, sha256=digest, progress=False)
    assert got.read_bytes() == payload
    assert (got.parent / (got.name + ".sha256")).read_text().split()[0] == digest
    # cached and intact: no download at all (the source is gone)
    src.unlink()
    assert pull("audioset-10-10", url=src.as_uri(), cache_dir=cache, progress=False) == got
    # a damaged cached file fails its recorded checksum and is fetched again
    src.write_bytes(payload)
    got.write_bytes(b"corrupt")
    assert pull("audioset-10-10", url=src.as_uri(), cache_dir=cache, progress=False).read_bytes() == payload
    # a wrong checksum: refused, nothing kept
    with pytest.raises(MonitorError, match="checksum mismatch for audioset-12-12"):
        pull("audioset-12-12", url=src.as_uri(), cache_dir=cache, sha256="0" * 64, progress=False)
    assert not list((cache / "checkpoints").glob("audioset_12_12*"))


def test_pull_offline_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv("MONITOR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MonitorError, match="no network\\? Download it by hand") as e:
        pull("audioset-14-14", url=(tmp_path / "missing.pth").as_uri(), progress=False)
    assert str(tmp_path / "cache" / "checkpoints" / "audioset_14_14_0.4431.pth") in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(MonitorError, match="unknown pretrained model"):
        pull("imagenet")
    # an unreachable host (port 9 on this machine: nothing listens) gives the same clear message
    with pytest.raises(MonitorError, match="no network"):
        pull("audioset-16-16", url="http://127.0.0.1:9/x.pth", progress=False)


class _RangeServer(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` with HTTP Range support; the first full request is cut off after ``cut`` bytes."""

    payload = b""
    cut = 0
    requests: list = []

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.end_headers()
        if not rng and self.cut:
            self.wfile.write(body[:self.cut])  # then drop the connection: an interrupted download
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_pull_http_interrupted_then_resumed_with_range(tmp_path):
    payload, digest = _payload(2_000_000)
    handler = type("H", (_RangeServer,), {"payload": payload, "cut": 700_000, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/audioset_16_16_0.4422.pth"
    try:
        with pytest.raises(MonitorError, match="run again to resume"):
            pull("audioset-16-16", url=url, cache_dir=tmp_path, sha256=digest, progress=False)
        part = tmp_path / "checkpoints" / "audioset_16_16_0.4422.pth.part"
        assert part.stat().st_size == 700_000
        got = pull("audioset-16-16", url=url, cache_dir=tmp_path, sha256=digest, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert got.read_bytes() == payload
    assert handler.requests == [None, "bytes=700000-"]
