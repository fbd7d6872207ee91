"""Notebook 03's agile cells as they run with their defaults, then with marks, in process on the example card
with the bundled demo model (notebook 01's default run, embeddings kept)."""

from __future__ import annotations

import pandas as pd
import pytest

import monitor
from monitor.agile import notebook as agile
from monitor.notebook import record_verdicts


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    card = monitor.example_card(work / "example-card")
    out = work / "reports" / "example-card"
    monitor.run(card, out, models=["demo-frog-bird"], batch_size=16, workers=0, progress=False, embeddings=True)
    return out


def test_the_defaults_search_from_the_first_detection_and_skip_what_needs_marks(out, capsys):
    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    found = agile.search(out, "", "frog", 10)
    printed = capsys.readouterr().out
    assert f"@{det.start_s.iloc[0]:g}" in printed.splitlines()[0]  # the first detection is the example
    first = found.iloc[0]
    assert (first.deployment, first.file, first.start_s) == (det.deployment.iloc[0], det.file.iloc[0],
                                                              det.start_s.iloc[0])
    assert first.similarity > 0.9999 and len(found) == 10 and (out / "search" / "frog.xlsx").is_file()
    assert agile.mark(out, found, {}, "frog") == 0
    assert agile.train_head(out, out.parent.parent, "my-head") is None
    assert agile.rescore(out, None) is None
    nxt = agile.review_next(out, "", 5)
    assert len(nxt) == 5 and (nxt.margin.diff().dropna() >= 0).all()
    assert "no verdicts yet" in capsys.readouterr().out


def test_marks_train_a_head_and_rescoring_keeps_every_verdict(out, capsys):
    found = agile.search(out, "", "frog", 6)
    assert agile.mark(out, found, {1: "yes", 2: "yes", 3: "no", 4: "no", 5: "yes", 6: "no"}, "frog") == 6
    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    record_verdicts(out, {i: ("yes" if i % 2 == 0 else "no") for i in range(len(det))})  # as notebook 03's cell
    head = agile.train_head(out, out.parent.parent, "my-head")
    assert head is not None and (head / "bundle.json").is_file()
    assert "head trained in" in capsys.readouterr().out
    assert agile.train_head(out, out.parent.parent, "my-head") == head  # run again: not trained twice
    reviews = monitor.notebook.reviewed(out)
    info = agile.rescore(out, head)
    assert info.model.name == "my-head" and set(info.labels) == {"frog", "bird"} & set(reviews.label)
    again = monitor.notebook.reviewed(out)
    pd.testing.assert_frame_equal(reviews.reset_index(drop=True), again.reset_index(drop=True))
