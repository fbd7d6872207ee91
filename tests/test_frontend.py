"""The shared front end: order of operations, the stage modules, and training clips equal to inference segments."""

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_wav
from monitor.audio import resample, sanitize, to_mono
from monitor.config import BandConfig, FbankConfig, Preprocess
from monitor.features import KaldiFbank, normalize
from monitor.frontend import BandLimit, FrontEnd, PadCrop, RemoveMean, bandpass, front_end, prepare_wave, stack_waves


pytestmark = pytest.mark.usefixtures("one_torch_thread")


BAND = Preprocess(band=BandConfig(low_hz=300.0, high_hz=3000.0))


def _tone_db(x, sr, f):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) / (len(x) / 4)  # full-scale sine -> ~0 dB
    k = int(round(f * len(x) / sr))
    return 20 * np.log10(spec[max(0, k - 3):k + 4].max() + 1e-20)


def _band(pre, x, backend="auto"):
    """The front end's band stage on one 16 kHz wave (numpy in and out)."""
    return FrontEnd(pre, backend).band(torch.from_numpy(x)[None])[0].numpy()


def test_order_is_mono_sanitize_resample_then_band():
    sr = 48000
    x = np.random.default_rng(0).standard_normal((sr * 2, 2)).astype(np.float32)
    x[10, 1] = np.nan
    wave, bad = prepare_wave(x, sr, BAND)
    mono, n = sanitize(to_mono(x))
    assert bad == n == 1
    assert wave.dtype == np.float32 and wave.shape == (32000,)
    np.testing.assert_array_equal(wave, resample(mono, sr, 16000))
    got = _band(BAND, wave)
    np.testing.assert_array_equal(got, bandpass(wave, 16000, 300.0, 3000.0, 6))
    # band-limiting at 48 kHz before resampling is a different (worse-conditioned, slower) filter
    assert not np.allclose(got, resample(bandpass(mono, sr, 300.0, 3000.0, 6), sr, 16000), atol=1e-6)


def test_high_edge_at_or_above_8khz_is_off_after_resampling():
    x = np.random.default_rng(1).standard_normal(44100).astype(np.float32)
    wave = prepare_wave(x, 44100, Preprocess())[0]
    off = FrontEnd(Preprocess())(wave[None])
    for high in (8000.0, 12000.0):
        pre = Preprocess(band=BandConfig(high_hz=high))
        for backend in ("auto", "torch"):
            assert FrontEnd(pre, backend).band.sos is None and np.array_equal(_band(pre, wave, backend), wave)
        torch.testing.assert_close(FrontEnd(pre)(wave[None]), off, rtol=0, atol=0)


def test_band_and_resampler_shape_the_spectrum():
    sr = 384000
    t = np.arange(sr) / sr
    x = sum(np.sin(2 * np.pi * f * t) for f in (1000.0, 6000.0, 30000.0)).astype(np.float32) / 3
    y = _band(BAND, prepare_wave(x, sr, BAND)[0])
    y = y[2000:-2000]
    assert _tone_db(y, 16000, 1000) == pytest.approx(20 * np.log10(1 / 3), abs=0.5)  # in band: kept
    assert _tone_db(y, 16000, 6000) < _tone_db(y, 16000, 1000) - 60  # above the band: filtered
    assert _tone_db(y, 16000, 2000) < -80  # 30 kHz would alias to 2 kHz without the anti-alias filter


