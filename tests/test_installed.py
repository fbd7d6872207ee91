"""The installed package, as users get it, not the checkout.

A wheel is built from a copy of the checkout (what ``pip install git+...`` builds), installed with
``--no-deps`` into a fresh virtualenv, and everything below runs from empty temporary folders:
``monitor run`` on the packaged example card with the packaged default model, notebooks 01 and 03 with
their default values, and notebook 02 once per data source at smoke size.

What is not the real thing, exactly:
- The virtualenv sees this test environment's packages (``--system-site-packages`` plus a ``.pth`` file
  naming this environment's site-packages), so torch is not installed again; ``monitor`` itself comes only
  from the wheel (checked: ``monitor.__file__`` lies in the virtualenv, in the CLI and in the notebook kernel).
- The notebooks' install cell skips its ``pip install`` because monitor is importable (no network in CI),
  and ``USE_DRIVE`` finds no Colab, so the work folder is ``./monitor-work`` in the empty folder.
- Notebook 02 gets new values in its form fields only: the data source's paths (data made here from
  ../shared), ``EPOCHS = 1`` and ``EXTRA`` settings that shrink the model and the windows (tiny224, one
  block, 2.5 s windows, at most 8 windows per label). ``$MONITOR_CACHE`` holds a locally made checkpoint
  in the official AudioSet key layout (``../shared/golden/ast_official_tiny.pt``, tiny224) under the file
  name of ``audioset-10-10``, so ``monitor models pull audioset-10-10`` finds it cached: CI cannot download
  the real 340 MB one. The folders run keeps the default ``CPU_RECIPE`` (no GPU in CI: the swap to the
  small CPU recipe); the others set ``CPU_RECIPE = "same"`` to fine-tune from the AudioSet layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

NOTEBOOKS = REPO / "notebooks"
SOURCES = ("pyproject.toml", "setup.py", "README.md", "monitor", "models", "configs", "examples")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
SMOKE_EXTRA = ("model.size=tiny224; model.depth=1; model.fstride=16; model.tstride=16; fbank.target_frames=256; "
               "segment.window_s=2.5; segment.hop_s=2.5; segment.min_segment_s=1.0; optim.batch_size=4; "
               "split.val_fraction=0.34; data.max_per_label=8")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    python: Path
    monitor: Path
    jupyter_path: Path  # holds the kernelspec "monitor-wheel" that runs the venv's python
    build_s: float


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _can_build_offline() -> bool:
    """This environment can build a wheel without an isolated build environment (setuptools + bdist_wheel)."""
    import importlib.util

    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _build(root: Path) -> Installed:
    import site

    t0 = time.perf_counter()
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=IGNORE)
        else:
            shutil.copy2(p, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(src)]
    if _can_build_offline():
        cmd.insert(4, "--no-build-isolation")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheel = next((root / "dist").glob("monitor-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    base = Path(sys.base_prefix).resolve()
    parents = [p for p in site.getsitepackages() if not Path(p).resolve().is_relative_to(base)]
    (_site_packages(venv) / "_test_environment.pth").write_text("".join(f"{p}\n" for p in parents))
    python = venv / "bin" / "python"
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    kernel = root / "jupyter" / "kernels" / "monitor-wheel"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "monitor from the wheel", "language": "python"}))
    return Installed(wheel, venv, python, venv / "bin" / "monitor", root / "jupyter", time.perf_counter() - t0)


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    """Built once per test run, shared by the pytest-xdist workers (a lock; the first one builds)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "installed-wheel"
    with FileLock(str(root) + ".lock"):
        done = root / "installed.json"
        if not done.is_file():
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            inst = _build(root)
            done.write_text(json.dumps({k: str(v) for k, v in inst.__dict__.items()}))
        raw = json.loads(done.read_text())
    return Installed(**{k: (float(v) if k == "build_s" else Path(v)) for k, v in raw.items()})


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MONITOR_MODELS", "MPLBACKEND")}
    env["MONITOR_CACHE"] = str(cache)
    return env


def _cli(inst: Installed, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(inst.monitor), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_env(cwd.parent / "cache"))


# --- the wheel --------------------------------------------------------------------------------------------

