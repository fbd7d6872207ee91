"""The shared front end: order of operations, and training clips equal to inference segments."""

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_wav
from monitor.audio import bandpass, plan_segments, probe, read_frames, resample, sanitize, to_mono
from monitor.config import BandConfig, FbankConfig, Preprocess
from monitor.features import fbank, normalize, pad_or_crop, remove_mean
from monitor.frontend import features, prepare_wave, segment_features


pytestmark = pytest.mark.usefixtures("one_torch_thread")


BAND = Preprocess(band=BandConfig(low_hz=300.0, high_hz=3000.0))


def _tone_db(x, sr, f):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) / (len(x) / 4)  # full-scale sine -> ~0 dB
    k = int(round(f * len(x) / sr))
    return 20 * np.log10(spec[max(0, k - 3):k + 4].max() + 1e-20)


def test_order_is_mono_sanitize_resample_then_band():
    sr = 48000
    x = np.random.default_rng(0).standard_normal((sr * 2, 2)).astype(np.float32)
    x[10, 1] = np.nan
    got, bad = prepare_wave(x, sr, BAND)
    mono, n = sanitize(to_mono(x))
    ref = bandpass(resample(mono, sr, 16000), 16000, 300.0, 3000.0, 6)
    assert bad == n == 1
    assert got.dtype == np.float32 and got.shape == (32000,)
    np.testing.assert_array_equal(got, ref)
    # band-limiting at 48 kHz before resampling is a different (worse-conditioned, slower) filter
    assert not np.allclose(got, resample(bandpass(mono, sr, 300.0, 3000.0, 6), sr, 16000), atol=1e-6)


def test_high_edge_at_or_above_8khz_is_off_after_resampling():
    x = np.random.default_rng(1).standard_normal(44100).astype(np.float32)
    off = prepare_wave(x, 44100, Preprocess())[0]
    for high in (8000.0, 12000.0):
        np.testing.assert_array_equal(prepare_wave(x, 44100, Preprocess(band=BandConfig(high_hz=high)))[0], off)


def test_band_and_resampler_shape_the_spectrum():
    sr = 384000
    t = np.arange(sr) / sr
    x = sum(np.sin(2 * np.pi * f * t) for f in (1000.0, 6000.0, 30000.0)).astype(np.float32) / 3
    y, _ = prepare_wave(x, sr, BAND)
    y = y[2000:-2000]
    assert _tone_db(y, 16000, 1000) == pytest.approx(20 * np.log10(1 / 3), abs=0.5)  # in band: kept
    assert _tone_db(y, 16000, 6000) < _tone_db(y, 16000, 1000) - 60  # above the band: filtered
    assert _tone_db(y, 16000, 2000) < -80  # 30 kHz would alias to 2 kHz without the anti-alias filter


def test_training_clip_equals_inference_segment(tmp_path):
    """A 25 s recording: the inference segments and clips cut by a trainer agree exactly."""
    sr = 44100
    p = write_wav(tmp_path / "rec.wav", 25.0, sr, channels=2, freq_hz=2500.0, noise=0.05, seed=4)
    plan = plan_segments(probe(p).frames, sr, BAND.segment)  # what monitor run reads, by seeking
    assert [(a / sr, b / sr) for _, a, b in plan] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    waves = [prepare_wave(read_frames(p, a, b), sr, BAND)[0] for _, a, b in plan]
    batch = features(waves, BAND)
    assert batch.shape == (3, 1024, 128) and batch.dtype == torch.float32
    for k, (start_s, end_s) in enumerate([(0, 10), (10, 20), (20, 25)]):
        clip, clip_sr = sf.read(str(p), start=start_s * sr, stop=end_s * sr, dtype="float32")
        train = segment_features(clip, clip_sr, BAND)
        assert torch.equal(train, batch[k]), k
    # the partial last segment: 5 s of audio is 498 frames, then zero frames (normalised) to 1024
    raw = features(waves, BAND, normalize=False)
    assert torch.all(raw[2, 498:] == 0) and not torch.any(raw[2, :498] == 0)
    assert torch.equal(batch, normalize(raw, BAND.fbank.norm_mean, BAND.fbank.norm_std))


def test_features_match_the_pieces_and_mixed_lengths():
    pre = Preprocess(fbank=FbankConfig(target_frames=600, norm_mean=-5.0, norm_std=3.0))
    rng = np.random.default_rng(5)
    waves = [rng.standard_normal(n).astype(np.float32) + 0.3 for n in (96000, 48000, 96000, 200)]
    out = features(waves, pre)
    assert out.shape == (4, 600, 128)
    for w, row in zip(waves, out):
        ref = normalize(pad_or_crop(fbank(remove_mean(w)), 600), -5.0, 3.0)
        torch.testing.assert_close(row, ref, rtol=0, atol=1e-5)
    assert torch.all(out[3] == 5.0 / 6.0)  # shorter than a frame: all zero frames, normalised
    no_mean = features(waves[:1], Preprocess(fbank=FbankConfig(remove_wave_mean=False)), normalize=False)[0]
    torch.testing.assert_close(no_mean, pad_or_crop(fbank(waves[0]), 1024), rtol=0, atol=1e-5)


# --- the front end's later stages batched in torch (devfront): the GPU's code, checked on the CPU ---------

@pytest.mark.parametrize("band", [(200.0, 6000.0), (None, 3000.0), (50.0, None), (1000.0, 2000.0)])
def test_fft_band_limit_is_the_cpu_filter(band):
    """devfront.band_limit computes sosfiltfilt exactly (float64 FFT convolutions with the filter's impulse and
    initial-state responses): within 1e-9 of the CPU filter on a 0.4-peak signal, short inputs included."""
    from monitor.devfront import band_limit

    rng = np.random.default_rng(5)
    for n in (160000, 5000, 40):
        x = (0.1 * rng.standard_normal((3, n))).astype(np.float32)
        ref = np.stack([bandpass(r, 16000, *band) for r in x])
        got = band_limit(torch.from_numpy(x), 16000, *band).numpy()
        assert got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-9


@pytest.mark.parametrize("pre", [Preprocess(), BAND, Preprocess(fbank=FbankConfig(remove_wave_mean=False))])
def test_device_front_end_equals_cpu_front_end(pre):
    """Waves resampled in the workers, then band, mean removal, fbank, pad/crop and normalisation batched in
    torch: on the CPU bit-identical to frontend.features (a short final segment included)."""
    from monitor.devfront import device_features

    rng = np.random.default_rng(6)
    segs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (480000, 480000, 200000, 60000, 480000)]
    ref = features([prepare_wave(s, 48000, pre)[0] for s in segs], pre).numpy()
    waves = [prepare_wave(s, 48000, pre, band=False)[0] for s in segs]
    lengths = np.array([len(w) for w in waves])
    data = np.zeros((len(waves), lengths.max()), np.float32)
    for i, w in enumerate(waves):
        data[i, :len(w)] = w
    got = device_features(torch.from_numpy(data), lengths, pre).numpy()
    np.testing.assert_array_equal(got, ref)
