"""The batch plan shared by every engine: numbering, batches, decode tasks within a sample budget, zero-filled
slots for a failed file, and assembly of results that arrive in any order, some twice."""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import write_wav
from monitor.config import Preprocess
from monitor.plan import (Assembler, Batcher, BatchScores, FileJob, Rows, concat_rows, file_bounds, plan_batches)

PRE = Preprocess()


def _job(name: str, seconds: float, sr: int, channels: int = 1) -> FileJob:
    return FileJob(name, f"/nowhere/{name}", name, int(round(seconds * sr)), channels, sr)


def _check_plan(plan, budget: int) -> None:
    n = plan.n_segments
    covered = []
    for t in plan.tasks:
        assert t.n == sum(sp.n for sp in t.spans) and t.n >= 1
        assert [sp.first for sp in t.spans] == list(np.cumsum([t.first] + [sp.n for sp in t.spans[:-1]]))
        covered.extend(range(t.first, t.first + t.n))
        b_lo, b_hi = t.first // plan.batch_size, (t.first + t.n - 1) // plan.batch_size
        whole = t.first % plan.batch_size == 0 and (t.first + t.n) in (n, (b_hi + 1) * plan.batch_size)
        assert b_lo == b_hi or whole, "a task is whole batches or a part of one batch"
        samples = sum((b - a) * plan.files[sp.file].channels for sp in t.spans for _, a, b in sp.bounds)
        assert samples <= budget or t.n == 1, "within the budget (a single segment may exceed it)"
    assert covered == list(range(n)), "every segment in exactly one task, in order"
    for f, job in enumerate(plan.files):
        b = file_bounds(plan, f)
        assert [x[0] for x in b] == list(range(plan.file_segments[f]))


def test_plan_numbers_batches_and_budget():
    jobs = [_job("a", 25.0, 16000), _job("b", 3600.0, 384000), _job("c", 95.0, 48000, 2), _job("d", 4.0, 22050)]
    budget = 8_000_000
    plan = plan_batches(jobs, PRE, 16, budget)
    assert plan.file_segments == (3, 360, 10, 1)
    assert plan.file_first == (0, 3, 363, 373)
    assert plan.n_segments == 374 and plan.n_batches == 24
    assert plan.batch_range(23) == (368, 374)
    _check_plan(plan, budget)
    # a 384 kHz batch (16 x 3.84 M samples) is cut into parts of two segments, each within the budget
    big = [t for t in plan.tasks if any(sp.file == 1 for sp in t.spans)]
    assert len(big) > 100
    for t in big:
        samples = sum(b - a for sp in t.spans for _, a, b in sp.bounds)
        assert samples <= budget
    # a task may span files: the first batch holds a's 3 segments and b's first 13 (in parts)
    assert [sp.file for sp in plan.tasks[0].spans] == [0, 1]
    assert plan.file_of(2) == 0 and plan.file_of(3) == 1 and plan.file_of(373) == 3
    # small segments: several whole batches per task
    small = plan_batches([_job("x", 3600.0, 16000)], PRE, 4, budget)
    _check_plan(small, budget)
    assert small.tasks[0].n == 48 and small.tasks[0].n % 4 == 0  # 12 batches of 4 x 160 k samples
    assert [len(small.tasks_of_batch(b)) for b in range(3)] == [1, 1, 1]


def test_many_short_files_stay_within_the_segment_cap():
    """Every segment becomes a full-size feature matrix: 1,000 files of 1.5 s are not one 333-segment task."""
    from monitor.plan import TASK_SEGMENTS

    jobs = [_job(f"{i:04d}.wav", 1.5, 16000) for i in range(1000)]
    plan = plan_batches(jobs, PRE, 16)
    _check_plan(plan, 8_000_000)
    assert TASK_SEGMENTS == 48 and max(t.n for t in plan.tasks) == 48 and len(plan.tasks) == 21  # 3 batches each
    long = plan_batches([_job("x", 3600.0, 48000)], PRE, 16)  # long files: the sample budget decides, as before
    assert max(t.n for t in long.tasks) == 16  # 16 x 480 k samples; two batches would exceed 8 M


def test_plan_is_pure_and_picklable():
    import pickle

    jobs = [_job("a", 125.0, 48000), _job("b", 7.0, 16000)]
    a, b = plan_batches(jobs, PRE, 4), plan_batches(jobs, PRE, 4)
    assert a == b
    assert pickle.loads(pickle.dumps(a)) == a
    assert len(a.tasks) == 1 and pickle.loads(pickle.dumps(a.tasks[0])) == a.tasks[0]


def _rows(first: int, n: int, seed: int) -> Rows:
    rng = np.random.default_rng(seed)
    return Rows(first, rng.standard_normal((n, 3, 2)).astype(np.float32), rng.integers(0, 3, n),
                tuple("" for _ in range(n)))


