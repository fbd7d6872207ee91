"""The SQLite results store: per-file transactions, resume keys, model binding, many cards, reviews, the lock."""

import multiprocessing as mp

import numpy as np
import pytest

from monitor.errors import MonitorError
from monitor.store import DirLock, FileKey, ResultsStore, Review


def test_put_and_read_back_and_resume_key(tmp_path):
    st = ResultsStore(tmp_path / "monitor.sqlite")
    st.bind_model("h1", ["frog", "bird"], "demo 1")
    key = FileKey("D1", "a/x.wav", 100, 5, "h1")
    segs = [(i, i * 10.0, i * 10.0 + 10, np.array([0.1 * i, 0.5], np.float32)) for i in range(3)]
    st.put_file(key, "ok", "", {"device_id": "D1"}, segs)
    assert st.is_done(key)
    assert not st.is_done(FileKey("D1", "a/x.wav", 101, 5, "h1"))  # size changed
    assert not st.is_done(FileKey("D1", "a/x.wav", 100, 6, "h1"))  # mtime changed
    assert not st.is_done(FileKey("D1", "a/x.wav", 100, 5, "h2"))  # other model
    assert not st.is_done(FileKey("D2", "a/x.wav", 100, 5, "h1"))  # another deployment's file of that name
    deps, files, idx, s0, s1, sc = st.segments()
    assert files == ["a/x.wav"] * 3 and deps == ["D1"] * 3 and idx.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(sc[:, 0], np.float32([0.0, 0.1, 0.2]))
    # replacing a file replaces all of its segments, never duplicates
    st.put_file(key, "ok", "", {}, segs[:1])
    assert len(st.segments()[0]) == 1
    assert st.files()[0]["segments"] == 1