def test_wheel_holds_what_the_defaults_need_and_is_small(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    size_mb = installed.wheel.stat().st_size / 1e6
    assert size_mb < 20, f"wheel is {size_mb:.1f} MB"
    for rel in ("models/demo-frog-bird/bundle.json", "models/demo-frog-bird/model.safetensors",
                "models/demo-frog-bird/model_card.md", "configs/demo_val.txt", "examples/ATTRIBUTION.md"):
        assert f"monitor/_data/{rel}" in names, rel
    for p in (REPO / "configs").glob("*.yaml"):
        assert f"monitor/_data/configs/{p.name}" in names
    card = REPO / "examples" / "sdcard"
    for p in card.rglob("*"):  # dotfiles and the 0-byte file too: the card shows what real cards hold
        if p.is_file():
            assert f"monitor/_data/examples/sdcard/{p.relative_to(card).as_posix()}" in names, p
    for p in (REPO / "examples" / "LICENSES").glob("*"):
        assert f"monitor/_data/examples/LICENSES/{p.name}" in names
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "benchmarks/", "scripts/"))]
    code = {n for n in names if n.startswith("monitor/") and n.endswith(".py")}
    for p in (REPO / "monitor").rglob("*.py"):
        assert f"monitor/{p.relative_to(REPO / 'monitor').as_posix()}" in code, p


def test_venv_imports_monitor_from_the_wheel_not_the_checkout(installed, tmp_path):
    res = subprocess.run([str(installed.python), "-c", "import monitor, monitor.resources as r; "
                          "print(monitor.__file__); print(r.models_dir()); print(r.example_card_source())"],
                         cwd=tmp_path, capture_output=True, text=True, env=_env(tmp_path / "cache"), timeout=120)
    assert res.returncode == 0, res.stderr
    site_dir = _site_packages(installed.venv).resolve()
    for line in res.stdout.split():
        assert Path(line).resolve().is_relative_to(site_dir / "monitor"), line


# --- the CLI from an empty folder ---------------------------------------------------------------------------

def test_monitor_run_packaged_card_with_packaged_default_model(installed, tmp_path):
    import pandas as pd

    here = tmp_path / "empty"
    res = _cli(installed, here, "example-card", "card")
    assert res.returncode == 0, res.stderr
    card = here / "card"
    packaged = REPO / "examples" / "sdcard"
    assert sorted(p.relative_to(card) for p in card.rglob("*")) == sorted(p.relative_to(packaged)
                                                                          for p in packaged.rglob("*"))
    t0 = time.perf_counter()
    res = _cli(installed, here, "run", "card", "--out", "reports/example")  # no --model: the packaged default
    run_s = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert "9 files: 6 ok, 3 skipped, 0 failed" in res.stdout
    out = here / "reports" / "example"
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["name"] == "demo-frog-bird"
    rec = pd.read_csv(out / "recordings.csv", keep_default_na=False)
    assert sorted(rec.file) == sorted(p.relative_to(card).as_posix() for p in card.rglob("*") if p.is_file())
    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    assert "frog" in set(det[det.file == "AM-POND/20240412_211500.WAV"].label)
    assert "bird" in set(det[det.file == "AM-POND/20240413_060000.WAV"].label)
    assert sorted(p.name for p in (out / "plots").glob("*.png")), "the plots extra's matplotlib is installed here"
    print(f"wheel {installed.wheel.stat().st_size / 1e6:.1f} MB, built and installed in {installed.build_s:.0f} s; "
          f"monitor run on the example card {run_s:.0f} s")


def test_cli_recipes_models_and_example_card_refusal(installed, tmp_path):
    here = tmp_path / "empty"
    res = _cli(installed, here, "recipes", "list")
    assert res.returncode == 0 and "finetune_audioset" in res.stdout and "rana_draytonii" in res.stdout
    res = _cli(installed, here, "recipes", "copy", "demo", "mine")
    assert res.returncode == 0, res.stderr
    assert (here / "mine" / "demo.yaml").is_file() and (here / "mine" / "demo_val.txt").is_file()
    res = _cli(installed, here, "models", "list")
    assert res.returncode == 0 and "demo-frog-bird (default)" in res.stdout
    (here / "busy").mkdir()
    (here / "busy" / "notes.txt").write_text("mine")
    res = _cli(installed, here, "example-card", "busy")
    assert res.returncode == 2 and "not empty" in res.stderr and "--force" in res.stderr
    # a recipe by name: its data folder (./data, as if the recipe were ./configs/NAME.yaml) does not exist here
    res = _cli(installed, here, "train", "rana_draytonii", "--out", "runs/r")
    assert res.returncode == 2 and str(here / "data") in res.stderr, res.stderr


# --- notebooks ------------------------------------------------------------------------------------------------

def set_params(book, values: dict[str, object]) -> None:
    """Change form fields (``NAME = value  # @param ...`` lines) as a user would in Colab's form."""
    for key, value in values.items():
        pattern = re.compile(rf"^{key} = .*?(  # @param.*)$", re.M)
        hits = [c for c in book.cells if c.cell_type == "code" and pattern.search(c.source)]
        assert len(hits) == 1, f"form field {key} found in {len(hits)} cells"
        hits[0].source = pattern.sub(lambda m: f"{key} = {value!r}{m.group(1)}", hits[0].source)


