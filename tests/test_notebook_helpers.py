"""monitor.notebook: the work folder, data sources, recipe choice, resume, and small listening clips."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from monitor import notebook as nb
from monitor.errors import MonitorError

TINY = ["model.size=tiny224", "model.depth=1", "model.fstride=16", "model.tstride=16", "fbank.target_frames=256",
        "segment.window_s=2.5", "segment.hop_s=2.5", "segment.min_segment_s=1.0", "optim.batch_size=4",
        "optim.warmup_steps=0", "split.val_fraction=0.34", "data.max_per_label=6", "optim.epochs=2"]


def _clips(shared: Path, dest: Path) -> Path:
    for label, pattern in (("frog", "*.wav"), ("bird", "*.flac")):
        (dest / label).mkdir(parents=True, exist_ok=True)
        for p in sorted((shared / "data" / "clips" / label).glob(pattern))[:3]:
            shutil.copy(p, dest / label / p.name)
    return dest


def test_work_folder_off_colab_is_local_and_created(tmp_path, capsys):
    work = nb.work_folder(True, local_root=tmp_path)  # Drive asked for, but this is not Colab
    assert work == tmp_path / "monitor-work" and work.is_dir()
    assert "(on this machine)" in capsys.readouterr().out


def test_input_folder_defaults_to_the_example_card_once(tmp_path):
    card = nb.input_folder("", tmp_path)
    assert card == tmp_path / "example-card" and (card / "AM-POND" / "CONFIG.TXT").is_file()
    assert nb.input_folder("  ", tmp_path) == card  # run the cell again: the same card, nothing rewritten
    assert nb.input_folder(str(card), tmp_path) == card
    with pytest.raises(MonitorError, match="input folder not found"):
        nb.input_folder(str(tmp_path / "nope"), tmp_path)
    assert nb.report_folder(tmp_path, card) == tmp_path / "reports" / "example-card"
    assert nb.report_folder(tmp_path, "site-A/") == tmp_path / "reports" / "site-A"


def test_report_to_review_is_the_latest_report(tmp_path):
    with pytest.raises(MonitorError, match="no reports .* run notebook 01 first"):
        nb.report_to_review(tmp_path)
    for i, name in enumerate(("b-older", "a-newer")):
        (tmp_path / "reports" / name).mkdir(parents=True)
        (tmp_path / "reports" / name / "run.json").write_text("{}")
        os.utime(tmp_path / "reports" / name / "run.json", (time.time() + i, time.time() + i))
    assert nb.report_to_review(tmp_path) == tmp_path / "reports" / "a-newer"
    assert nb.report_to_review(tmp_path, "b-older") == tmp_path / "reports" / "b-older"
    with pytest.raises(MonitorError, match="holds no report"):
        nb.report_to_review(tmp_path, "c")


def test_training_data_overrides_per_source_and_clear_errors(tmp_path, shared, capsys):
    clips = _clips(shared, tmp_path / "clips")
    assert nb.training_data("folders", tmp_path, root=str(clips)) == ["data.source=folders",
                                                                      f'data.root="{clips.resolve()}"']
    assert "class folders in" in capsys.readouterr().out
    with pytest.raises(MonitorError, match="no label folders in .*training-data: put one folder of recordings"):
        nb.training_data("folders", tmp_path)  # the default WORK/training-data: made, empty, for the user to fill
    assert (tmp_path / "training-data").is_dir()
    with pytest.raises(MonitorError, match="training-data folder not found: .*nope"):
        nb.training_data("folders", tmp_path, root=str(tmp_path / "nope"))
    (tmp_path / "t.txt").write_text("0\t1\tfrog\n")
    got = nb.training_data("annotations", tmp_path, root=str(clips), annotations=str(tmp_path / "t.txt"))
    assert got[1:] == [f'data.annotations="{tmp_path / "t.txt"}"', f'data.root="{clips.resolve()}"']
    with pytest.raises(MonitorError, match="selection tables not found"):
        nb.training_data("annotations", tmp_path, root=str(clips))
    with pytest.raises(MonitorError, match="label csv not found"):
        nb.training_data("manifest", tmp_path, manifest=str(tmp_path / "t.txt"))
    with pytest.raises(MonitorError, match="DATA_SOURCE must be one of folders, annotations, manifest, report"):
        nb.training_data("workbook", tmp_path)
    rep = tmp_path / "reports" / "site"
    rep.mkdir(parents=True)
    (rep / "report.xlsx").write_bytes(b"")
    (rep / "run.json").write_text(json.dumps({"input_dir": str(clips)}))
    got = nb.training_data("report", tmp_path)  # the latest report; its recordings from run.json
    assert got == ["data.source=report", f'data.report="{rep / "report.xlsx"}"', f'data.root="{clips.resolve()}"']


def test_training_recipe_swaps_to_the_cpu_recipe_without_a_gpu_and_says_so(tmp_path, capsys):
    data = ["data.source=folders", f"data.root={tmp_path}"]
    cfg = nb.training_recipe("finetune_audioset", data, tmp_path, gpu=False)
    out = capsys.readouterr().out
    assert "No GPU here" in out and "small CPU recipe 'clips_cpu'" in out and "Change runtime type > GPU" in out
    assert cfg.model.init == "scratch" and cfg.model.size == "tiny224"
    assert cfg.data.cache_dir == str(tmp_path / "fbank-cache") and cfg.data.root == str(tmp_path)
    cfg = nb.training_recipe("finetune_audioset", data, tmp_path, gpu=False, cpu_recipe="same", epochs=3,
                             extra="optim.lr=0.00002; model.freeze=head")
    assert cfg.model.init == "audioset" and cfg.model.size == "base384" and cfg.optim.epochs == 3
    assert cfg.optim.lr == 2e-5 and cfg.model.freeze == "head"
    cfg = nb.training_recipe("finetune_audioset", data, tmp_path, gpu=True)
    assert cfg.model.init == "audioset" and cfg.model.checkpoint == "audioset-10-10"
    cfg = nb.training_recipe("clips_cpu", data, tmp_path, gpu=False)  # small already: no swap
    assert "No GPU: training on the CPU; recipe clips_cpu" in capsys.readouterr().out


def test_pretrained_checkpoint_found_in_the_cache_without_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MONITOR_CACHE", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "audioset_10_10_0.4593.pth").write_bytes(b"weights")
    cfg = nb.load_recipe("finetune_audioset")
    assert nb.pretrained_checkpoint(cfg) == tmp_path / "checkpoints" / "audioset_10_10_0.4593.pth"
    assert "(cached)" in capsys.readouterr().out
    assert nb.pretrained_checkpoint(nb.load_recipe("clips_cpu")) is None
    assert "from scratch" in capsys.readouterr().out


def test_listening_file_is_small_16khz_and_at_most_20s(tmp_path):
    import soundfile as sf

    sr = 48000
    x = 0.01 * np.random.default_rng(0).standard_normal(60 * sr).astype(np.float32)
    path = nb.listening_file(nb.Clip("a.wav", "frog", 0.0, 60.0, x, sr), tmp_path / "clips", "row0000_frog")
    info = sf.info(str(path))
    assert path.suffix in (".mp3", ".ogg", ".flac") and info.samplerate == 16000
    assert 19.5 <= info.duration <= 20.5
    assert path.stat().st_size < 150_000  # noise is the worst case for a codec
    y, _ = sf.read(str(path), dtype="float32")
    assert 0.5 < np.abs(y).max() <= 1.0  # peak-normalised, audible


@pytest.fixture
def restore_root_logger():
    """The test calls ``nb.notebook_logging()`` as the notebooks' first cell does; undone afterwards."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    root.setLevel(level)


