"""Kaldi fbank parity with torchaudio's stored output, batching, and the AST feature conventions."""

import numpy as np
import pytest
import torch

from monitor.features import KaldiFbank, dataset_stats, frame_count, normalize
from monitor.frontend import PadCrop, RemoveMean


def fbank(wave, backend="auto"):
    """``KaldiFbank`` on (samples,) or (batch, samples), array or tensor, on the wave's device."""
    x = torch.as_tensor(wave)
    layer = KaldiFbank(backend=backend).to(x.device)
    return layer(x[None])[0] if x.dim() == 1 else layer(x)

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def golden(shared):
    z = np.load(shared / "golden" / "kaldi_fbank_ast.npz")
    return {k.split("__")[0]: (z[k.split("__")[0] + "__wave"], z[k.split("__")[0] + "__fbank"])
            for k in z.files}


CASES = ["chirp_10s", "noise_dc_10s", "tone_2p5s", "silence_10s", "short_0p3s", "real_birds_10s",
         "real_birds_10s_meansub"]


def _check(got, ref):
    """The issue's bounds: mean |err| <= 1e-4; max |err| <= 2e-3 wherever the reference is within 80 dB
    of its frame's peak.

    Everywhere, the error is what float32 rounding in the reference makes (our FFT runs in float64): a
    relative error of a few eps in each mel energy from its float32 steps (16 eps allowed), plus the FFT's
    additive noise of ~eps x the frame's peak amplitude, which is ``2 eps * sqrt(P_peak / P_cell)`` in log
    power for a cell below its frame's peak. Near the peak the bound is 2e-6: a mel bank one ulp of log
    away from torchaudio's fails it 13-66x. ~99 dB down the FFT noise reaches 2.07e-3 on one chirp
    value, above the issue's 2e-3: pinned there at the measured 2.1e-3."""
    assert got.shape == ref.shape
    err = np.abs(got - ref)
    assert err.mean() <= 1e-4
    depth = ref.max(axis=-1, keepdims=True) - ref  # natural-log power below the frame's peak
    assert err[depth <= 8 * np.log(10)].max(initial=0.0) <= 2e-3  # within 80 dB
    rounding = np.finfo(np.float32).eps * (16 + 2 * np.exp(depth / 2))
    assert (err <= rounding).all(), f"worst err/bound {np.max(err / rounding):.2f}"
    assert err.max(initial=0.0) <= 2.1e-3


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("case", CASES)
def test_parity_with_torchaudio_reference(golden, case, backend):
    """``auto`` is the CPU's pocketfft path; ``torch`` is the GPU front end's code, run here on the CPU."""
    wave, ref = golden[case]
    got = fbank(wave, backend=backend)
    assert got.dtype == torch.float32
    _check(got.numpy(), ref)
    _check(fbank(torch.from_numpy(wave), backend=backend).numpy(), ref)  # tensor in, same answer


def test_batched_parity(golden):
    names = [n for n in CASES if len(golden[n][0]) == 160000]
    assert len(names) == 5
    out = fbank(np.stack([golden[n][0] for n in names]))
    assert out.shape == (5, 998, 128)
    for i, n in enumerate(names):
        _check(out[i].numpy(), golden[n][1])
        np.testing.assert_array_equal(out[i].numpy(), fbank(golden[n][0]).numpy())  # rows are independent
    for n in ("short_0p3s", "tone_2p5s"):
        rep = fbank(torch.from_numpy(np.stack([golden[n][0]] * 3)))
        assert rep.shape == (3,) + golden[n][1].shape
        for row in rep:
            _check(row.numpy(), golden[n][1])


def test_frame_count_and_chunking_are_seamless():
    x = np.random.default_rng(3).standard_normal(16000 * 7 + 123).astype(np.float32)
    full = fbank(x)
    assert full.shape == (1 + (len(x) - 400) // 160, 128) == (frame_count(len(x)), 128)
    assert [frame_count(n) for n in (0, 399, 400, 559, 560)] == [0, 0, 1, 1, 2]
    assert frame_count(22050, 22050, 25.0, 10.0) == 1 + (22050 - 551) // 220 == KaldiFbank(22050).frames(22050)
    part = fbank(x[160 * 300:160 * 300 + 400 + 160 * 99])  # frames 300..399 on their own
    np.testing.assert_allclose(part.numpy(), full[300:400].numpy(), atol=1e-5)


def test_torch_backend_equals_cpu_path(golden):
    """On the CPU the GPU's code path gives the very same numbers as the pocketfft path."""
    waves = np.stack([golden[n][0] for n in CASES if len(golden[n][0]) == 160000])
    np.testing.assert_array_equal(fbank(waves, backend="torch").numpy(), fbank(waves).numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
@pytest.mark.parametrize("case", CASES)
def test_gpu_parity_with_torchaudio_reference(golden, case):
    wave, ref = golden[case]
    got = KaldiFbank().cuda()(torch.from_numpy(np.stack([wave, wave])).cuda())
    assert got.device.type == "cuda"
    _check(got[1].cpu().numpy(), ref)


def test_shorter_than_a_frame_gives_no_frames():
    assert fbank(np.zeros(300, np.float32)).shape == (0, 128)
    assert fbank(np.zeros((2, 300), np.float32)).shape == (2, 0, 128)
    with pytest.raises(ValueError, match="batch, samples"):
        KaldiFbank()(torch.zeros(300))
    with pytest.raises(ValueError, match="backend"):
        KaldiFbank(backend="cuda")


def test_layer_buffers_are_the_window_and_the_banded_mel_bank():
    layer = KaldiFbank()
    names = dict(layer.named_buffers())
    assert names["window"].shape == (400,) and len(names) == 1 + 128 // 16
    assert not layer.state_dict()  # derived from the config: never saved with a model
    assert sum(b[1] - b[0] for b in layer.blocks) == 128


def test_pad_crop_normalize_and_mean_removal():
    f = torch.randn(1, 10, 128)
    p = PadCrop(16)(f)
    assert p.shape == (1, 16, 128) and torch.equal(p[:, :10], f) and torch.all(p[:, 10:] == 0)
    assert torch.equal(PadCrop(4)(f), f[:, :4])
    assert PadCrop(12)(torch.randn(2, 10, 128)).shape == (2, 12, 128)
    out = torch.zeros(3, 12, 128)
    assert PadCrop(12)(f, out=out, rows=[1]) is out and torch.equal(out[1, :10], f[0]) and not out[[0, 2]].any()
    assert torch.allclose(normalize(torch.full((2, 2), 3.0), 1.0, 0.5), torch.full((2, 2), 2.0))
    w = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32) + 5)
    for backend in ("auto", "torch"):
        assert float(RemoveMean(backend)(w).mean(-1).abs().max()) < 1e-5
    assert torch.equal(RemoveMean("torch")(w), RemoveMean()(w))  # float64 mean, float32 subtraction, both ways


def test_dataset_stats_matches_numpy():
    rng = np.random.default_rng(1)
    parts = [torch.from_numpy(rng.normal(-4, 3, size=(5, 20, 8))) for _ in range(3)]
    mean, std = dataset_stats(parts)
    allv = torch.cat([p.flatten() for p in parts]).numpy()
    assert mean == pytest.approx(allv.mean(), rel=1e-9) and std == pytest.approx(allv.std(), rel=1e-9)
    with pytest.raises(ValueError):
        dataset_stats([])