def execute(inst: Installed, name: str, cwd: Path, cache: Path, monkeypatch, params: dict | None = None):
    """Run notebook ``name`` top to bottom in a kernel of the wheel's virtualenv, in folder ``cwd``."""
    import nbformat
    from nbclient import NotebookClient

    for k, v in _env(cache).items():
        monkeypatch.setenv(k, v)
    for k in ("PYTHONPATH", "MONITOR_MODELS", "MPLBACKEND"):  # the kernel shows figures inline, as in Colab
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(inst.jupyter_path))
    book = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    set_params(book, params or {})
    cwd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    NotebookClient(book, timeout=600, kernel_name="monitor-wheel", resources={"metadata": {"path": str(cwd)}}).execute()
    book.metadata["wall_s"] = round(time.perf_counter() - t0, 1)
    n = len(list(cwd.glob(f"executed-*{name}")))
    nbformat.write(book, str(cwd / f"executed-{n + 1}-{name}"))  # kept for a look: pytest --basetemp=DIR
    return book


def text_of(cell) -> str:
    """Everything a cell printed (stdout, stderr, text results)."""
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data") and "text/plain" in o.get("data", {}):
            parts.append(o.data["text/plain"])
    return "".join(parts)


def cell_titled(book, title: str):
    pattern = re.compile(rf"@title {re.escape(title)}\b")
    return next(c for c in book.cells if c.cell_type == "code" and pattern.search(c.source))


def check_setup_cell(book, inst: Installed) -> None:
    out = text_of(book.cells[1])
    where = Path(out.split(" from ", 1)[1].strip())
    assert where.resolve().is_relative_to(_site_packages(inst.venv).resolve()), out  # the wheel, not the checkout


def test_notebooks_01_and_03_defaults_then_a_review_trains_in_02(installed, tmp_path, monkeypatch,
                                                                 audioset_layout_cache):
    """The user's path: 01 and 03 as they are; then verdicts in 03, and 02 training on the reviewed report."""
    import pandas as pd

    here, cache = tmp_path / "empty", audioset_layout_cache
    b01 = execute(installed, "01_run_on_sd_card.ipynb", here, cache, monkeypatch)
    check_setup_cell(b01, installed)
    out = here / "monitor-work" / "reports" / "example-card"
    assert "9 files: 6 ok, 3 skipped, 0 failed" in text_of(cell_titled(b01, "Run"))
    assert (out / "report.xlsx").is_file() and (here / "monitor-work" / "example-card" / "AM-POND").is_dir()

    b03 = execute(installed, "03_review_detections.ipynb", here, cache, monkeypatch)
    assert str(out) in text_of(cell_titled(b03, "The report to review"))  # 01's report, found by default
    clips = sorted((here / "monitor-work" / "clips" / "example-card").glob("row*"))
    assert len(clips) == 5 and all(p.stat().st_size < 200_000 for p in clips), clips
    size = (here / "executed-1-03_review_detections.ipynb").stat().st_size
    assert size < 1_000_000, f"notebook 03 with 5 players and spectrograms is {size / 1e6:.1f} MB"
    shown = [o for o in cell_titled(b03, "Look and listen").outputs if o.output_type == "display_data"]
    kinds = ["spectrogram" if "image/jpeg" in o.data else "player" if "<audio" in o.data.get("text/html", "") else "?"
             for o in shown]
    assert kinds == ["spectrogram", "player"] * 5, kinds
    assert "0 verdicts recorded" in text_of(cell_titled(b03, "Record your verdicts"))

    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    verdicts = {i: ("yes" if i % 2 == 0 else "no") for i in range(len(det))}
    b03 = execute(installed, "03_review_detections.ipynb", here, cache, monkeypatch, {"VERDICTS": verdicts})
    assert f"{len(det)} verdicts recorded" in text_of(cell_titled(b03, "Record your verdicts"))
    df = pd.read_excel(out / "report.xlsx", sheet_name="Detections")
    assert list(df["Verified"]) == [verdicts[i] for i in range(len(det))]

    b02 = execute(installed, "02_finetune_new_species.ipynb", here, cache, monkeypatch,
                  {"DATA_SOURCE": "report", "EPOCHS": 1, "EXTRA": SMOKE_EXTRA, "CPU_RECIPE": "same"})
    _check_02(b02, here, installed)


