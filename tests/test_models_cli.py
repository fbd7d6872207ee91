"""``monitor models import|info|list|pull`` in a subprocess, and the labels-file reader."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from monitor.cli import build_parser
from monitor.errors import BundleError, MonitorError
from monitor.model.bundle import load_bundle
from monitor.model.cli import models_command, read_labels

torch.set_num_threads(1)


def _cli(tmp_path, *args):
    env = dict(os.environ, MONITOR_CACHE=str(tmp_path / "cache"), MONITOR_MODELS=str(tmp_path / "models"),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "monitor", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def _inproc(*args):
    """The same command in this process (the CLI's parser and models_command, without its exit handling)."""
    return models_command(build_parser().parse_args([str(a) for a in args]))


def test_import_official_checkpoint_then_info_and_list(shared, tmp_path):
    d = torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)["tiny_f16t16_td200"]
    ck = tmp_path / "best_audio_model.pth"
    torch.save(d["state_dict"], ck)
    labels = tmp_path / "class_labels_indices.csv"
    rows = [f'{i},/m/{i},"Frog, species {i}"' for i in (3, 0, 4, 1, 2)]  # quoted commas, out of order
    labels.write_text("index,mid,display_name\n" + "\n".join(rows) + "\n")
    out = tmp_path / "models" / "fork-frogs"
    r = _cli(tmp_path, "models", "import", ck, "--labels", labels, "--out", out, "--model-size", "tiny224",
             "--fstride", 16, "--tstride", 16, "--input-tdim", 200, "--high-hz", 3000, "--threshold", 0.4)
    assert r.returncode == 0, r.stderr
    assert "5 labels, tiny224 depth 2, strides 16/16, 200 frames (official format)" in r.stdout
    assert "mean -4.26774, std 4.569: AudioSet's (the official AST default; not given)" in r.stdout  # said, not silent
    b = load_bundle(out)
    assert b.labels == [f"Frog, species {i}" for i in range(5)]
    assert b.preprocessing.band.high_hz == 3000 and b.preprocessing.fbank.target_frames == 200
    assert b.thresholds == {k: 0.4 for k in b.labels} and b.name == "fork-frogs"
    assert b.provenance["source_sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    with torch.no_grad():  # the imported bundle reproduces the official model's logits
        assert (b.build_model()(d["input"]) - d["logits"]).abs().max().item() <= 1e-4

    r = _cli(tmp_path, "models", "info", "fork-frogs")  # by name, through $MONITOR_MODELS
    assert r.returncode == 0, r.stderr
    # "; " between labels that hold commas
    assert "5: Frog, species 0; Frog, species 1" in r.stdout and "strides 16/16" in r.stdout
    assert b.sha256 in r.stdout and "0-3000 Hz" in r.stdout and "source_sha256" in r.stdout

    r = _cli(tmp_path, "models", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "KIND", "VERSION"]
    assert any(line.startswith("fork-frogs ") and " bundle " in line for line in lines)
    assert any(line.startswith("audioset-10-10 ") and "monitor models pull audioset-10-10" in line for line in lines)

    # errors are one-line BundleErrors (the CLI prints them and exits 2)
    with pytest.raises(BundleError, match="no model bundle 'nope'"):
        _inproc("models", "info", "nope")
    with pytest.raises(BundleError, match=r"use model size tiny224 \(--model-size\)"):  # base384 by default
        _inproc("models", "import", ck, "--labels", labels, "--out", tmp_path / "x")
    with pytest.raises(BundleError, match="pass --labels LABELS_FILE: the checkpoint's head has 5 outputs"):
        _inproc("models", "import", ck, "--out", tmp_path / "x", "--model-size", "tiny224")


def test_import_of_an_audioset_checkpoint_gives_the_official_preprocessing(shared, tmp_path):
    """An official-format checkpoint with a 527-output head, imported with no --labels/--norm-*/--threshold:
    the AudioSet labels shipped with monitor, the official AudioSet front end and the pull's default
    thresholds, each said in the output (the full-size path: test_audioset_bundle.py)."""
    from monitor.model import audioset

    sd = dict(torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)["tiny_f16t16_td200"]
              ["state_dict"])
    g = torch.Generator().manual_seed(0)
    sd["module.mlp_head.1.weight"] = torch.randn(527, 192, generator=g) * 0.02
    sd["module.mlp_head.1.bias"] = torch.randn(527, generator=g)
    ck = tmp_path / "audioset_tiny.pth"
    torch.save(sd, ck)
    r = _cli(tmp_path, "models", "import", ck, "--out", tmp_path / "as", "--model-size", "tiny224",
             "--fstride", 16, "--tstride", 16, "--input-tdim", 200)
    assert r.returncode == 0, r.stderr
    assert "the 527 AudioSet classes shipped with monitor" in r.stdout
    assert "mean -4.26774, std 4.569: AudioSet's, as the official AST AudioSet recipe" in r.stdout
    assert "no band limit" in r.stdout and "0.3 for every label" in r.stdout
    b = load_bundle(tmp_path / "as")
    assert b.labels == audioset.labels() and b.thresholds == {k: audioset.DEFAULT_THRESHOLD for k in b.labels}
    assert b.preprocessing == audioset.preprocessing(200) and "CC BY-SA 4.0" in b.provenance["labels_source"]
    assert torch.equal(b.build_model().mlp_head[1].bias, sd["module.mlp_head.1.bias"])  # the head is kept
    # the user's values win over the defaults
    r = _cli(tmp_path, "models", "import", ck, "--out", tmp_path / "as2", "--model-size", "tiny224",
             "--fstride", 16, "--tstride", 16, "--input-tdim", 200, "--norm-mean", -6.6, "--norm-std", 5.4,
             "--threshold", 0.5)
    assert r.returncode == 0, r.stderr
    b2 = load_bundle(tmp_path / "as2")
    assert (b2.preprocessing.fbank.norm_mean, b2.preprocessing.fbank.norm_std) == (-6.6, 5.4)
    assert set(b2.thresholds.values()) == {0.5} and "normalise" not in r.stdout
    assert "preprocessing_source" not in b2.provenance  # not the official front end any more


