"""Write the Colab notebooks in ``notebooks/`` (outputs stripped). Every code cell is a thin call into
the ``monitor`` API (``monitor.notebook``); choices are Colab ``# @param`` form fields whose default
values work as they are: CI runs 01 and 03 unchanged from an installed wheel, and 02 once per data
source with only its form values changed (``tests/test_installed.py``).

    python scripts/make_notebooks.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
NAMES = ("01_run_on_sd_card.ipynb", "02_finetune_new_species.ipynb", "03_review_detections.ipynb")
# Where the install cell installs monitor from. A PLACEHOLDER: the repository's real address is not known
# yet. Change it here (and in README.md, "Notebooks"), then run this script.
MONITOR_REPO = "git+https://github.com/YOUR-ORG/monitor.git"

SETUP = f'''# @title Set up: install monitor when it is missing (Colab) {{ display-mode: "form" }}
# MONITOR_REPO: where monitor is installed from (a pip URL). A PLACEHOLDER until the repository's real
# address is known: put this repository's git URL here (README.md, "Notebooks").
MONITOR_REPO = "{MONITOR_REPO}"  # @param {{type:"string"}}
import os, subprocess, sys
try:
    import monitor
except ImportError:  # Colab or a fresh Jupyter: install monitor with its plots extra
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"monitor[plots] @ {{MONITOR_REPO}}"])
    import monitor
import monitor.notebook as nb
nb.notebook_logging()  # run summaries and per-epoch training metrics show below the cells
print("monitor", monitor.__version__, "from", os.path.dirname(monitor.__file__))'''

WORK = '''# @title Work folder { display-mode: "form" }
# Reports, training runs and their checkpoints all go to one folder: MyDrive/monitor-work on Google Drive
# (it survives a Colab disconnect), or ./monitor-work on this machine when Drive is not used.
USE_DRIVE = True  # @param {type:"boolean"}
WORK = nb.work_folder(USE_DRIVE)'''


def nb01():
    return [
        new_markdown_cell("# Run monitor on an SD card\n\nPoint it at a folder of recordings (an SD card copied to "
                          "Drive, or the bundled example card), pick a model, and get the Excel report of when each "
                          "species was heard. The report lands in the work folder, where notebook 03 finds it "
                          "for review."),
        new_code_cell(SETUP),
        new_code_cell(WORK),
        new_code_cell('''# @title Recordings, model and report folder { display-mode: "form" }
INPUT_DIR = ""  # @param {type:"string"}
# ^ a folder of recordings, e.g. a card copied to Drive: /content/drive/MyDrive/cards/site-A
#   (empty: the bundled example SD card, written to WORK/example-card)
MODEL = "demo-frog-bird"  # @param ["demo-frog-bird"] {allow-input: true}
# ^ a bundle name or folder, e.g. one trained in notebook 02: WORK/runs/<NAME>/bundle
RUN_NAME = ""  # @param {type:"string"}
# ^ the report goes to WORK/reports/RUN_NAME (empty: named after the input folder)
BATCH_SIZE = 16  # @param {type:"integer"}
EMBEDDINGS = True  # @param {type:"boolean"}
# ^ also keep each segment's embedding: search by example and new heads in seconds (notebook 03)
INPUT_DIR = nb.input_folder(INPUT_DIR, WORK)
OUT_DIR = nb.report_folder(WORK, RUN_NAME or INPUT_DIR)
print("report folder:", OUT_DIR)
_ = nb.describe_model(MODEL)'''),
        new_code_cell('''# @title Run (resumes where it stopped when run again) { display-mode: "form" }
info = monitor.run(INPUT_DIR, OUT_DIR, models=[MODEL], batch_size=BATCH_SIZE, embeddings=EMBEDDINGS)
print(nb.run_summary(info))
print("reports in", OUT_DIR)'''),
        new_code_cell('''# @title Summary: when each species was heard { display-mode: "form" }
nb.summary_table(OUT_DIR)'''),
        new_code_cell('''# @title Get the workbook { display-mode: "form" }
nb.offer_download(OUT_DIR / "report.xlsx")'''),
    ]


def nb02():
    return [
        new_markdown_cell("# Fine-tune a model on a new species\n\nBring labelled audio (a folder per species, "
                          "Raven/Audacity selection tables, the official AST json manifest, or a report reviewed in "
                          "notebook 03), fine-tune the AudioSet AST on the Colab GPU, look at the curves, and export "
                          "a bundle that `monitor run` (notebook 01) uses directly. The run folder is in the work "
                          "folder: after a disconnect, run the cells again and training resumes from its last "
                          "checkpoint."),
        new_code_cell(SETUP),
        new_code_cell(WORK),
        new_code_cell('''# @title Training data { display-mode: "form" }
DATA_SOURCE = "folders"  # @param ["folders", "annotations", "manifest", "report", "embeddings"]
# folders:     one folder per label in DATA_ROOT (DATA_ROOT/frog/*.wav ...; empty: WORK/training-data)
# annotations: Raven / Audacity selection tables (ANNOTATIONS: a file or folder) over recordings in DATA_ROOT
# manifest:    the official AST json {"data": [{"wav", "labels"}]} (MANIFEST) with its label csv (LABEL_CSV)
# report:      a report reviewed in notebook 03 (REPORT: its folder; empty: the latest in WORK/reports)
# embeddings:  a new head on that report's stored embeddings and verdicts: seconds on a CPU (as REPORT)
DATA_ROOT = ""  # @param {type:"string"}
ANNOTATIONS = ""  # @param {type:"string"}
MANIFEST = ""  # @param {type:"string"}
LABEL_CSV = ""  # @param {type:"string"}
REPORT = ""  # @param {type:"string"}
data = nb.training_data(DATA_SOURCE, WORK, root=DATA_ROOT, annotations=ANNOTATIONS, manifest=MANIFEST,
                        label_csv=LABEL_CSV, report=REPORT)'''),
        new_code_cell('''# @title Recipe { display-mode: "form" }
RECIPE = "finetune_audioset"  # @param ["finetune_audioset", "rana_draytonii", "clips_cpu"] {allow-input: true}
# ^ a packaged recipe (`monitor recipes list`) or a YAML file; finetune_audioset fine-tunes the AudioSet AST
CPU_RECIPE = "clips_cpu"  # @param ["clips_cpu", "same"]
# ^ used instead when there is no GPU (an AudioSet fine-tune takes hours per epoch on a CPU); "same": no swap
EPOCHS = 0  # @param {type:"integer"}
# ^ 0: as many as the recipe says
EXTRA = ""  # @param {type:"string"}
# ^ more settings, "section.key=value" separated by ";", e.g. "optim.lr=0.00002; model.freeze=head"
NAME = "my-species"  # @param {type:"string"}
# ^ the run folder WORK/runs/NAME keeps checkpoints, curves and the exported bundle
cfg = nb.training_recipe(RECIPE, data, WORK, cpu_recipe=CPU_RECIPE, epochs=EPOCHS, extra=EXTRA)
RUN_DIR = WORK / "runs" / NAME'''),
        new_code_cell('''# @title Pretrained AudioSet checkpoint (downloaded once, about 340 MB) { display-mode: "form" }
_ = nb.pretrained_checkpoint(cfg)'''),
        new_code_cell('''# @title Train (after a disconnect, run the cells again: it resumes from the last checkpoint) { display-mode: "form" }
result = nb.train(cfg, RUN_DIR, name=NAME)'''),
        new_code_cell('''# @title Learning curve and precision-recall curves { display-mode: "form" }
_ = nb.show_training_plots(RUN_DIR)'''),
        new_code_cell('''# @title Validation metrics and calibrated thresholds { display-mode: "form" }
nb.training_report(RUN_DIR)'''),
        new_code_cell('''# @title Try the new model on a folder of recordings { display-mode: "form" }
TEST_DIR = ""  # @param {type:"string"}
# ^ a folder of recordings (empty: the bundled example SD card)
BUNDLE = nb.bundle_path(RUN_DIR)
print(f"bundle: {BUNDLE} (notebook 01: MODEL = {str(BUNDLE)!r})")
TEST_DIR = nb.input_folder(TEST_DIR, WORK)
TEST_OUT = nb.report_folder(WORK, f"{NAME}-test")
info = monitor.run(TEST_DIR, TEST_OUT, models=[str(BUNDLE)])
print(nb.run_summary(info), "| reports in", TEST_OUT)
nb.summary_table(TEST_OUT)'''),
    ]


def nb03():
    return [
        new_markdown_cell("# Review detections\n\nListen to each detection, look at its spectrogram, and record "
                          "yes / no / unsure. The verdicts go into the report's `Verified` column; the reviewed "
                          "report is a training source for the next fine-tune (notebook 02, `DATA_SOURCE = "
                          "\"report\"`; `data.source: report` in a recipe)."),
        new_code_cell(SETUP),
        new_code_cell(WORK),
        new_code_cell('''# @title The report to review { display-mode: "form" }
RUN_NAME = ""  # @param {type:"string"}
# ^ a report folder in WORK/reports (empty: the one written last, e.g. by notebook 01)
MAX_SHOWN = 5  # @param {type:"integer"}
OUT_DIR = nb.report_to_review(WORK, RUN_NAME)
detections = nb.detections(OUT_DIR)
print(len(detections), "detections")
detections.head(MAX_SHOWN)'''),
        new_code_cell('''# @title Look and listen { display-mode: "form" }
# each player holds a small compressed copy in WORK/clips (the first 20 s, as MP3 at 16 kHz)
for row in range(min(MAX_SHOWN, len(detections))):
    nb.show_detection(OUT_DIR, row, clips_dir=WORK / "clips")'''),
        new_code_cell('''# @title Record your verdicts { display-mode: "form" }
# row number (as listed above) -> "yes", "no" or "unsure", e.g. {0: "yes", 3: "no"}
VERDICTS = {}  # @param {type:"raw"}
# row number -> a note, e.g. {3: "wind noise"}
NOTES = {}  # @param {type:"raw"}
print(nb.record_verdicts(OUT_DIR, VERDICTS, NOTES), "verdicts recorded")
nb.reviewed(OUT_DIR)'''),
        new_markdown_cell("## Find more calls like one, train a head, rescore\n\nWith embeddings kept (notebook 01's "
                          "`EMBEDDINGS`), search the report folder for segments like a clip, mark what the search "
                          "found, train a new head on the stored embeddings (seconds on a CPU) and rescore every "
                          "card with it. Each search list is also a spreadsheet in `OUT_DIR/search` whose Verified "
                          "column counts like the report's."),
        new_code_cell('''# @title Search by example { display-mode: "form" }
from monitor.agile import notebook as agile
EXAMPLE = ""  # @param {type:"string"}
# ^ an audio file, optionally @start seconds (e.g. /content/drive/MyDrive/peeper.wav@3); empty: the first detection
SEARCH_LABEL = "frog"  # @param {type:"string"}
# ^ the label your marks below are about (a new species' name is fine)
TOP = 10  # @param {type:"integer"}
found = agile.search(OUT_DIR, EXAMPLE, SEARCH_LABEL, TOP)
found'''),
        new_code_cell('''# @title Mark what the search found { display-mode: "form" }
# rank (as listed above) -> "yes", "no" or "unsure", e.g. {1: "yes", 2: "no"}
MARKS = {}  # @param {type:"raw"}
_ = agile.mark(OUT_DIR, found, MARKS, SEARCH_LABEL)'''),
        new_code_cell('''# @title Train a head on the stored embeddings (seconds) { display-mode: "form" }
HEAD_NAME = "my-head"  # @param {type:"string"}
# ^ the run folder WORK/runs/HEAD_NAME; the head learns from every yes / no verdict of this report folder
HEAD = agile.train_head(OUT_DIR, WORK, HEAD_NAME)'''),
        new_code_cell('''# @title Rescore every card with the new head { display-mode: "form" }
RESCORE = False  # @param {type:"boolean"}
# ^ tick to replace this folder's scores with the head's (verdicts are kept; rescoring with the previous model,
#   monitor report OUT --rescore MODEL, brings its scores back: the embeddings stay)
_ = agile.rescore(OUT_DIR, HEAD if RESCORE else None)'''),
        new_code_cell('''# @title What to review next: the segments the model is least sure of { display-mode: "form" }
NEXT_LABEL = ""  # @param {type:"string"}
# ^ empty: the folder's first label
agile.review_next(OUT_DIR, NEXT_LABEL, TOP)'''),
    ]


def build() -> dict[str, nbformat.NotebookNode]:
    """Every notebook by file name, as it should be committed."""
    books = {}
    for name, cells in zip(NAMES, (nb01(), nb02(), nb03())):
        for i, cell in enumerate(cells):
            cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
        books[name] = new_notebook(cells=cells, metadata={
            "colab": {"provenance": [], "toc_visible": True},
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "accelerator": "GPU" if name.startswith("02") else "None",
        })
    return books


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if notebooks/ differs from what this script writes")
    args = ap.parse_args()
    stale = []
    for name, book in build().items():
        path = REPO / "notebooks" / name
        text = nbformat.writes(book) + "\n"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path)
    if stale:
        print("out of date (run python scripts/make_notebooks.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
