"""The agile loop end to end, through the real CLI in subprocesses: ``monitor run --embeddings``, ``monitor search``
(by example, uncertain, stratified sample), verdicts typed into a search workbook with openpyxl, ``monitor train``
on stored embeddings, ``monitor report --rescore``, and resume of an interrupted ``--embeddings`` run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_wav

LABELS = ["frog", "bird"]
SEARCH_COLUMNS = ["rank", "deployment", "file", "start_s", "end_s", "start_time", "similarity"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _bundle(folder: Path, seed: int, depth: int = 1) -> Path:
    import torch

    from monitor.config import BandConfig, Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle

    torch.manual_seed(seed)
    model = AST(label_dim=2, fstride=16, tstride=16, input_fdim=128, input_tdim=1024, model_size="tiny224",
                depth=depth)
    save_bundle(folder, model, name=f"tiny-{seed}", version="0.0.1", labels=LABELS, task="multilabel",
                preprocessing=Preprocess(band=BandConfig(low_hz=200.0, high_hz=6000.0)),
                thresholds={"frog": 0.5, "bird": 0.5})
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _bundle(tmp_path_factory.mktemp("bundle") / "tiny", 0)


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("card") / "CARD"
    write_wav(root / "dev1" / "20240903_193130.WAV", 30.0, 16000, freq_hz=800, noise=0.05, seed=1)
    write_wav(root / "dev1" / "20240903_200000.WAV", 20.0, 48000, channels=2, freq_hz=2500, noise=0.2, seed=2)
    write_wav(root / "dev2" / "S4A03895_20190522_060000.wav", 20.0, 22050, freq_hz=None, noise=0.1, seed=3)
    return root


def _store(out: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{out / 'monitor.sqlite'}?mode=ro", uri=True)


def _scores(out: Path) -> dict[tuple, np.ndarray]:
    with _store(out) as db:
        return {(d, f, i): np.frombuffer(b, np.float32).copy() for d, f, i, b in
                db.execute("SELECT deployment, file, segment, scores FROM segments")}


def _embeddings(out: Path) -> dict[tuple, np.ndarray]:
    with _store(out) as db:
        return {(d, f): np.frombuffer(v, np.float16).reshape(n, w).copy() for d, f, n, w, v in
                db.execute("SELECT deployment, file, n, width, vectors FROM embeddings")}


@pytest.fixture(scope="module")
def out(card, tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "OUT"
    res = _cli("run", str(card), "--out", str(out), "--model", str(tiny), "--batch-size", "4", "--workers", "0",
               "--embeddings")
    assert res.returncode == 0, res.stderr
    return out


def test_embeddings_are_kept_keyed_like_the_segments_and_give_the_stored_scores(out, tiny):
    import torch

    from monitor.model.bundle import load_bundle

    b = load_bundle(tiny)
    with _store(out) as db:
        rows = db.execute("SELECT deployment, file, backbone, bundle, width, n, segments FROM embeddings "
                          "ORDER BY deployment, file").fetchall()
        segs = dict(db.execute("SELECT file, n_segments FROM files WHERE status='ok'").fetchall())
    assert sorted(r[1] for r in rows) == sorted(segs) and len(segs) == 3
    for d, f, backbone, bundle, width, n, idx in rows:
        assert (backbone, bundle, width, n) == (b.backbone(), b.sha256, 192, segs[f])
        assert np.frombuffer(idx, np.int32).tolist() == list(range(n))
    scores, head = _scores(out), b.head()
    for (d, f), v in _embeddings(out).items():  # the stored scores are the head on the stored float16 embeddings
        again = head.scores(torch.from_numpy(v), "multilabel").numpy()
        assert np.array_equal(again, np.stack([scores[(d, f, i)] for i in range(len(v))]))
    assert b.backbone() == load_bundle(tiny).backbone_sha256  # recorded in bundle.json by save_bundle


def test_search_by_example_ranks_the_examples_own_segment_first(out, card):
    ex1, ex2 = f"{card}/dev1/20240903_193130.WAV@10", f"{card}/dev2/S4A03895_20190522_060000.wav"
    res = _cli("search", str(out), "--example", ex1, "--label", "frog", "--top", "5")
    assert res.returncode == 0, res.stderr
    csv_path, xlsx_path = out / "search" / "frog.csv", out / "search" / "frog.xlsx"
    assert str(csv_path) in res.stdout and str(xlsx_path) in res.stdout
    df = pd.read_csv(csv_path, keep_default_na=False)
    assert list(df.columns[:7]) == SEARCH_COLUMNS
    top = df.iloc[0]
    assert (top.deployment, top.file, top.start_s, top.end_s) == ("dev1", "dev1/20240903_193130.WAV", 10.0, 20.0)
    assert top.similarity > 0.9999 and top.start_time == "2024-09-03T19:31:40"
    assert len(df) == 5 and (np.diff(df.similarity) <= 0).all() and df.similarity.iloc[1] < top.similarity
    # several examples: the mean of the cosine similarities to each
    res = _cli("search", str(out), "--example", ex2, "--name", "ex2", "--top", "7")
    assert res.returncode == 0, res.stderr
    one = pd.read_csv(out / "search" / "ex2.csv", keep_default_na=False)
    assert (one.iloc[0].file, one.iloc[0].start_s) == ("dev2/S4A03895_20190522_060000.wav", 0.0)
    res = _cli("search", str(out), "--example", ex1, "--example", ex2, "--name", "two", "--top", "7")
    assert res.returncode == 0, res.stderr
    two = pd.read_csv(out / "search" / "two.csv", keep_default_na=False)
    res = _cli("search", str(out), "--example", ex1, "--name", "ex1", "--top", "7")
    first = pd.read_csv(out / "search" / "ex1.csv", keep_default_na=False)
    sim = {}
    for t in (first, one):
        for r in t.itertuples():
            sim.setdefault((r.file, r.start_s), []).append(r.similarity)
    assert len(two) == 7 and all(len(v) == 2 for v in sim.values())
    for r in two.itertuples():
        assert r.similarity == pytest.approx(np.mean(sim[(r.file, r.start_s)]), abs=2e-6)


def _type_verdicts(path: Path, verdicts: dict[int, str], notes: dict[int, str] | None = None) -> None:
    from openpyxl import load_workbook

    wb = load_workbook(path)
    ws = wb["Segments"]
    head = [c.value for c in ws[1]]
    for row, v in verdicts.items():
        ws.cell(row=row + 2, column=head.index("Verified") + 1, value=v)
    for row, n in (notes or {}).items():
        ws.cell(row=row + 2, column=head.index("Notes") + 1, value=n)
    wb.save(path)
    later = time.time() + 2
    os.utime(path, (later, later))


@pytest.fixture(scope="module")
def reviewed(out, card):
    """Verdicts typed into the search workbook, then ``monitor report OUT`` (the harvest)."""
    xlsx = out / "search" / "frog.xlsx"
    if not xlsx.is_file():  # the search test did not run first (-k): the same search
        res = _cli("search", str(out), "--example", f"{card}/dev1/20240903_193130.WAV@10", "--label", "frog",
                   "--top", "5")
        assert res.returncode == 0, res.stderr
    df = pd.read_csv(out / "search" / "frog.csv", keep_default_na=False)
    _type_verdicts(xlsx, {0: "yes", 1: "y", 3: "no", 4: "no"}, {2: "faint call?"})
    res = _cli("report", str(out))
    assert res.returncode == 0, res.stderr
    return df


def test_verdicts_typed_into_a_search_workbook_reach_the_store_and_the_report(out, reviewed):
    from monitor.report.review_io import read_workbook_reviews
    from monitor.store import start_ms

    with _store(out) as db:
        got = {(d, f, lab, ms): (v, n, src) for d, f, lab, ms, v, n, src in
               db.execute("SELECT deployment, file, label, start_ms, verified, notes, source FROM reviews")}
    want = {0: "yes", 1: "yes", 3: "no", 4: "no"}
    for i, v in want.items():
        r = reviewed.iloc[i]
        assert got[(r.deployment, r.file, "frog", start_ms(r.start_s))] == (v, "", "search/frog.xlsx")
    r = reviewed.iloc[2]
    assert got[(r.deployment, r.file, "frog", start_ms(r.start_s))] == ("", "faint call?", "search/frog.xlsx")
    assert len(got) == 5
    in_report = {r.key: (r.verified, r.notes) for r in read_workbook_reviews(out / "report.xlsx").reviews
                 if r.verified or r.notes}
    assert {k: v[:2] for k, v in got.items()} == in_report  # every verdict is on a sheet of the rebuilt report
    assert "5 reviewer verdicts kept" in _cli("report", str(out)).stdout


def test_uncertain_and_stratified_sample_lists(out, reviewed):
    res = _cli("search", str(out), "--uncertain", "frog", "--top", "50")
    assert res.returncode == 0, res.stderr
    unc = pd.read_csv(out / "search" / "uncertain-frog.csv", keep_default_na=False)
    judged = {(r.deployment, r.file, r.start_s) for r in reviewed.iloc[[0, 1, 3, 4]].itertuples()}
    assert judged.isdisjoint({(r.deployment, r.file, r.start_s) for r in unc.itertuples()})
    assert len(unc) == 7 - 4 and (np.diff(unc.margin) >= 0).all()  # 7 segments, 4 with a verdict
    res = _cli("search", str(out), "--sample", "frog", "--top", "10", "--seed", "1")
    assert res.returncode == 0, res.stderr
    smp = pd.read_csv(out / "search" / "sample-frog.csv", keep_default_na=False)
    assert {"score", "stratum", "stratum_size"} <= set(smp.columns) and 0 < len(smp) <= 10
    sizes = smp.groupby("stratum").stratum_size.first()
    assert sizes.sum() <= 7 and (smp.groupby("stratum").size() <= sizes).all()
    assert not smp.duplicated(["file", "start_s"]).any()


@pytest.fixture(scope="module")
def head(out, reviewed, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "head"
    res = _cli("train", "head_from_embeddings", "--set", f"data.out={out}", "--set", "split.val_fraction=0",
               "--set", "data.weak_negatives=2", "--out", str(run))
    assert res.returncode == 0, res.stderr
    return run / "bundle"


def test_head_from_verdicts_is_a_bundle_that_run_and_rescore_score_identically(out, head, tiny, card, tmp_path):
    from monitor.model.bundle import load_bundle

    b, src = load_bundle(head), load_bundle(tiny)
    assert b.labels == ["frog"] and b.backbone() == src.backbone() and b.sha256 != src.sha256
    assert b.provenance["extra"]["source"] == "embeddings" and b.provenance["extra"]["weak_negatives"] == 2
    with _store(out) as db:
        before = sorted(db.execute("SELECT * FROM reviews").fetchall())
    res = _cli("report", str(out), "--rescore", str(head))
    assert res.returncode == 0, res.stderr
    assert "rescored 7 segments" in res.stderr + res.stdout and "5 reviewer verdicts kept" in res.stdout
    with _store(out) as db:
        assert sorted(db.execute("SELECT * FROM reviews").fetchall()) == before  # every verdict kept
        assert {h for (h,) in db.execute("SELECT DISTINCT model_hash FROM files")} == {b.sha256}
    seg = pd.read_csv(out / "segments.csv", keep_default_na=False)
    assert list(seg.columns[6:]) == ["frog"]
    # the same bundle through `monitor run` gives the very same scores for the same segments
    out2 = tmp_path / "OUT2"
    res = _cli("run", str(card), "--out", str(out2), "--model", str(head), "--batch-size", "4", "--workers", "0",
               "--embeddings")
    assert res.returncode == 0, res.stderr
    a, c = _scores(out), _scores(out2)
    assert a.keys() == c.keys() and all(np.array_equal(a[k], c[k]) for k in a)
    pd.testing.assert_frame_equal(seg, pd.read_csv(out2 / "segments.csv", keep_default_na=False), check_exact=True)
    # a later run of the card with the head resumes: the rescored files are the head's already
    res = _cli("run", str(card), "--out", str(out), "--model", str(head), "--batch-size", "4", "--workers", "0")
    assert res.returncode == 0, res.stderr
    assert "resuming: 3 of 3 files already done" in res.stderr + res.stdout


def test_rescore_with_another_backbone_is_refused_in_one_line(out, head, tmp_path):
    other = _bundle(tmp_path / "other", 1)
    with _store(out) as db:
        before = db.execute("SELECT value FROM meta WHERE key='model_hash'").fetchone()
    res = _cli("report", str(out), "--rescore", str(other))
    assert res.returncode == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "backbone" in lines[0] and "Traceback" not in res.stderr
    with _store(out) as db:
        assert db.execute("SELECT value FROM meta WHERE key='model_hash'").fetchone() == before


def _slow_card(root: Path, n: int = 10) -> Path:
    for i in range(n):
        write_wav(root / f"f{i:02d}.wav", 30.0, 16000, noise=0.1, seed=i, freq_hz=300 + 100 * i)
    return root


def test_an_interrupted_embeddings_run_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    card = _slow_card(tmp_path / "card")
    args = ["--model", str(tiny), "--workers", "0", "--batch-size", "4", "--embeddings"]
    full = tmp_path / "full"
    assert _cli("run", str(card), "--out", str(full), *args).returncode == 0
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", str(card), "--out", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline, done = time.time() + 180, 0
    while time.time() < deadline and proc.poll() is None and done < 2:
        time.sleep(0.1)
        try:
            with _store(out) as db:
                done = db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        except sqlite3.Error:
            continue
    assert proc.poll() is None, "run finished before it could be killed; make the card bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with _store(out) as db:  # killed mid-run: every committed file has its embeddings, and only those
        files = db.execute("SELECT COUNT(*) FROM files WHERE status='ok'").fetchone()[0]
        assert 2 <= files < 10 and db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == files
    res = _cli("run", str(card), "--out", str(out), "--model", str(tiny), "--workers", "0", "--batch-size", "4")
    assert res.returncode == 0, res.stderr  # --embeddings is remembered by the folder
    a, b = _embeddings(full), _embeddings(out)
    assert a.keys() == b.keys() and len(a) == 10 and all(np.array_equal(a[k], b[k]) for k in a)
    sa, sb = _scores(full), _scores(out)
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_a_plain_run_gains_embeddings_when_run_again_with_them(card, tiny, tmp_path):
    out = tmp_path / "OUT"
    assert _cli("run", str(card), "--out", str(out), "--model", str(tiny), "--workers", "0",
                "--batch-size", "4").returncode == 0
    plain = _scores(out)
    assert _embeddings(out) == {}
    res = _cli("search", str(out), "--example", f"{card}/dev1/20240903_193130.WAV")
    assert res.returncode == 2 and "--embeddings" in res.stderr
    res = _cli("run", str(card), "--out", str(out), "--model", str(tiny), "--workers", "0", "--batch-size", "4",
               "--embeddings")
    assert res.returncode == 0, res.stderr
    assert len(_embeddings(out)) == 3
    emb = _scores(out)  # scores now come from the float16 embedding: within float16 rounding of the plain ones
    assert max(float(np.abs(plain[k] - emb[k]).max()) for k in plain) < 2e-3
