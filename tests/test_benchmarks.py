"""The benchmarks' own calls into `monitor run`: a benchmark that breaks when the run's API changes reports
nothing, so each script's run helper is called here on a tiny card (figures are not checked: that is the
benchmarks' job)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO, write_wav

DEMO = REPO / "models" / "demo-frog-bird"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    folder = tmp_path_factory.mktemp("card")
    write_wav(folder / "20240412_211500.WAV", 21.0, 48000, noise=0.05, seed=3)
    return folder


def test_inference_benchmark_monitor_run(card, tmp_path):
    bench = _load("inference")
    wall_s, n = bench.monitor_run(card, tmp_path / "out", DEMO, 4, 0, "fp32")
    assert n == 3 and 0 < wall_s < 120  # 21 s: two full segments and a final 1 s one
    assert bench.WHOLE["out"] >= wall_s
    assert json.loads((tmp_path / "out" / "run.json").read_text())["counts"]["segments"] == 3


def test_gpu_benchmark_monitor_run_on_the_cpu(card, tmp_path):
    bench = _load("gpu")
    info = bench.monitor_run(card, tmp_path / "out", DEMO, "cpu", "4", "0", "fp32", [])
    assert info["counts"]["segments"] == 3 and info["whole_s"] >= info["wall_s"] > 0


def test_cascade_benchmark_monitor_run(card, tmp_path):
    """The cascade benchmark's run helper and its positives on the production path (a screen of the demo model
    whose thresholds escalate every segment: the cascade then equals the model alone)."""
    import shutil

    bench = _load("cascade")
    from monitor.model.bundle import load_bundle

    demo = load_bundle(DEMO)
    scr = tmp_path / "screen"
    shutil.copytree(DEMO, scr)
    data = json.loads((scr / "bundle.json").read_text())
    data["name"] = "demo-screen"
    data["screen"] = {"teacher": {"name": demo.name, "version": demo.version, "sha256": demo.sha256},
                      "thresholds": {k: 0.0 for k in demo.labels}, "target_recall": 0.99, "escalation": 1.0}
    (scr / "bundle.json").write_text(json.dumps(data))
    full = bench.monitor_run(card, tmp_path / "full", [str(DEMO)])
    cas = bench.monitor_run(card, tmp_path / "cas", [str(DEMO)], screen=str(scr), precision="fp32")
    assert full["segments"] == cas["segments"] == 3 and cas["whole_s"] >= cas["wall_s"] > 0
    assert cas["screen"]["segments_escalated"] == 3
    a = bench.agreement(tmp_path / "full", tmp_path / "cas")
    assert a["added"] == 0 and a["kept"] == a["teacher_pos"] and a["escalation"] == 1.0
