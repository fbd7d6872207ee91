"""Seeking reader, segmentation arithmetic and the signal stages at the recorder's rate."""

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_wav
from monitor.audio import AudioError, plan_segments, probe, read_frames, resample, sanitize, to_mono
from monitor.config import Preprocess, SegmentConfig

RATES = [8000, 16000, 22050, 44100, 48000, 96000, 250000, 384000]
EXPECTED = {0.5: 0, 1.0: 1, 9.99: 1, 10.0: 1, 25.0: 3}


def _write_int16(path, duration_s, sr, channels, seed=0):
    """Seeded int16 noise, (frames, channels); cheap enough for 25 s of 6-channel 384 kHz audio."""
    n = int(round(duration_s * sr))
    data = np.random.default_rng(seed).integers(-3000, 3000, size=(n, channels), dtype=np.int16)
    sf.write(str(path), data, sr, subtype="PCM_16")
    return data


def _segments(path, cfg):
    """What ``decode.decode_task`` reads: the planned windows, each by seeking, mixed to mono."""
    info = probe(path)
    return [(k, a, b, to_mono(read_frames(path, a, b))) for k, a, b in plan_segments(info.frames, info.sample_rate_hz,
                                                                                     cfg)]


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_segment_counts_and_times(tmp_path, sr, channels):
    cfg = SegmentConfig()
    for dur, n in EXPECTED.items():
        p = tmp_path / f"{dur}.wav"
        data = _write_int16(p, dur, sr, channels)
        info = probe(p)
        assert (info.sample_rate_hz, info.channels, info.frames) == (sr, channels, len(data))
        segs = _segments(p, cfg)
        assert len(segs) == n, (dur, sr, channels)
        assert [k for k, _, _, _ in segs] == list(range(n))
        for k, a, b, x in segs:
            assert x.ndim == 1 and x.dtype == np.float32
            assert a == 10 * sr * k and b == min(len(data), (k + 1) * 10 * sr) and len(x) == b - a
        if n:
            a = segs[-1][1]
            mono = (data[a:].astype(np.float64) / 32768.0).mean(axis=1)
            np.testing.assert_allclose(segs[-1][3], mono, atol=1e-6)


def test_issue_examples_and_partial_padding():
    cfg = SegmentConfig()
    sr = 16000
    assert len(plan_segments(int(25 * sr), sr, cfg)) == 3
    assert len(plan_segments(int(20.5 * sr), sr, cfg)) == 2
    assert len(plan_segments(int(5 * sr), sr, cfg)) == 1
    last = plan_segments(int(25 * sr), sr, cfg)[-1]
    assert last == (2, 20 * sr, 25 * sr)


def test_overlap_and_gap_hops(tmp_path):
    sr = 8000
    p = write_wav(tmp_path / "a.wav", 30.0, sr, freq_hz=None, noise=0.1, seed=3)
    full = sf.read(p, dtype="float32")[0]
    over = _segments(p, SegmentConfig(window_s=10, hop_s=5))
    assert [a / sr for _, a, _, _ in over] == [0, 5, 10, 15, 20]
    for _, a, b, x in over:
        np.testing.assert_array_equal(x, full[a:b])
    gap = _segments(p, SegmentConfig(window_s=2, hop_s=7))
    assert [a / sr for _, a, _, _ in gap] == [0, 7, 14, 21, 28]
    np.testing.assert_array_equal(gap[3][3], full[21 * sr:23 * sr])


