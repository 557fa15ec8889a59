"""Segment-wise separation against whole-track references computed independently with numpy."""

import dataclasses

import numpy as np
import pytest

from stembeam.model import spectral
from stembeam.model.config import ModelConfig
from stembeam.model.reconstruct import (
    reconstruct_segment,
    segment_spectrogram,
    separate_waveform,
    slice_with_silence,
)
from stembeam.model.segmentation import (
    DEFAULT_CONTEXT,
    plan_segments,
    segment_sample_range,
)
from stembeam.model.spectral import frame_count
from tests.conftest import numpy_separate

CFG = ModelConfig(
    name="tiny", stems=("vocals", "accompaniment"), T=64, F=64, mask_extension="average"
)
FRACTIONS = np.array([0.25, 0.75], np.float32)  # ratio masks with exponent 2: 0.1 and 0.9


def constant_ratio_predict(magnitude):
    """(B, T, F, C) -> (B, T, F, C, 2): each stem a fixed fraction of the mixture magnitude."""
    return magnitude[..., None] * FRACTIONS


def position_predict(magnitude):
    """Estimates that depend on the frame's position inside the segment (so the cut matters)."""
    ramp = np.linspace(0.1, 1.0, magnitude.shape[1], dtype=np.float32)[None, :, None, None]
    return np.stack([magnitude * ramp, magnitude * (1.1 - ramp) + 0.01], axis=-1)


def music_like(num_samples, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None] * np.array([1.0, 0.6])
    return (tone + 0.05 * rng.standard_normal((num_samples, 2))).astype(np.float32)


@pytest.mark.parametrize("segmentation", ["overlap", "spleeter"])
@pytest.mark.parametrize("num_samples", [1, 3000, 64 * 1024, 300_000])
def test_constant_masks_scale_the_mixture(segmentation, num_samples):
    x = music_like(num_samples)
    stems = separate_waveform(
        x, constant_ratio_predict, CFG, segmentation, "ratio", batch_size=3, context=64
    )
    assert stems.shape == (num_samples, 2, 2) and stems.dtype == np.float32
    np.testing.assert_allclose(stems[..., 0], 0.1 * x, atol=1e-5)
    np.testing.assert_allclose(stems[..., 1], 0.9 * x, atol=1e-5)


def spleeter_reference(x, predict, cfg):
    """Spleeter's whole-track path: STFT, pad_and_partition to T, predict, crop, masks, iSTFT."""
    spec = spectral.stft(x)
    n = spec.shape[0]
    mag = np.abs(spec[:, : cfg.F])
    pad = (-n) % cfg.T
    mag = np.concatenate([mag, np.zeros((pad,) + mag.shape[1:], np.float32)])
    est = predict(mag.reshape((-1, cfg.T) + mag.shape[1:])).reshape((-1,) + mag.shape[1:] + (2,))[
        :n
    ]
    power = est.astype(np.float64) ** 2
    masks = (power + 1e-10 / 2) / (power.sum(-1, keepdims=True) + 1e-10)
    full = np.concatenate(
        [
            masks,
            np.broadcast_to(
                masks.mean(1, keepdims=True), (n, spec.shape[1] - cfg.F) + masks.shape[2:]
            ),
        ],
        1,
    )
    return spectral.istft(spec[..., None] * full, len(x))


def test_spleeter_segmentation_matches_whole_track_reference():
    x = music_like(200_000, seed=1)
    got = separate_waveform(x, position_predict, CFG, "spleeter", "ratio", batch_size=2)
    want = spleeter_reference(x, position_predict, CFG)
    assert np.abs(got - want).max() < 1e-5


def test_overlap_mode_differs_from_spleeter_only_through_the_context():
    x = music_like(200_000, seed=2)
    spleeter = separate_waveform(x, position_predict, CFG, "spleeter")
    no_context = separate_waveform(x, position_predict, CFG, "overlap", context=0)
    overlap = separate_waveform(x, position_predict, CFG, "overlap", context=64)
    np.testing.assert_allclose(no_context, spleeter, atol=1e-6)  # T = 64: never shortened
    # the first segment is the cut's; the second segment's kept frames touch samples from here
    first_seam = CFG.T * 1024 - 4096
    np.testing.assert_allclose(overlap[:first_seam], spleeter[:first_seam], atol=1e-6)
    assert np.abs(overlap[first_seam:] - spleeter[first_seam:]).max() > 1e-3


