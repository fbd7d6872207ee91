"""fsspec URLs as the input of `monitor run` (issue 17): discovery, metadata and decoding through fsspec's
local (``file://``) and in-memory (``memory://``) filesystems give exactly the results of the plain path,
and the input is only read. (``memory://`` lives inside one process: the local engine.)"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_wav

fsspec = pytest.importorskip("fsspec", reason="URL inputs need fsspec: pip install 'monitor[remote]'")


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    from monitor.resources import example_card_source

    root = tmp_path_factory.mktemp("remote") / "CARD"
    shutil.copytree(example_card_source(), root)
    write_wav(root / "GEN" / "20240410_211500.WAV", 95.0, 48000, channels=2, freq_hz=2500, noise=0.05, seed=3)
    (root / "GEN" / "notes.txt").write_text("field notes")
    write_wav(root / ".Trashes" / "x.WAV", 11.0, 16000, seed=1)
    (root / "GEN" / "20240411_211500.WAV").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20)
    return root


def _to_memory(card: Path) -> str:
    fs = fsspec.filesystem("memory")
    base = f"/monitor-test-{uuid.uuid4().hex[:8]}/CARD"
    for p in sorted(card.rglob("*")):
        if p.is_file():
            fs.pipe(f"{base}/{p.relative_to(card).as_posix()}", p.read_bytes())
    return f"memory://{base}"


def _segments(out: Path) -> list:
    con = sqlite3.connect(out / "monitor.sqlite")
    try:
        return con.execute("SELECT * FROM segments ORDER BY deployment, file, segment").fetchall()
    finally:
        con.close()


def _same_results(a: Path, b: Path, url: str) -> None:
    for name in ("segments.csv", "detections.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ra, rb = pd.read_csv(a / "recordings.csv", dtype=str), pd.read_csv(b / "recordings.csv", dtype=str)
    assert set(rb["input_dir"].dropna()) == {url}
    pd.testing.assert_frame_equal(ra.drop(columns="input_dir"), rb.drop(columns="input_dir"))
    assert _segments(a) == _segments(b) and len(_segments(a)) > 0


def test_discovery_of_a_url_equals_the_disk(card):
    from monitor.discover import discover

    disk = discover(card)
    url = discover(f"file://{card}")
    assert [f.rel for f in url.recordings] == [f.rel for f in disk.recordings]
    assert [(f.size) for f in url.recordings] == [f.size for f in disk.recordings]
    assert [(s.rel, s.reason) for s in url.skipped] == [(s.rel, s.reason) for s in disk.skipped]
    assert all(str(f.path).startswith("file://") for f in url.recordings)
    mem = discover(_to_memory(card))
    assert [f.rel for f in mem.recordings] == [f.rel for f in disk.recordings]
    assert [(s.rel, s.reason) for s in mem.skipped] == [(s.rel, s.reason) for s in disk.skipped]


def test_metadata_and_seeking_reads_through_fsspec_equal_the_disk(card):
    from monitor.audio import probe, read_frames
    from monitor.discover import discover, fingerprint
    from monitor.metadata import read_metadata

    base = _to_memory(card)
    for f in discover(card).recordings:
        url = f"{base}/{f.rel}"
        assert read_metadata(url, f.rel).to_row() == read_metadata(f.path, f.rel).to_row(), f.rel
        assert fingerprint(url, f.size) == fingerprint(f.path, f.size) != ""
        if "broken" not in f.rel and "20240411" not in f.rel:
            assert probe(url) == probe(f.path)
    long = card / "GEN" / "20240410_211500.WAV"
    a, b = 48000 * 61 + 17, 48000 * 71 + 17  # a segment deep inside the file, by seeking
    np.testing.assert_array_equal(read_frames(f"{base}/GEN/{long.name}", a, b), read_frames(long, a, b))
    assert read_frames(f"file://{long}", a, b).shape == (b - a, 2)


def test_run_on_file_and_memory_urls_equals_the_plain_path(card, tmp_path):
    from monitor import run

    before = {p: p.read_bytes() for p in card.rglob("*") if p.is_file()}
    ref = tmp_path / "plain"
    run(card, ref, batch_size=4, workers=0, progress=False)
    url = f"file://{card}"
    info = run(url, tmp_path / "file", batch_size=4, workers=0, progress=False)
    assert info.input_dir == url
    _same_results(ref, tmp_path / "file", url)
    mem = _to_memory(card)
    mem_before = {p: fsspec.filesystem("memory").cat(p) for p in fsspec.filesystem("memory").find(mem)}
    run(mem, tmp_path / "memory", batch_size=4, workers=0, progress=False)
    _same_results(ref, tmp_path / "memory", mem)
    # the input is only read
    assert {p: p.read_bytes() for p in card.rglob("*") if p.is_file()} == before
    assert {p: fsspec.filesystem("memory").cat(p) for p in fsspec.filesystem("memory").find(mem)} == mem_before


def test_url_errors_are_one_line(tmp_path):
    from monitor.errors import MonitorError
    from monitor.outdir import check_folders

    with pytest.raises(MonitorError, match="input folder not found"):
        check_folders(f"file://{tmp_path}/nowhere", tmp_path / "out")
    with pytest.raises(MonitorError, match="cannot open nosuchproto://x"):
        check_folders("nosuchproto://x/y", tmp_path / "out")
    card = tmp_path / "card"
    card.mkdir()
    with pytest.raises(MonitorError, match="inside the input folder"):
        check_folders(f"file://{card}", card / "out")