def test_decode_reads_spans_by_seeking_never_the_whole_file(tmp_path, monkeypatch):
    """``decode_task`` reads each task's span of a file by seeking, each frame once, never the whole file."""
    from monitor.decode import decode_task
    from monitor.plan import job_from_path, plan_batches

    sr = 16000
    p = write_wav(tmp_path / "long.wav", 120.0, sr, freq_hz=None, noise=0.1)
    pre = Preprocess()
    plan = plan_batches([job_from_path(p)], pre, 2, task_samples=4 * 10 * sr)
    sizes = []
    orig = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        sizes.append(frames)
        return orig(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    rows = [decode_task(t, pre, "waves") for t in plan.tasks]
    assert sum(r.n for r in rows) == 12 and len(plan.tasks) == 3
    assert sizes == [4 * 10 * sr] * 3 and -1 not in sizes  # each frame decoded once: no re-reading


def test_nonfinite_samples_are_counted_and_replaced(tmp_path):
    from monitor.decode import decode_task
    from monitor.plan import job_from_path, plan_batches

    sr = 8000
    x = np.random.default_rng(2).standard_normal((25 * sr, 2)).astype(np.float32) * 0.1
    x[5, 0], x[100, 1], x[12 * sr, 0] = np.nan, np.inf, -np.inf
    p = tmp_path / "nan.wav"
    sf.write(str(p), x, sr, subtype="FLOAT")
    pre = Preprocess()
    (task,) = plan_batches([job_from_path(p)], pre, 4).tasks
    rows = decode_task(task, pre, "waves")
    assert rows.nonfinite.tolist() == [2, 1, 0]
    assert np.isfinite(rows.data).all()
    mono, n = sanitize(to_mono(read_frames(p, 0, 10 * sr)))
    assert n == 2 and mono[5] == 0.0 and mono[6] == pytest.approx(x[6].mean())  # mixed, then replaced
    np.testing.assert_array_equal(rows.data[0, :rows.lengths[0]], resample(mono, sr))


def test_unreadable_file_raises_a_human_reason(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is a text file with a .wav name")
    with pytest.raises(AudioError, match="not a readable audio file"):
        probe(p)


def test_plan_is_exact_over_four_hours():
    sr = 44100
    plan = plan_segments(4 * 3600 * sr + 123, sr, SegmentConfig())
    assert len(plan) == 1440
    assert all(a == k * 10 * sr and b == a + 10 * sr for k, a, b in plan)
    n = 4 * 3600 * 22050
    odd = plan_segments(n, 22050, SegmentConfig(window_s=3.3, hop_s=1.1))
    assert all(a == k * 24255 and b == min(a + 72765, n) for k, a, b in odd)
    assert odd[-1][2] == n and n - odd[-1][1] >= 22050


def test_real_recordings_read_by_plan(shared):
    for p in sorted((shared / "data" / "recordings").rglob("*.wav")):
        info = probe(p)
        ref = sf.info(str(p))
        assert (info.sample_rate_hz, info.channels, info.frames) == (ref.samplerate, ref.channels, ref.frames)
        segs = _segments(p, SegmentConfig())
        plan = plan_segments(ref.frames, ref.samplerate, SegmentConfig())
        assert [(k, len(x)) for k, _, _, x in segs] == [(i, b - a) for i, a, b in plan]
        whole = sf.read(str(p), dtype="float32", always_2d=True)[0].mean(axis=1)
        np.testing.assert_allclose(segs[-1][3], whole[plan[-1][1]:plan[-1][2]], atol=1e-6)
    assert len(_segments(shared / "data/recordings/opensoundscape/1min.wav", SegmentConfig())) == 6


def _tone_db(x, sr, f):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(round(f * len(x) / sr))
    return 20 * np.log10(spec[max(0, k - 3):k + 4].max() + 1e-20)


@pytest.mark.parametrize("method", ["poly", "soxr"])
@pytest.mark.parametrize("sr_in", [8000, 22050, 44100, 48000, 96000, 250000, 312500, 384000])
def test_resample_keeps_1khz(sr_in, method):
    t = np.arange(int(sr_in * 1.0)) / sr_in
    y = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), sr_in, 16000, method)
    assert y.dtype == np.float32
    assert abs(len(y) - 16000) <= 1
    spec = np.abs(np.fft.rfft(y[1000:-1000] * np.hanning(len(y) - 2000)))
    peak_hz = np.argmax(spec) * 16000 / (len(y) - 2000)
    assert abs(peak_hz - 1000) < 5
    assert np.abs(y[1000:-1000]).max() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("method", ["poly", "soxr"])
def test_resample_removes_12khz_tone(method):
    sr = 48000
    t = np.arange(sr) / sr
    ref = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), sr, 16000, method)
    y = resample(np.sin(2 * np.pi * 12000 * t).astype(np.float32), sr, 16000, method)
    # 12 kHz would alias to 4 kHz: it must be below -60 dB relative to a full-scale tone
    rms_ratio_db = 20 * np.log10(np.sqrt(np.mean(y[500:-500] ** 2)) / np.sqrt(np.mean(ref[500:-500] ** 2)))
    assert rms_ratio_db < -60


@pytest.mark.parametrize("sr", [32000, 48000, 96000, 384000])
def test_fast_decimation_equals_resample_poly(sr):
    from scipy.signal import resample_poly

    x = np.random.default_rng(sr).standard_normal(sr // 2 + 7).astype(np.float32)
    got = resample(x, sr, 16000)
    ref = resample_poly(x, 1, sr // 16000)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-6)
    two = resample(np.stack([x, -x], axis=1), sr, 16000)  # (n, channels) takes scipy's path
    np.testing.assert_allclose(two[:, 1], -got, atol=2e-6)


def test_sanitize_and_mono():
    x = np.array([1.0, np.nan, np.inf, -np.inf, 2.0], np.float32)
    y, n = sanitize(x)
    assert n == 3 and np.isfinite(y).all() and y.tolist() == [1.0, 0.0, 0.0, 0.0, 2.0]
    st2 = np.stack([np.ones(4), 3 * np.ones(4)], axis=1)
    assert to_mono(st2).tolist() == [2.0] * 4
    assert to_mono(np.ones((4, 1))).shape == (4,)


@settings(max_examples=120, deadline=None)
@given(n=st.integers(0, 10**9), sr=st.sampled_from(RATES + [11025, 312500]),
       window=st.floats(0.5, 30), hop=st.floats(0.25, 40), min_seg=st.floats(0.01, 1.0))
def test_plan_invariants(n, sr, window, hop, min_seg):
    """Segments are in order, inside the file, at most window long, cover it when hop <= window."""
    cfg = SegmentConfig(window_s=window, hop_s=hop, min_segment_s=min(min_seg * window, window), block_s=1)
    n = min(n, int(1200 * sr))  # bound the work: at most 20 minutes of frames
    plan = plan_segments(n, sr, cfg)
    win = int(np.ceil(window * sr - 1e-9))  # a non-integer window alternates floor/ceil frames
    prev = -1
    for k, (i, a, b) in enumerate(plan):
        assert i == k and 0 <= a < b <= n and b - a <= win and a > prev
        prev = a
    if plan and hop <= window:
        for (_, a0, b0), (_, a1, _) in zip(plan, plan[1:]):
            assert a1 <= b0  # no gaps
        assert n - plan[-1][2] < max(1, int(np.ceil(cfg.min_segment_s * sr)))  # only a too-short tail is left