@pytest.fixture(scope="module")
def audioset_layout_cache(tmp_path_factory, shared) -> Path:
    """A cache whose audioset-10-10 file is a tiny checkpoint in the official key layout (made here)."""
    import torch

    cache = tmp_path_factory.mktemp("cache")
    case = torch.load(shared / "golden" / "ast_official_tiny.pt", weights_only=True)["tiny_f16t16_td200"]
    (cache / "checkpoints").mkdir()
    torch.save(case["state_dict"], cache / "checkpoints" / "audioset_10_10_0.4593.pth")
    return cache


def _clips(shared: Path, dest: Path, n: int = 3) -> list[tuple[str, Path]]:
    out = []
    for label, pattern in (("frog", "*.wav"), ("bird", "*.flac")):
        for p in sorted((shared / "data" / "clips" / label).glob(pattern))[:n]:
            (dest / label).mkdir(parents=True, exist_ok=True)
            out.append((label, Path(shutil.copy(p, dest / label / p.name))))
    return out


def _data_for(source: str, shared: Path, data: Path) -> dict[str, str]:
    """The form values of notebook 02 for ``source``, with its data made from ../shared."""
    if source == "folders":
        _clips(shared, data / "clips")
        return {"DATA_ROOT": str(data / "clips")}
    if source == "annotations":
        tables = data / "tables"
        tables.mkdir(parents=True)
        for i, (label, p) in enumerate(_clips(shared, data / "recordings")):
            import soundfile as sf

            dur = sf.info(str(p)).duration
            if i % 2:  # a Raven table: a Waveform and a Spectrogram row per selection, the recording named inside
                (tables / f"{p.stem}.Table.1.selections.txt").write_text(
                    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tBegin File\tSpecies\n"
                    f"1\tWaveform 1\t1\t0.0\t{dur:.3f}\t{p.name}\t{label}\n"
                    f"1\tSpectrogram 1\t1\t0.0\t{dur:.3f}\t{p.name}\t{label}\n")
            else:  # an Audacity label file named after the recording
                (tables / f"{p.stem}.txt").write_text(f"0.0\t{dur:.3f}\t{label}\n")
        return {"DATA_ROOT": str(data / "recordings"), "ANNOTATIONS": str(tables)}
    if source == "manifest":
        mids = {"frog": "/m/09ld4", "bird": "/m/015p6"}
        items = [{"wav": str(p), "labels": mids[label]} for label, p in _clips(shared, data / "audio", n=4)]
        (data / "train.json").write_text(json.dumps({"data": items}))
        (data / "labels.csv").write_text("index,mid,display_name\n0,/m/09ld4,frog\n1,/m/015p6,bird\n")
        return {"MANIFEST": str(data / "train.json"), "LABEL_CSV": str(data / "labels.csv")}
    raise ValueError(source)


def _check_02(book, here: Path, inst: Installed, swapped: bool = False) -> None:
    check_setup_cell(book, inst)
    run = here / "monitor-work" / "runs" / "my-species"
    assert (run / "bundle" / "bundle.json").is_file()
    recipe = text_of(cell_titled(book, "Recipe"))
    assert ("small CPU recipe 'clips_cpu'" in recipe) == swapped, recipe
    pull = text_of(cell_titled(book, "Pretrained AudioSet checkpoint"))
    assert ("from scratch" in pull) == swapped, pull
    train = text_of(cell_titled(book, "Train"))
    assert "new run in" in train and re.search(r"epoch 1/\d+: train_loss [0-9.]+", train) and "bundle:" in train, train
    tried = text_of(cell_titled(book, "Try the new model"))
    assert "9 files: 6 ok, 3 skipped, 0 failed" in tried, tried
    assert (here / "monitor-work" / "reports" / "my-species-test" / "report.xlsx").is_file()


@pytest.mark.parametrize("source", ["folders", "annotations", "manifest"])
def test_notebook_02_per_data_source(installed, source, tmp_path, monkeypatch, shared, audioset_layout_cache):
    here = tmp_path / "empty"
    params = {"DATA_SOURCE": source, "EPOCHS": 1, "EXTRA": SMOKE_EXTRA, **_data_for(source, shared, tmp_path / "data")}
    if source != "folders":
        params["CPU_RECIPE"] = "same"  # fine-tune from the AudioSet layout on this CPU
    book = execute(installed, "02_finetune_new_species.ipynb", here, audioset_layout_cache, monkeypatch, params)
    _check_02(book, here, installed, swapped=source == "folders")
    if source == "folders":  # run again, as after a disconnect at the very end: nothing is trained twice
        again = execute(installed, "02_finetune_new_species.ipynb", here, audioset_layout_cache, monkeypatch, params)
        assert "already holds a finished run" in text_of(cell_titled(again, "Train"))