@pytest.mark.slow
def test_train_resumes_a_broken_run_and_never_retrains_a_finished_one(tmp_path, shared, capsys, restore_root_logger):
    from monitor.train.cli import train

    nb.notebook_logging()  # the handler writes to this test's captured stdout
    clips = _clips(shared, tmp_path / "clips")
    cfg = nb.load_recipe("clips_cpu", [f"data.root={clips}", f"data.cache_dir={tmp_path / 'cache'}", *TINY])
    run = tmp_path / "runs" / "frog"
    partial = train(cfg, run, name="frog", stop_after_steps=1, progress=False)  # a disconnect after one step
    assert partial["bundle"] is None and (run / "checkpoints" / "last.pt").is_file()
    capsys.readouterr()
    res = nb.train(cfg, run, name="frog")  # the cell run again
    out = capsys.readouterr().out
    assert res["resumed"] and f"resuming the run in {run}" in out and (run / "bundle" / "bundle.json").is_file()
    assert "resumed at epoch 1, batch 1" in out and "epoch 2/2:" in out  # per-epoch metrics in the cell output
    assert "resumed at epoch 1" in (run / "train.log").read_text()
    steps = [int(ln.split(",")[0]) for ln in (run / "steps.csv").read_text().splitlines()[1:]]
    assert steps == list(range(len(steps))) and len(steps) > 1  # continued after step 0, not restarted
    again = nb.train(cfg, run, name="frog")
    assert not again["resumed"] and "already holds a finished run" in capsys.readouterr().out
    assert again["bundle"] == run / "bundle"
    other = nb.load_recipe("clips_cpu", [f"data.root={clips}", f"data.cache_dir={tmp_path / 'cache'}", *TINY,
                                          "optim.epochs=3"])
    with pytest.raises(MonitorError, match="holds a run of other settings"):
        nb.train(other, run, name="frog")


def test_notebook_module_has_no_smoke_mode_and_notebooks_call_only_what_exists():
    import nbformat

    assert not hasattr(nb, "smoke_mode")
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(str(path), as_version=4).cells:
            if cell.cell_type == "code":
                for name in set(__import__("re").findall(r"\bnb\.(\w+)\(", cell.source)):
                    assert callable(getattr(nb, name, None)), f"{path.name}: nb.{name} does not exist"