def test_failed_files_are_retried_on_resume(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    key = FileKey("D", "bad.wav", 1, 1, "h")
    st.put_file(key, "failed", "could not decode audio", {})
    assert not st.is_done(key)


def test_other_model_refused(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    st.bind_model("h1", ["frog"], "demo 1")
    st.bind_model("h2", ["frog"], "other 2")  # an empty store may change models
    st.put_file(FileKey("D", "a.wav", 1, 1, "h2"), "ok", "", {})
    with pytest.raises(MonitorError, match="another model"):
        st.bind_model("h1", ["frog"], "demo 1")


def test_failed_transaction_leaves_store_consistent(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    key = FileKey("D", "a.wav", 1, 1, "h")
    st.put_file(key, "ok", "", {}, [(0, 0.0, 10.0, np.zeros(2, np.float32))])
    bad = [(0, 0.0, 10.0, np.zeros(2, np.float32)), (0, 10.0, 20.0, np.zeros(2, np.float32))]  # duplicate key
    with pytest.raises(Exception):
        st.put_file(FileKey("D", "b.wav", 1, 1, "h"), "ok", "", {}, bad)
    assert [f["file"] for f in st.files()] == ["a.wav"]
    assert st.segments()[1] == ["a.wav"]


def _try_lock(path, q):
    try:
        DirLock(path).acquire()
        q.put("acquired")
    except MonitorError as exc:
        q.put(str(exc))


def test_lock_refuses_second_process(tmp_path):
    with DirLock(tmp_path):
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=_try_lock, args=(tmp_path, q))
        p.start()
        p.join(30)
        msg = q.get(timeout=5)
    assert "in use by another monitor run" in msg and "pid" in msg
    # released: the lock file is gone and the lock can be taken again
    assert not (tmp_path / "monitor.lock").exists()
    DirLock(tmp_path).acquire().release()


def _seg(n, value=0.5):
    return [(i, 10.0 * i, 10.0 * i + 10, np.full(2, value, np.float32)) for i in range(n)]


def test_missing_files_are_marked_not_deleted_and_prune_archives_them(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    st.bind_model("h", ["frog", "bird"], "m")
    c1, c2 = st.new_card("card1", "/media/SD"), st.new_card("card2", "/media/SD")
    for dep, f, card in (("A", "x.wav", c1), ("A", "y.wav", c1), ("B", "x.wav", c1), ("A", "z.wav", c2)):
        st.put_file(FileKey(dep, f, 1, 1, "h"), "ok", "", {}, _seg(2), card=card)
    # card 1 comes back without A/y.wav; card 2 (the next card of recorder A) is not part of this scan
    gone = st.mark_missing(c1, {("A", "x.wav"), ("B", "x.wav")})
    assert gone == [("A", "y.wav")]
    files = {(f["deployment"], f["file"]): f for f in st.files()}
    assert files[("A", "y.wav")]["missing_since"] and files[("A", "y.wav")]["segments"] == 2
    assert not files[("A", "z.wav")]["missing_since"]  # another card's files are never touched
    assert len(st.segments()[0]) == 8  # nothing deleted
    # y.wav comes back unchanged: it is present again, no re-scoring needed
    st.restore(FileKey("A", "y.wav", 1, 1, "h"))
    assert not {(f["deployment"], f["file"]): f for f in st.files()}[("A", "y.wav")]["missing_since"]
    st.mark_missing(c1, {("A", "x.wav"), ("B", "x.wav")})
    assert st.missing(c2) == [] and st.missing(c1) == [("A", "y.wav")]  # prune is per card
    assert st.archive(st.missing(c1), "gone") == 1
    assert sorted((f["deployment"], f["file"]) for f in st.files()) == [("A", "x.wav"), ("A", "z.wav"), ("B", "x.wav")]
    assert len(st.segments()[0]) == 6
    assert [(p["deployment"], p["file"], p["why"]) for p in st.pruned()] == [("A", "y.wav", "gone")]
    # the archive brings it back, as missing, with its segments
    assert st.restore_pruned() == [("A", "y.wav")]
    back = {(f["deployment"], f["file"]): f for f in st.files()}[("A", "y.wav")]
    assert back["missing_since"] and back["segments"] == 2 and back["card"] == c1
    assert len(st.segments()[0]) == 8 and st.pruned() == []


def test_clearing_a_card_keeps_other_cards_of_the_deployment(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    c1, c2 = st.new_card("card1", "/sd"), st.new_card("card2", "/sd")
    st.put_file(FileKey("A", "x.wav", 1, 1, "h"), "ok", "", {}, _seg(2), card=c1)
    st.put_file(FileKey("A", "z.wav", 1, 1, "h"), "ok", "", {}, _seg(2), card=c2)
    assert st.clear_card(c2) == 1
    assert [(f["file"], f["card"]) for f in st.files()] == [("x.wav", c1)]


def test_moving_files_between_deployments_moves_their_verdicts(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    st.put_file(FileKey("24E1", "AM/x.wav", 1, 1, "h"), "ok", "", {}, _seg(2), card=1)
    st.put_reviews([Review("24E1", "AM/x.wav", "frog", 0.0, 10.0, "yes", "")], "report.xlsx")
    assert st.move_files([("24E1", "AM/x.wav", "POND")]) == 1
    assert [(f["deployment"], f["file"]) for f in st.files()] == [("POND", "AM/x.wav")]
    assert set(st.segments()[0]) == {"POND"}
    assert [(r.deployment, r.verified) for r in st.reviews()] == [("POND", "yes")]
    assert st.moved() == {("24E1", "AM/x.wav"): "POND"}


def test_changed_file_under_a_known_name_is_detected(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    st.put_file(FileKey("card", "20240412_211500.WAV", 100, 7, "h"), "ok", "", {}, _seg(1))
    assert not st.changed(FileKey("card", "20240412_211500.WAV", 100, 7, "h"))
    assert st.changed(FileKey("card", "20240412_211500.WAV", 100, 8, "h"))  # another card, same name
    st.put_file(FileKey("card", "bad.wav", 1, 1, "h"), "failed", "x", {})
    assert not st.changed(FileKey("card", "bad.wav", 2, 2, "h"))  # nothing analysed to lose


def test_reviews_upsert_clear_and_survive_rescoring(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    key = FileKey("A", "x.wav", 1, 1, "h")
    st.put_file(key, "ok", "", {}, _seg(3))
    r = Review("A", "x.wav", "frog", 10.0, 30.0, "yes", "clear call")
    assert st.put_reviews([r], "report.xlsx") == 1
    assert st.put_reviews([r], "report.xlsx") == 0  # unchanged: nothing written
    # a spreadsheet may round the start: the key is whole milliseconds
    assert st.put_reviews([Review("A", "x.wav", "frog", 10.0000000001, 30.0, "no", "")], "nb") == 1
    (got,) = st.reviews()
    assert (got.verified, got.notes, got.source) == ("no", "", "nb")
    st.put_file(key, "ok", "", {}, _seg(3, 0.9), card=1)  # re-scored: verdicts stay
    assert st.clear_card(1) == 1 and st.files() == []
    assert len(st.reviews()) == 1
    st.put_reviews([Review("A", "x.wav", "frog", 10.0, 30.0, "", "")], "report.xlsx")  # cleared cells
    assert st.reviews() == []


def test_schema_1_store_is_upgraded_with_deployments(tmp_path):
    """An output folder written by monitor 0.1 (one card, keyed by file) keeps every result."""
    import json
    import sqlite3

    db = sqlite3.connect(tmp_path / "monitor.sqlite")
    db.executescript("""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE files (file TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, model_hash TEXT, status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '', metadata TEXT NOT NULL DEFAULT '{}', n_segments INTEGER NOT NULL DEFAULT 0,
        nonfinite INTEGER NOT NULL DEFAULT 0, done_at TEXT);
    CREATE TABLE segments (file TEXT NOT NULL, segment INTEGER NOT NULL, start_s REAL NOT NULL, end_s REAL NOT NULL,
        scores BLOB NOT NULL, PRIMARY KEY (file, segment)) WITHOUT ROWID;
    """)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO meta VALUES ('run_info', ?)", (json.dumps({"input_dir": "/media/SDCARD"}),))
    db.execute("INSERT INTO files VALUES ('AM/a.wav', 10, 20, 'h', 'ok', '', ?, 1, 0, '')",
               (json.dumps({"device_id": "24E1"}),))
    db.execute("INSERT INTO files VALUES ('b.wav', 10, 20, 'h', 'ok', '', '{}', 1, 0, '')")
    for f in ("AM/a.wav", "b.wav"):
        db.execute("INSERT INTO segments VALUES (?, 0, 0.0, 10.0, ?)", (f, np.float32([0.1, 0.2]).tobytes()))
    db.commit()
    db.close()
    st = ResultsStore(tmp_path / "monitor.sqlite")
    assert st.get_meta("schema_version") == 5  # 4: embeddings; 5: segments.scored_by ('' = the run's model)
    got = {(f["deployment"], f["file"]): f for f in st.files()}
    assert set(got) == {("24E1", "AM/a.wav"), ("SDCARD", "b.wav")}
    assert got[("24E1", "AM/a.wav")]["input_dir"] == "/media/SDCARD"
    # schema 3: the files of one input folder became one card
    (card,) = st.cards()
    assert card.input_dir == "/media/SDCARD" and {f["card"] for f in got.values()} == {card.id}
    deps, files, _, _, _, sc = st.segments()
    assert list(zip(deps, files)) == [("24E1", "AM/a.wav"), ("SDCARD", "b.wav")]
    np.testing.assert_array_equal(sc[0], np.float32([0.1, 0.2]))
    assert st.is_done(FileKey("24E1", "AM/a.wav", 10, 20, "h"))
    assert st.segment_scorers() == ["", ""]


def test_scored_by_survives_prune_and_restore(tmp_path):
    """Which model scored each segment (``monitor run --screen``) is kept through the prune archive and back."""
    st = ResultsStore(tmp_path / "monitor.sqlite")
    key = FileKey("dep", "a.wav", 10, 20, "h")
    segs = [(i, 10.0 * i, 10.0 * i + 10, np.float32([0.1 * i, 0.2])) for i in range(3)]
    st.put_file(key, "ok", "", {}, segs, scored_by=["", "student", ""])
    assert st.segment_scorers() == ["", "student", ""]
    with pytest.raises(ValueError):
        st.put_file(key, "ok", "", {}, segs, scored_by=["", "student"])
    assert st.archive([("dep", "a.wav")], "test") == 1 and st.segment_scorers() == []
    assert st.restore_pruned() == [("dep", "a.wav")]
    assert st.segment_scorers() == ["", "student", ""]
