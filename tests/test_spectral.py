"""STFT framing against independent references: an explicit DFT, TensorFlow, and round trips."""

import numpy as np
import pytest

from stembeam.model import spectral


def explicit_stft(waveform, frame_length, frame_step):
    """Spleeter's STFT written out: prepend zeros, pad the end, window, plain DFT matrix."""
    n_frames = int(np.ceil((len(waveform) + frame_length) / frame_step))
    padded = np.zeros(((n_frames - 1) * frame_step + frame_length, waveform.shape[1]))
    padded[frame_length : frame_length + len(waveform)] = waveform
    n = np.arange(frame_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / frame_length)
    bins = np.arange(frame_length // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(n, bins) / frame_length)  # (L, bins)
    frames = np.stack(
        [padded[k * frame_step : k * frame_step + frame_length] for k in range(n_frames)]
    )
    return np.einsum("kLc,Lb->kbc", frames * window[None, :, None], dft)


@pytest.mark.parametrize("num_samples", [1, 50, 64, 333])
def test_stft_matches_explicit_dft(num_samples):
    rng = np.random.default_rng(num_samples)
    x = rng.standard_normal((num_samples, 2)).astype(np.float32)
    got = spectral.stft(x, frame_length=64, frame_step=16)
    want = explicit_stft(x.astype(np.float64), 64, 16)
    assert got.shape == want.shape == (spectral.frame_count(num_samples, 64, 16), 33, 2)
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_stft_matches_tensorflow_spleeter_framing():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((44100, 2)).astype(np.float32)
    padded = tf.concat([tf.zeros((4096, 2)), x], 0)
    want = (
        tf.signal.stft(
            tf.transpose(padded),
            4096,
            1024,
            window_fn=lambda n, dtype: tf.signal.hann_window(n, periodic=True, dtype=dtype),
            pad_end=True,
        )
        .numpy()
        .transpose(1, 2, 0)
    )
    got = spectral.stft(x)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-5


@pytest.mark.parametrize("frame_length,frame_step", [(4096, 1024), (64, 16), (60, 25)])
def test_round_trip_is_identity(frame_length, frame_step):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (10 * frame_length + 7, 2)).astype(np.float32)
    y = spectral.istft(spectral.stft(x, frame_length, frame_step), len(x), frame_length, frame_step)
    if frame_length % frame_step:
        # Hann^2 only overlap-adds to a constant for hops dividing the window: compare to the
        # explicit weighted sum instead.
        window = spectral.hann_window(frame_length).astype(np.float64) ** 2
        n = spectral.frame_count(len(x), frame_length, frame_step)
        gain = np.zeros((n - 1) * frame_step + frame_length)
        for k in range(n):
            gain[k * frame_step : k * frame_step + frame_length] += window
        gain *= spectral.window_compensation(frame_length, frame_step)
        want = x * gain[frame_length : frame_length + len(x), None]
    else:
        want = x
    np.testing.assert_allclose(y, want, atol=2e-6)


def test_overlap_add_carries_trailing_axes():
    rng = np.random.default_rng(2)
    spec = (rng.standard_normal((9, 33, 2, 3)) + 1j * rng.standard_normal((9, 33, 2, 3))).astype(
        np.complex64
    )
    whole = spectral.overlap_add(spec, 64, 16)
    for s in range(3):
        np.testing.assert_allclose(
            whole[..., s], spectral.overlap_add(spec[..., s], 64, 16), atol=1e-6
        )
    assert whole.shape == (8 * 16 + 64, 2, 3)


def test_window_compensation_for_spleeter_framing():
    assert spectral.window_compensation(4096, 1024) == pytest.approx(2 / 3)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_overlap_add_gain_is_the_summed_squared_window(n):
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(64) / 64)
    want = np.zeros((n - 1) * 16 + 64)
    for k in range(n):
        want[k * 16 : k * 16 + 64] += window**2
    want /= np.sum(window**2) / 16
    np.testing.assert_allclose(spectral.overlap_add_gain(n, 64, 16), want, atol=1e-6)
    if n == 10:  # 1 wherever 4 frames overlap
        np.testing.assert_allclose(want[48:-48], 1, atol=1e-12)