def test_batcher_any_order_and_duplicates():
    jobs = [_job("a", 25.0, 16000), _job("b", 190.0, 384000), _job("c", 31.0, 48000)]
    plan = plan_batches(jobs, PRE, 4, task_samples=8_000_000)
    results = [_rows(t.first, t.n, t.id) for t in plan.tasks]
    bt = Batcher(plan)
    ordered = [x for r in results for x in bt.add(r)]
    assert [b for b, _ in ordered] == list(range(plan.n_batches))
    shuffled = results + results[::2]
    random.Random(0).shuffle(shuffled)
    bt = Batcher(plan)
    got = sorted((x for r in shuffled for x in bt.add(r)), key=lambda x: x[0])
    assert [b for b, _ in got] == list(range(plan.n_batches)), "each batch once"
    for (b1, r1), (b2, r2) in zip(ordered, got):
        lo, hi = plan.batch_range(b1)
        assert r1.first == r2.first == lo and r1.n == r2.n == hi - lo
        np.testing.assert_array_equal(r1.data, r2.data)
        np.testing.assert_array_equal(r1.nonfinite, r2.nonfinite)


def test_concat_pads_waves():
    a = Rows(0, np.ones((2, 5), np.float32), np.zeros(2, np.int64), ("", ""), np.array([5, 5]))
    b = Rows(2, np.ones((1, 3), np.float32), np.zeros(1, np.int64), ("x",), np.array([3]))
    c = concat_rows([a, b])
    assert c.data.shape == (3, 5) and c.data[2, 3:].tolist() == [0, 0]
    assert c.lengths.tolist() == [5, 5, 3] and c.errors == ("", "", "x")


def test_assembler_any_order_redelivery_and_errors():
    jobs = [_job("a", 25.0, 16000), _job("b", 50.0, 48000), _job("c", 31.0, 22050)]
    plan = plan_batches(jobs, PRE, 4)
    n = plan.n_segments
    scores = np.random.default_rng(0).random((n, 2)).astype(np.float32)
    nonfinite = np.arange(n)
    errors = ["" for _ in range(n)]
    for g in range(plan.file_first[1] + 2, plan.file_first[1] + 4):
        errors[g] = "could not decode audio: x"
    batches = []
    for b in range(plan.n_batches):
        lo, hi = plan.batch_range(b)
        batches.append(BatchScores(b, lo, scores[lo:hi], nonfinite[lo:hi], tuple(errors[lo:hi])))

    asm = Assembler(plan, 2)
    ref = [x for bs in batches for x in asm.add(bs)]
    assert [j.rel for j, _ in ref] == ["a", "b", "c"] and asm.pending == 0
    a, b, c = (fs for _, fs in ref)
    assert a.index.tolist() == [0, 1, 2] and a.start_s.tolist() == [0.0, 10.0, 20.0] and a.end_s[-1] == 25.0
    np.testing.assert_array_equal(a.scores, scores[:3])
    assert a.nonfinite == 0 + 1 + 2 and not a.error
    assert b.error == "could not decode audio: x"
    np.testing.assert_array_equal(c.scores, scores[plan.file_first[2]:])

    for in_order in (True, False):
        shuffled = batches + batches[1:3]
        random.Random(1).shuffle(shuffled)
        asm = Assembler(plan, 2, in_order=in_order)
        got = [x for bs in shuffled for x in asm.add(bs)]
        assert sorted(j.rel for j, _ in got) == ["a", "b", "c"], "each file exactly once"
        if in_order:
            assert [j.rel for j, _ in got] == ["a", "b", "c"]
        for (j1, f1), (j2, f2) in zip(ref, sorted(got, key=lambda x: x[0].rel)):
            assert j1 == j2 and f1.error == f2.error and f1.nonfinite == f2.nonfinite
            np.testing.assert_array_equal(f1.scores, f2.scores)
            np.testing.assert_array_equal(f1.start_s, f2.start_s)


def test_failed_file_keeps_its_slots(tmp_path):
    """A file that fails part-way (its header promises more audio than it holds) keeps every planned slot,
    zero-filled, so every later batch holds the same segments as planned."""
    from monitor.decode import WorkerPool
    from monitor.plan import iter_batches, job_from_path

    good1 = write_wav(tmp_path / "a.wav", 25.0, 16000, noise=0.05, seed=1)
    bad = write_wav(tmp_path / "b.wav", 45.0, 16000, noise=0.05, seed=2)
    good2 = write_wav(tmp_path / "c.wav", 33.0, 16000, noise=0.05, seed=3)
    jobs = [job_from_path(p) for p in (good1, bad, good2)]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 2 * 16000 * 20])  # the last 20 s are gone; the header still says 45 s
    plan = plan_batches(jobs, PRE, 3, task_samples=160_000 * 3)
    with WorkerPool(PRE, 0) as pool:
        results = list(pool.results(plan.tasks))
    assert [r.first for r in results] == [t.first for t in plan.tasks]
    assert all(r.n == t.n for r, t in zip(results, plan.tasks))
    failed = [g for r in results for g in range(r.first, r.first + r.n) if r.errors[g - r.first]]
    assert failed and all(plan.file_of(g) == 1 for g in failed)
    for r in results:
        for k in range(r.n):
            if r.errors[k]:
                assert r.errors[k].startswith("could not decode audio: ")
                assert not r.data[k].any()
    batches = list(iter_batches(plan, iter(results)))
    assert [(b, rows.first, rows.n) for b, rows in batches] == [(b, *_span(plan, b)) for b in range(plan.n_batches)]


def _span(plan, b):
    lo, hi = plan.batch_range(b)
    return lo, hi - lo


def test_plan_rejects_bad_batch_size():
    with pytest.raises(ValueError):
        plan_batches([_job("a", 5.0, 16000)], PRE, 0)
