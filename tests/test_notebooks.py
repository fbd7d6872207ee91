"""The notebooks as committed: generated, output-free, thin, with working defaults and one install variable.

They are executed from the installed wheel in ``test_installed.py`` (01 and 03 as they are, 02 per data source).
"""

from __future__ import annotations

import re
import subprocess
import sys

import nbformat
import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _code(path):
    return [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]


def test_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_run_on_sd_card.ipynb", "02_finetune_new_species.ipynb",
                                           "03_review_detections.ipynb"]


def test_notebooks_are_what_the_script_generates():
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_notebooks.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stripped_and_cells_thin(path):
    for cell in _code(path):
        assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
        src = cell.source
        assert not re.search(r"^\s*(def|class) ", src, re.M), "logic belongs in the monitor package"
        assert len(src.splitlines()) <= 16
        assert "MONITOR_SMOKE" not in src, "no smoke mode: the defaults themselves are what CI runs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_install_variable_and_one_work_folder(path):
    cells = _code(path)
    setup, work = cells[0].source, cells[1].source
    urls = re.findall(r'^MONITOR_REPO = "([^"]+)"  # @param', setup, re.M)
    assert len(urls) == 1 and 'f"monitor[plots] @ {MONITOR_REPO}"' in setup and "PLACEHOLDER" in setup
    assert sum("MONITOR_REPO" in c.source for c in cells) == 1 and "github.com" not in "".join(c.source for c in cells[1:])
    readme = (REPO / "README.md").read_text()
    assert f"`{urls[0]}`" in readme and "`MONITOR_REPO`" in readme and "placeholder" in readme.lower()
    assert "nb.notebook_logging()" in setup
    assert "WORK = nb.work_folder(USE_DRIVE)" in work and "USE_DRIVE = True" in work
    assert not re.search(r'"(reports|runs|examples|configs)/', "".join(c.source for c in cells)), \
        "paths come from the work folder or the package, never from a checkout"


def test_02_offers_only_working_sources_and_the_audioset_default():
    from monitor.notebook import DATA_SOURCES
    from monitor.train.recipes import recipe_names
    from monitor.train.config import SOURCES

    src = "\n".join(c.source for c in _code(REPO / "notebooks" / "02_finetune_new_species.ipynb"))
    offered = re.search(r'^DATA_SOURCE = "folders"  # @param \[(.*)\]$', src, re.M).group(1)
    assert [x.strip(' "') for x in offered.split(",")] == list(DATA_SOURCES) == list(SOURCES)
    recipes = re.search(r'^RECIPE = "finetune_audioset"  # @param \[(.*)\]', src, re.M).group(1)
    assert {x.strip(' "') for x in recipes.split(",")} <= set(recipe_names())
    assert "nb.train(cfg, RUN_DIR, name=NAME)" in src and 'RUN_DIR = WORK / "runs" / NAME' in src


def test_01_and_03_share_the_report_folder_and_03_names_a_source_that_exists():
    s01 = "\n".join(c.source for c in _code(REPO / "notebooks" / "01_run_on_sd_card.ipynb"))
    book03 = nbformat.read(str(REPO / "notebooks" / "03_review_detections.ipynb"), as_version=4)
    s03 = "\n".join(c.source for c in book03.cells)
    assert "OUT_DIR = nb.report_folder(WORK, RUN_NAME or INPUT_DIR)" in s01
    assert "OUT_DIR = nb.report_to_review(WORK, RUN_NAME)" in s03  # the latest report in WORK/reports
    assert "data.source: report" in s03 and "workbook" not in s03
    assert "VERDICTS = {}  # @param" in s03  # nothing is recorded that the user did not decide
    assert "clips_dir=WORK / \"clips\"" in s03
