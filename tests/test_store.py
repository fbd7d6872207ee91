"""The SQLite results store: per-file transactions, resume keys, model binding, the folder lock."""

import multiprocessing as mp

import numpy as np
import pytest

from monitor.errors import MonitorError
from monitor.store import DirLock, FileKey, ResultsStore


def test_put_and_read_back_and_resume_key(tmp_path):
    st = ResultsStore(tmp_path / "monitor.sqlite")
    st.bind_model("h1", ["frog", "bird"], "demo 1")
    key = FileKey("a/x.wav", 100, 5, "h1")
    segs = [(i, i * 10.0, i * 10.0 + 10, np.array([0.1 * i, 0.5], np.float32)) for i in range(3)]
    st.put_file(key, "ok", "", {"device_id": "D1"}, segs)
    assert st.is_done(key)
    assert not st.is_done(FileKey("a/x.wav", 101, 5, "h1"))  # size changed
    assert not st.is_done(FileKey("a/x.wav", 100, 6, "h1"))  # mtime changed
    assert not st.is_done(FileKey("a/x.wav", 100, 5, "h2"))  # other model
    files, idx, s0, s1, sc = st.segments()
    assert files == ["a/x.wav"] * 3 and idx.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(sc[:, 0], np.float32([0.0, 0.1, 0.2]))
    # replacing a file replaces all of its segments, never duplicates
    st.put_file(key, "ok", "", {}, segs[:1])
    assert len(st.segments()[0]) == 1
    assert st.files()[0]["segments"] == 1


def test_failed_files_are_retried_on_resume(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    key = FileKey("bad.wav", 1, 1, "h")
    st.put_file(key, "failed", "could not decode audio", {})
    assert not st.is_done(key)


def test_other_model_refused(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    st.bind_model("h1", ["frog"], "demo 1")
    with pytest.raises(MonitorError, match="another model"):
        st.bind_model("h2", ["frog"], "other 2")
    st.clear()
    st.bind_model("h2", ["frog"], "other 2")


def test_failed_transaction_leaves_store_consistent(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    key = FileKey("a.wav", 1, 1, "h")
    st.put_file(key, "ok", "", {}, [(0, 0.0, 10.0, np.zeros(2, np.float32))])
    bad = [(0, 0.0, 10.0, np.zeros(2, np.float32)), (0, 10.0, 20.0, np.zeros(2, np.float32))]  # duplicate key
    with pytest.raises(Exception):
        st.put_file(FileKey("b.wav", 1, 1, "h"), "ok", "", {}, bad)
    assert [f["file"] for f in st.files()] == ["a.wav"]
    assert st.segments()[0] == ["a.wav"]


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
    # released: can be taken again
    DirLock(tmp_path).acquire().release()