def test_import_hf_folder_and_pull_with_file_url(tmp_path, monkeypatch, capsys):
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(0)
    hf = ASTForAudioClassification(ASTConfig(hidden_size=192, num_hidden_layers=1, num_attention_heads=3,
                                             intermediate_size=768, frequency_stride=16, time_stride=16,
                                             max_length=128, num_labels=2)).eval()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "labels.txt").write_text("Rana draytonii\nPseudacris regilla\n")
    r = _cli(tmp_path, "models", "import", tmp_path / "hf", "--labels", tmp_path / "labels.txt",
             "--out", tmp_path / "b", "--name", "from-hf", "--task", "multiclass")
    assert r.returncode == 0, r.stderr
    b = load_bundle(tmp_path / "b")
    assert (b.name, b.task, b.labels) == ("from-hf", "multiclass", ["Rana draytonii", "Pseudacris regilla"])
    assert b.architecture.norm_eps == 1e-12 and b.architecture.input_tdim == 128
    x = torch.randn(1, 128, 128)
    with torch.no_grad():
        assert (b.build_model()(x) - hf(x).logits).abs().max().item() <= 1e-4

    # a pull whose file is not the published checkpoint (here: not even a weights file) makes no bundle and
    # keeps no file, so the next pull downloads again
    src = tmp_path / "audioset_16_16_0.4422.pth"
    src.write_bytes(b"weights" * 1000)
    monkeypatch.setenv("MONITOR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MonitorError, match="not the published AST checkpoint.*removed it"):
        _inproc("models", "pull", "audioset-16-16", "--url", src.as_uri())
    assert not list((tmp_path / "cache").rglob("audioset_16_16*")) and not (tmp_path / "cache" / "models").exists()
    with pytest.raises(MonitorError, match="no network?"):
        _inproc("models", "pull", "audioset-12-12", "--url", (tmp_path / "gone.pth").as_uri())
    capsys.readouterr()
    assert _inproc("models", "info", "audioset-16-16") == 0
    out = capsys.readouterr().out
    assert "strides 16/16" in out and "mAP 0.4422" in out and "(not downloaded)" in out
    assert "527: Speech; Male speech, man speaking;" in out and "... and 517 more (--labels lists them all)" in out
    assert "not made yet: monitor models pull audioset-16-16" in out


def test_read_labels_formats(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text('index,mid,display_name\n1,/m/b,"Bird, song"\n0,/m/a,Frog\n')
    assert read_labels(p) == ["Frog", "Bird, song"]
    p.write_text("file,label\na.wav,x\n")
    assert read_labels(p) == ["x"]
    p.write_text("index,mid,display_name\n0,/m/a,Frog\n2,/m/b,Bird\n")
    with pytest.raises(BundleError, match="without gaps"):
        read_labels(p)
    p.write_text("foo,bar\n1,2\n")
    with pytest.raises(BundleError, match="display_name or label column"):
        read_labels(p)
    t = tmp_path / "l.txt"
    t.write_text("frog\n\nbird\n")
    assert read_labels(t) == ["frog", "bird"]
    t.write_text("frog\nfrog\n")
    with pytest.raises(BundleError, match="'frog' appears more than once"):
        read_labels(t)
