"""Write the Colab notebooks in ``notebooks/`` (outputs stripped). Every code cell is a thin call into
the ``monitor`` API; choices are Colab ``# @param`` form fields.

Smoke mode (CI): ``MONITOR_SMOKE=1`` plus ``MONITOR_SMOKE_*`` paths, read by each notebook's first cell.

    python scripts/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
GIT_URL = "git+https://github.com/monitor-bioacoustics/monitor.git"

SETUP = f'''# @title Set up { '{' }display-mode: "form"{ '}' }
import os, sys
SMOKE = os.environ.get("MONITOR_SMOKE", "") == "1"  # CI runs every notebook top to bottom in this mode
MONITOR_GIT_URL = "{GIT_URL}"  # @param {{type:"string"}}
try:
    import monitor
except ImportError:  # Colab or a fresh Jupyter: install monitor from its git URL
    import subprocess
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", MONITOR_GIT_URL])
    import monitor
import monitor.notebook as nb
print("monitor", monitor.__version__, "| Colab" if nb.in_colab() else "| local Jupyter", "| smoke mode" if SMOKE else "")'''

DRIVE = '''# @title Google Drive (optional) { display-mode: "form" }
USE_DRIVE = False  # @param {type:"boolean"}
DRIVE = nb.mount_drive() if USE_DRIVE and not SMOKE else None
print("Drive:", DRIVE or "not mounted")'''


def nb01():
    cells = [
        new_markdown_cell("# Run monitor on an SD card\n\nPoint it at a folder of recordings (an SD card copied to "
                          "Drive, or the bundled example card), pick a model, and get the Excel report of when each "
                          "species was heard."),
        new_code_cell(SETUP),
        new_code_cell(DRIVE),
        new_code_cell('''# @title Choose the recordings and the model { display-mode: "form" }
INPUT_DIR = "examples/sdcard"  # @param {type:"string"}
MODEL = "demo-frog-bird"  # @param ["demo-frog-bird", "/content/drive/MyDrive/monitor/models/my-species"] {allow-input: true}
OUT_DIR = "reports/notebook"  # @param {type:"string"}
BATCH_SIZE = 16  # @param {type:"integer"}
if SMOKE:
    INPUT_DIR, MODEL, OUT_DIR = (os.environ["MONITOR_SMOKE_INPUT"], os.environ["MONITOR_SMOKE_MODEL"],
                                 os.environ["MONITOR_SMOKE_OUT"])
nb.describe_model(MODEL)'''),
        new_code_cell('''# @title Run { display-mode: "form" }
info = monitor.run(INPUT_DIR, OUT_DIR, models=[MODEL], batch_size=BATCH_SIZE, workers=0 if SMOKE else None)
info.counts'''),
        new_code_cell('''# @title Summary: when each species was heard { display-mode: "form" }
nb.summary_table(OUT_DIR, positives_only=False)'''),
        new_code_cell('''# @title Get the workbook { display-mode: "form" }
nb.offer_download(os.path.join(OUT_DIR, "report.xlsx"))'''),
    ]
    return cells


def nb02():
    cells = [
        new_markdown_cell("# Fine-tune a model on a new species\n\nBring labelled audio (a folder per species, "
                          "Raven/Audacity selection tables, or a reviewed `report.xlsx`), pick a recipe, train on "
                          "the Colab GPU, look at the curves, and export a bundle that `monitor run` uses directly."),
        new_code_cell(SETUP),
        new_code_cell(DRIVE),
        new_code_cell('''# @title Data and recipe { display-mode: "form" }
RECIPE = "configs/clips_cpu.yaml"  # @param ["configs/clips_cpu.yaml", "configs/demo.yaml", "configs/rana_draytonii.yaml"] {allow-input: true}
DATA_SOURCE = "folders"  # @param ["folders", "annotations", "workbook", "ast_json"]
DATA_ROOT = "/content/drive/MyDrive/monitor/clips"  # @param {type:"string"}
ANNOTATIONS = ""  # @param {type:"string"}
EPOCHS = 10  # @param {type:"integer"}
OUT = "runs/notebook"  # @param {type:"string"}
NAME = "my-species"  # @param {type:"string"}
overrides = [f"data.source={DATA_SOURCE}", f"data.root={os.path.abspath(DATA_ROOT)}", f"optim.epochs={EPOCHS}"]
if ANNOTATIONS:
    overrides.append(f"data.annotations={os.path.abspath(ANNOTATIONS)}")
if SMOKE:
    RECIPE, OUT = os.environ["MONITOR_SMOKE_RECIPE"], os.environ["MONITOR_SMOKE_OUT"]
    overrides = os.environ["MONITOR_SMOKE_OVERRIDES"].split(";")
cfg = nb.load_recipe(RECIPE, overrides)
cfg'''),
        new_code_cell('''# @title Train (live loss and metrics) { display-mode: "form" }
result = nb.train(cfg, OUT, name=NAME)'''),
        new_code_cell('''# @title Learning curve and precision-recall curves { display-mode: "form" }
nb.show_training_plots(OUT)'''),
        new_code_cell('''# @title Validation metrics and calibrated thresholds { display-mode: "form" }
nb.training_report(OUT)'''),
        new_code_cell('''# @title Export the bundle to Drive { display-mode: "form" }
BUNDLE = nb.bundle_path(OUT)
if DRIVE is not None:
    BUNDLE = nb.copy_bundle(BUNDLE, DRIVE / "monitor" / "models" / NAME)
print("bundle:", BUNDLE)'''),
        new_code_cell('''# @title Run it on a test folder { display-mode: "form" }
TEST_DIR = "examples/sdcard"  # @param {type:"string"}
if SMOKE:
    TEST_DIR = os.environ["MONITOR_SMOKE_INPUT"]
info = monitor.run(TEST_DIR, os.path.join(OUT, "test-run"), models=[str(BUNDLE)], workers=0 if SMOKE else None)
nb.summary_table(os.path.join(OUT, "test-run"))'''),
    ]
    return cells


def nb03():
    cells = [
        new_markdown_cell("# Review detections\n\nListen to each detection, look at its spectrogram, and record "
                          "yes / no / unsure in the workbook's `Verified` column. The reviewed workbook is a data "
                          "source for the next fine-tune (`data.source: workbook`)."),
        new_code_cell(SETUP),
        new_code_cell(DRIVE),
        new_code_cell('''# @title The report to review { display-mode: "form" }
OUT_DIR = "reports/example"  # @param {type:"string"}
MAX_SHOWN = 10  # @param {type:"integer"}
if SMOKE:
    OUT_DIR, MAX_SHOWN = os.environ["MONITOR_SMOKE_REPORT"], 2
detections = nb.detections(OUT_DIR)
detections.head(MAX_SHOWN)'''),
        new_code_cell('''# @title Look and listen { display-mode: "form" }
for row in range(min(MAX_SHOWN, len(detections))):
    nb.show_detection(OUT_DIR, row)'''),
        new_code_cell('''# @title Record your verdicts { display-mode: "form" }
# row number (as listed above) -> "yes", "no" or "unsure"
VERDICTS = {0: "yes"}  # @param {type:"raw"}
NOTES = {}  # @param {type:"raw"}
nb.record_verdicts(OUT_DIR, VERDICTS, NOTES)
nb.reviewed(OUT_DIR)'''),
    ]
    return cells


def write(name: str, cells) -> Path:
    book = new_notebook(cells=cells, metadata={
        "colab": {"provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU" if name.startswith("02") else "None",
    })
    path = REPO / "notebooks" / name
    path.parent.mkdir(exist_ok=True)
    nbformat.write(book, str(path))
    return path


def main() -> None:
    for name, cells in [("01_run_on_sd_card.ipynb", nb01()), ("02_finetune_new_species.ipynb", nb02()),
                        ("03_review_detections.ipynb", nb03())]:
        print(write(name, cells))


if __name__ == "__main__":
    main()
