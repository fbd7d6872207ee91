"""Every notebook runs top to bottom in smoke mode (tiny data, tiny model, CPU), and is committed clean."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_run_on_sd_card.ipynb", "02_finetune_new_species.ipynb",
                                           "03_review_detections.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stripped_and_cells_thin(path):
    book = nbformat.read(str(path), as_version=4)
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
        src = cell.source
        assert "def " not in src and "class " not in src, "logic belongs in the monitor package"
        assert len(src.splitlines()) <= 16
    assert "MONITOR_SMOKE" in book.cells[1].source  # the first code cell selects smoke mode


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory, shared):
    """Tiny card, tiny bundle, a report with detections, tiny labelled clips."""
    import torch

    from monitor.config import FbankConfig, Preprocess, SegmentConfig
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle
    from monitor.pipeline import run

    base = tmp_path_factory.mktemp("nb")
    card = base / "card"
    card.mkdir()
    for name in ("S4A03895_20190522_060000.wav", "S4A03895_20190522_080000.wav"):
        shutil.copy(shared / "data" / "recordings" / "scikit-maad" / name, card / name)
    torch.manual_seed(0)
    model = AST(2, 16, 16, 128, 256, "tiny224", depth=1)
    pre = Preprocess(segment=SegmentConfig(window_s=2.5, hop_s=2.5), fbank=FbankConfig(target_frames=256))
    bundle = save_bundle(base / "bundle", model, name="tiny", version="0", labels=["frog", "bird"],
                         task="multilabel", preprocessing=pre, thresholds={"frog": 0.0, "bird": 1.0}).path
    report = base / "report"
    run(card, report, models=[str(bundle)], workers=0, progress=False)
    clips = base / "clips"
    for label, pattern in (("frog", "*.wav"), ("bird", "*.flac")):
        (clips / label).mkdir(parents=True)
        for p in sorted((shared / "data" / "clips" / label).glob(pattern))[:3]:
            shutil.copy(p, clips / label / p.name)
    return {"MONITOR_SMOKE": "1", "MONITOR_SMOKE_INPUT": str(card), "MONITOR_SMOKE_MODEL": str(bundle),
            "MONITOR_SMOKE_REPORT": str(report), "MONITOR_SMOKE_RECIPE": str(REPO / "configs" / "clips_cpu.yaml"),
            "MONITOR_SMOKE_OVERRIDES": ";".join([
                f"data.root={clips}", "data.cache_dir=", "model.depth=1", "optim.epochs=1", "optim.batch_size=4",
                "optim.warmup_steps=0", "segment.window_s=2.5", "segment.hop_s=2.5", "segment.min_segment_s=1.0",
                "fbank.target_frames=256", "split.val_fraction=0.34"]),
            "base": str(base)}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, smoke_env, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    env = dict(smoke_env)
    env["MONITOR_SMOKE_OUT"] = str(tmp_path / "out")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(str(path), as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if path.name.startswith("01"):
        assert (tmp_path / "out" / "report.xlsx").is_file()
    if path.name.startswith("02"):
        assert (tmp_path / "out" / "bundle" / "bundle.json").is_file()
        assert (tmp_path / "out" / "test-run" / "report.xlsx").is_file()
    if path.name.startswith("03"):
        import pandas as pd

        df = pd.read_excel(Path(env["MONITOR_SMOKE_REPORT"]) / "report.xlsx", sheet_name="Detections")
        assert df.loc[0, "Verified"] == "yes"