def test_training_clip_equals_inference_segment(tmp_path):
    """A 25 s recording: monitor run's segments (decode_task) and clips cut by a trainer agree exactly."""
    from monitor.decode import decode_task
    from monitor.plan import job_from_path, plan_batches

    sr = 44100
    p = write_wav(tmp_path / "rec.wav", 25.0, sr, channels=2, freq_hz=2500.0, noise=0.05, seed=4)
    (task,) = plan_batches([job_from_path(p)], BAND, 4).tasks
    assert [b[1:] for b in task.spans[0].bounds] == [(0, 10 * sr), (10 * sr, 20 * sr), (20 * sr, 25 * sr)]
    batch = torch.from_numpy(decode_task(task, BAND).data)
    assert batch.shape == (3, 1024, 128) and batch.dtype == torch.float32
    waves = []
    for k, (start_s, end_s) in enumerate([(0, 10), (10, 20), (20, 25)]):
        clip, clip_sr = sf.read(str(p), start=start_s * sr, stop=end_s * sr, dtype="float32")
        waves.append(prepare_wave(clip, clip_sr, BAND)[0])
        assert torch.equal(front_end(BAND)(waves[-1][None])[0], batch[k]), k
    # the partial last segment: 5 s of audio is 498 frames, then zero frames (normalised) to 1024
    raw = front_end(BAND)(*stack_waves(waves), normalize=False)
    assert torch.all(raw[2, 498:] == 0) and not torch.any(raw[2, :498] == 0)
    assert torch.equal(batch, normalize(raw, BAND.fbank.norm_mean, BAND.fbank.norm_std))


def test_features_match_the_pieces_and_mixed_lengths():
    pre = Preprocess(fbank=FbankConfig(target_frames=600, norm_mean=-5.0, norm_std=3.0))
    rng = np.random.default_rng(5)
    waves = [rng.standard_normal(n).astype(np.float32) + 0.3 for n in (96000, 48000, 96000, 200)]
    data, lengths = stack_waves(waves)
    assert data.shape == (4, 96000) and lengths.tolist() == [96000, 48000, 96000, 200]
    out = FrontEnd(pre)(data, lengths)
    assert out.shape == (4, 600, 128)
    for w, row in zip(waves, out):
        ref = normalize(PadCrop(600)(KaldiFbank()(RemoveMean()(torch.from_numpy(w)[None]))), -5.0, 3.0)[0]
        torch.testing.assert_close(row, ref, rtol=0, atol=1e-5)
    assert torch.all(out[3] == 5.0 / 6.0)  # shorter than a frame: all zero frames, normalised
    no_mean = FrontEnd(Preprocess(fbank=FbankConfig(remove_wave_mean=False)))(waves[0][None], normalize=False)[0]
    torch.testing.assert_close(no_mean, PadCrop(1024)(KaldiFbank()(torch.from_numpy(waves[0])[None]))[0], rtol=0,
                               atol=1e-5)
    # into a caller's zeroed buffer, rows past the batch untouched; lengths default to the whole width
    buf = torch.zeros(6, 600, 128)
    assert FrontEnd(pre)(data[[0, 2]], out=buf) is buf and torch.equal(buf[:2], out[[0, 2]]) and not buf[2:].any()


def test_front_end_is_built_once_per_preprocessing_and_device():
    assert front_end(BAND) is front_end(BAND) is front_end(BAND, "cpu")
    assert front_end(BAND) is not front_end(Preprocess())
    fe = FrontEnd(BAND)
    assert [n for n, _ in fe.named_children()] == ["band", "remove_mean", "fbank", "pad_crop", "normalize"]
    assert not fe.state_dict()  # every buffer is derived from the Preprocess


# --- band limit: the CPU kernel (scipy's sosfiltfilt) --------------------------------------------------

def test_bandpass_attenuation_matches_butterworth():
    from scipy.signal import butter, sosfreqz

    sr, lo, hi, order = 16000, 500.0, 3000.0, 6
    sos = butter(order, [lo, hi], btype="bandpass", fs=sr, output="sos")
    t = np.arange(sr * 2) / sr
    for f in (250.0, 400.0, 1500.0, 3500.0, 5000.0):
        x = np.sin(2 * np.pi * f * t).astype(np.float32)
        y = bandpass(x, sr, lo, hi, order)
        got = 20 * np.log10(np.sqrt(np.mean(y[4000:-4000] ** 2)) / np.sqrt(np.mean(x[4000:-4000] ** 2)))
        _, h = sosfreqz(sos, worN=[f], fs=sr)
        expected = 2 * 20 * np.log10(abs(h[0]))  # zero-phase: the filter runs twice
        assert expected > -120  # measurable above float32 noise
        assert got == pytest.approx(expected, abs=0.5), f
    # far outside the band: gone to the float32 noise floor
    assert 20 * np.log10(np.abs(bandpass(np.sin(2 * np.pi * 100 * t), sr, lo, hi)[4000:-4000]).max()) < -120


