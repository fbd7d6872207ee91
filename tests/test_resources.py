"""What ships in the package: recipes by name, the example card, the default model's search path, licences."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from monitor import resources
from monitor.train import recipes
from monitor.errors import MonitorError

CARD = REPO / "examples" / "sdcard"


def _monitor(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MONITOR_CACHE=str(cwd / ".cache"))
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_help_stays_instant_no_heavy_imports():
    code = ("import sys, monitor.cli as c, monitor.resources, monitor.train.recipes; c.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'pandas', 'timm', 'yaml'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "monitor", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "recipes" in res.stdout and "example-card" in res.stdout


def test_packaged_folders_in_a_checkout_are_the_top_level_ones():
    assert resources.models_dir() == REPO / "models"
    assert recipes.recipes_dir() == REPO / "configs"
    assert resources.example_card_source() == CARD
    with pytest.raises(ValueError):
        resources.packaged("notebooks")


def test_default_model_found_through_the_search_path(tmp_path, monkeypatch):
    from monitor.model.bundle import DEFAULT_MODEL, bundle_search_path, resolve

    monkeypatch.setenv("MONITOR_MODELS", str(tmp_path / "mine"))
    monkeypatch.setenv("MONITOR_CACHE", str(tmp_path / "cache"))
    assert bundle_search_path() == [tmp_path / "mine", resources.models_dir(), tmp_path / "cache" / "models"]
    assert resolve(DEFAULT_MODEL) == resources.models_dir() / DEFAULT_MODEL
    monkeypatch.chdir(tmp_path)  # any working directory
    assert resolve(DEFAULT_MODEL) == resources.models_dir() / DEFAULT_MODEL


# --- recipes ----------------------------------------------------------------------------------------------------

def test_recipe_names_and_one_line_summaries():
    names = recipes.recipe_names()
    assert {"demo", "clips_cpu", "finetune_audioset", "rana_draytonii", "esc50", "speechcommands"} <= set(names)
    rows = {r["name"]: r for r in recipes.list_recipes()}
    assert rows["finetune_audioset"]["summary"] == "Fine-tune the AudioSet-pretrained AST on your own labelled audio"
    assert all(r["summary"] and len(r["summary"]) < 120 for r in rows.values()), rows
    assert recipes.recipe_path("demo") == recipes.recipe_path("demo.yaml") == REPO / "configs" / "demo.yaml"
    with pytest.raises(MonitorError, match=r"no recipe file 'nosuch'.*packaged recipes: accent, clips_cpu, demo, esc50"):
        recipes.recipe_path("nosuch")
    with pytest.raises(MonitorError):
        recipes.recipe_path("../configs/demo")  # names only; a path must exist


def test_packaged_recipe_paths_read_as_if_in_configs_of_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rana = recipes.load_recipe("rana_draytonii")
    assert rana.data.root == str(tmp_path / "data") and rana.data.cache_dir == "auto"  # <out>/fbank_cache
    assert rana.model.checkpoint == "audioset-10-10"  # a name to pull, not a path
    demo = recipes.load_recipe("demo", ["optim.epochs=2", "data.root=clips"])
    assert demo.split.val_files == str(REPO / "configs" / "demo_val.txt")  # ships beside the recipe
    assert demo.data.root == str(tmp_path / "clips") and demo.optim.epochs == 2  # --set: relative to the cwd
    # a file of the user's keeps the usual rule: relative to the file's folder
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "mine.yaml").write_text("data:\n  root: ../audio\n")
    assert recipes.load_recipe(tmp_path / "cfg" / "mine.yaml").data.root == str(tmp_path / "audio")


def test_recipes_cli_list_show_copy(tmp_path):
    res = _monitor(tmp_path, "recipes", "list")
    assert res.returncode == 0
    assert re.search(r"^finetune_audioset +Fine-tune the AudioSet-pretrained AST", res.stdout, re.M), res.stdout
    res = _monitor(tmp_path, "recipes", "show", "demo")
    assert res.returncode == 0 and res.stdout.startswith("# The bundled demonstration model")
    assert "# ships with it: demo_val.txt" in res.stdout
    res = _monitor(tmp_path, "recipes", "copy", "demo", "mine")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "mine" / "demo.yaml").read_text() == (REPO / "configs" / "demo.yaml").read_text()
    assert (tmp_path / "mine" / "demo_val.txt").read_text() == (REPO / "configs" / "demo_val.txt").read_text()
    (tmp_path / "mine" / "demo.yaml").write_text("# my edits\n")
    res = _monitor(tmp_path, "recipes", "copy", "demo", "mine")
    assert res.returncode == 2 and "exists" in res.stderr and "--force" in res.stderr
    assert (tmp_path / "mine" / "demo.yaml").read_text() == "# my edits\n"  # a person's work is kept
    res = _monitor(tmp_path, "recipes", "copy", "rana_draytonii", "mine/frog.yaml")
    assert res.returncode == 0 and (tmp_path / "mine" / "frog.yaml").is_file()
    res = _monitor(tmp_path, "recipes", "copy", "demo", "mine", "--force")
    assert res.returncode == 0 and (tmp_path / "mine" / "demo.yaml").read_text().startswith("# The bundled")


def test_train_takes_a_recipe_name(tmp_path):
    res = _monitor(tmp_path, "train", "nosuch", "--out", "runs/x")
    assert res.returncode == 2 and "packaged recipes:" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = _monitor(tmp_path, "train", "rana_draytonii", "--out", "runs/r")  # resolves: its ./data is missing here
    assert res.returncode == 2 and str(tmp_path / "data") in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


# --- example card -----------------------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_example_card_api_writes_the_card_refuses_and_keeps_other_files(tmp_path):
    import monitor

    dest = monitor.example_card(tmp_path / "card")
    assert dest == tmp_path / "card" and _tree(dest) == _tree(CARD)
    assert "AM-POND/._20240412_211500.WAV" in _tree(dest) and _tree(dest)["SM4-MEADOW/S4A03895_20190522_100000.wav"] == b""
    assert monitor.example_card(dest) == dest  # already holds exactly the card: nothing to do
    (dest / "AM-POND" / "CONFIG.TXT").write_text("my edit")
    with pytest.raises(MonitorError, match="not empty.*--force"):
        monitor.example_card(dest)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(MonitorError, match="not empty"):
        monitor.example_card(tmp_path / "busy")
    monitor.example_card(tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert {k: v for k, v in _tree(tmp_path / "busy").items() if k != "notes.txt"} == _tree(CARD)
    (tmp_path / "file").write_text("x")
    with pytest.raises(MonitorError, match="is a file"):
        monitor.example_card(tmp_path / "file")


def test_example_card_cli(tmp_path):
    res = _monitor(tmp_path, "example-card", "card")
    assert res.returncode == 0, res.stderr
    assert "example SD card (9 files)" in res.stdout and "monitor run" in res.stdout
    assert _tree(tmp_path / "card") == _tree(CARD)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    res = _monitor(tmp_path, "example-card", "busy")
    assert res.returncode == 2 and res.stderr.startswith("monitor: error:") and "--force" in res.stderr
    res = _monitor(tmp_path, "example-card", "busy", "--force")
    assert res.returncode == 0 and (tmp_path / "busy" / "x").read_text() == "x"


def test_every_recording_on_the_card_is_attributed_under_a_redistributable_licence():
    """Public domain or permissive (MIT, BSD-3-Clause, CC0, CC BY) only, with the licence texts shipped."""
    text = (REPO / "examples" / "ATTRIBUTION.md").read_text()
    rows = [ln.split("|")[1:4] for ln in text.splitlines() if ln.startswith("| `")]
    allowed = re.compile(r"^(public domain|MIT|BSD 3-Clause|CC0|CC BY \d)", re.I)
    patterns = {}
    for files, _, licence in rows:
        assert allowed.match(licence.strip()) and not re.search(r"\b(NC|SA|ND)\b", licence), licence
        for f in re.findall(r"`([^`]+)`", files):
            patterns[f] = licence.strip()
    audio = [p.relative_to(CARD).as_posix() for p in CARD.rglob("*")
             if p.suffix.lower() == ".wav" and p.stat().st_size > 0 and not p.name.startswith("._")]
    assert len(audio) == 6
    from fnmatch import fnmatch

    for a in audio:
        hits = [lic for pat, lic in patterns.items() if fnmatch(a, pat)]
        assert hits, f"{a} has no row in examples/ATTRIBUTION.md"
        if hits[0].startswith("MIT"):
            assert a in (REPO / "examples" / "LICENSES" / "MIT-OpenSoundscape.txt").read_text()
        if hits[0].startswith("BSD"):
            assert a in (REPO / "examples" / "LICENSES" / "BSD-3-Clause-scikit-maad.txt").read_text()