def test_residual_restores_the_mixture_with_zeros_extension():
    cfg = dataclasses.replace(CFG, mask_extension="zeros")
    x = music_like(100_000, seed=3)
    plain = separate_waveform(x, position_predict, cfg)
    assert np.abs(plain.sum(-1) - x).max() > 1e-3  # high bins are lost without the residual
    for mode in ("last", "share"):
        fixed = separate_waveform(x, position_predict, cfg, residual=mode)
        np.testing.assert_allclose(fixed.sum(-1), x, atol=1e-5)
    with pytest.raises(ValueError, match="residual must be one of"):
        separate_waveform(x, position_predict, cfg, residual="all")


def test_wiener_postprocess_sums_to_mixture_below_f():
    cfg = dataclasses.replace(CFG, mask_extension="average")
    x = music_like(100_000, seed=4)
    stems = separate_waveform(x, position_predict, cfg, postprocess="wiener")
    err = np.sum((stems.sum(-1) - x) ** 2) / np.sum(x**2)
    assert stems.shape == (100_000, 2, 2)
    assert 10 * np.log10(err) < -25  # norbert regularises quiet bins (sqrt(eps) I)


@pytest.mark.parametrize("seconds", [0.4, 3.0, 15.0])
def test_short_last_segments_match_the_whole_track_reference(seconds):
    """T = 512: short tracks and tracks' ends are fed fewer frames (multiples of 64); with
    frame-local estimates the result is the whole-track reference, whatever the cut."""
    cfg = dataclasses.replace(CFG, T=512, mask_extension="zeros")
    x = music_like(int(seconds * 44100), seed=3)
    plans = plan_segments(frame_count(len(x)), cfg.T, "overlap")
    assert plans[-1].frames is not None and plans[-1].frames < cfg.T
    lengths = []

    def predict(magnitude):
        lengths.append(magnitude.shape[1])
        return constant_ratio_predict(magnitude) ** 0.5 + magnitude[..., None] ** 2

    got = separate_waveform(x, predict, cfg, "overlap", batch_size=4)
    assert lengths[-1] == plans[-1].frames
    assert set(lengths[:-1]) <= {cfg.T, cfg.T + DEFAULT_CONTEXT}
    want = numpy_separate(x, predict, cfg, DEFAULT_CONTEXT)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("postprocess", ["ratio", "wiener"])
@pytest.mark.parametrize("residual", ["last", "share"])
def test_last_stem_from_the_mixture_samples_equals_its_inverse_stft(postprocess, residual):
    """With a residual the last stem is the mixture samples minus the other stems: the same as
    the inverse STFT of its own spectrum (without the samples)."""
    x = music_like(150_000, seed=5)
    plan = plan_segments(frame_count(len(x)), CFG.T, "overlap", 64)[2]
    span = segment_sample_range(plan, CFG.T, CFG.frame_length, CFG.frame_step)
    samples = slice_with_silence(x, *span)
    mix_stft, magnitude = segment_spectrogram(samples, CFG)
    estimates = position_predict(magnitude[None])[0]
    start, want = reconstruct_segment(mix_stft, estimates, plan, CFG, postprocess, residual)
    got_start, got = reconstruct_segment(
        mix_stft, estimates, plan, CFG, postprocess, residual, samples
    )
    assert got_start == start and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    # the inverse STFTs of all stems sum to the mixture times the overlap-add gain
    gain = spectral.overlap_add_gain(plan.keep_stop - plan.keep_start, 4096, 1024)
    offset = (plan.keep_start - plan.frame_start) * 1024
    np.testing.assert_allclose(
        want.sum(-1), samples[offset : offset + len(gain)] * gain[:, None], atol=1e-5
    )