@pytest.mark.parametrize("shape", [(160000,), (16000, 2), (40,), (2,), (1,)])
@pytest.mark.parametrize("band", [(200.0, 6000.0, 6), (None, 3000.0, 4), (500.0, None, 2)])
def test_bandpass_is_scipy_sosfiltfilt_bit_for_bit(shape, band):
    """The cached design + own sosfiltfilt step list is scipy's sosfiltfilt exactly, short inputs included."""
    from scipy.signal import butter, sosfiltfilt

    lo, hi, order = band
    x = np.random.default_rng(len(shape) + shape[0]).standard_normal(shape).astype(np.float32)
    btype, wn = ("bandpass", [lo, hi]) if lo and hi else ("lowpass", hi) if hi else ("highpass", lo)
    sos = butter(order, wn, btype=btype, fs=16000, output="sos")
    padlen = min(3 * (2 * len(sos) + 1), max(0, len(x) - 1))
    ref = sosfiltfilt(sos, x.astype(np.float64), axis=0, padlen=padlen).astype(np.float32)
    for _ in range(2):  # the second call uses the cached design
        np.testing.assert_array_equal(bandpass(x, 16000, lo, hi, order), ref)


def test_bandpass_edges_off_and_lowpass_highpass():
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    np.testing.assert_array_equal(bandpass(x, 16000, None, None), x)
    np.testing.assert_array_equal(bandpass(x, 16000, 0, 8000), x)  # 0 and Nyquist edges are off
    lp = bandpass(x, 16000, None, 1000)
    hp = bandpass(x, 16000, 1000, None)
    s_lp, s_hp = np.abs(np.fft.rfft(lp)), np.abs(np.fft.rfft(hp))
    n = len(s_lp)
    assert s_lp[n // 2:].mean() < 0.01 * s_lp[: n // 16].mean()
    assert s_hp[: n // 32].mean() < 0.01 * s_hp[n // 2:].mean()



# --- the GPU's kernels (backend="torch"), checked on the CPU ----------------------------------------------

@pytest.mark.parametrize("band", [(200.0, 6000.0), (None, 3000.0), (50.0, None), (1000.0, 2000.0)])
def test_fft_band_limit_is_the_cpu_filter(band):
    """BandLimit's torch kernel computes sosfiltfilt exactly (float64 FFT convolutions with the filter's impulse
    and initial-state responses): within 1e-9 of the CPU filter on a 0.4-peak signal, short inputs included."""
    rng = np.random.default_rng(5)
    for n in (160000, 5000, 40):
        x = (0.1 * rng.standard_normal((3, n))).astype(np.float32)
        ref = np.stack([bandpass(r, 16000, *band) for r in x])
        np.testing.assert_array_equal(BandLimit(16000, *band)(torch.from_numpy(x)).numpy(), ref)  # CPU kernel
        got = BandLimit(16000, *band, backend="torch")(torch.from_numpy(x)).numpy()
        assert got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-9


@pytest.mark.parametrize("pre", [Preprocess(), BAND, Preprocess(fbank=FbankConfig(remove_wave_mean=False))])
def test_device_front_end_equals_cpu_front_end(pre):
    """Waves resampled in the workers, then the front end with the GPU's kernels (band, mean removal, fbank,
    pad/crop and normalisation batched in torch): on the CPU bit-identical to the CPU's kernels (a short
    final segment included)."""
    rng = np.random.default_rng(6)
    segs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (480000, 480000, 200000, 60000, 480000)]
    data, lengths = stack_waves([prepare_wave(s, 48000, pre)[0] for s in segs])
    ref = FrontEnd(pre)(data, lengths).numpy()
    got = FrontEnd(pre, backend="torch")(torch.from_numpy(data), lengths).numpy()
    np.testing.assert_array_equal(got, ref)
