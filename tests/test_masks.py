"""Masks and Wiener filtering against hand-computed values and the filters' defining properties."""

import numpy as np
import pytest

from stembeam.model import masks


def test_ratio_masks_hand_values():
    est = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    got = masks.ratio_masks(est)
    np.testing.assert_allclose(got[0], [9 / 25, 16 / 25], rtol=1e-6)
    np.testing.assert_allclose(got[1], [0.5, 0.5], rtol=1e-6)  # silence: eps/S over eps
    np.testing.assert_allclose(got[2], [1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(masks.ratio_masks(est, exponent=1.0)[0], [3 / 7, 4 / 7], rtol=1e-6)


def test_extend_masks_modes():
    m = np.arange(2 * 3 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 2)
    zeros = masks.extend_masks(m, 5, "zeros")
    assert zeros.shape == (2, 5, 1, 2)
    np.testing.assert_array_equal(zeros[:, :3], m)
    assert not zeros[:, 3:].any()
    avg = masks.extend_masks(m, 5, "average")
    for frame in range(2):
        for stem in range(2):
            assert avg[frame, 4, 0, stem] == pytest.approx(m[frame, :, 0, stem].mean())
    with pytest.raises(ValueError):
        masks.extend_masks(m, 2)
    with pytest.raises(ValueError):
        masks.extend_masks(m, 5, "mirror")


def error_db(estimate, reference):
    """Energy of (estimate - reference) relative to the reference's, dB."""
    return 10 * np.log10(np.sum(np.abs(estimate - reference) ** 2) / np.sum(np.abs(reference) ** 2))


def random_mix(rng, n=40, bins=17, channels=2):
    return (
        rng.standard_normal((n, bins, channels)) + 1j * rng.standard_normal((n, bins, channels))
    ).astype(np.complex64)


def test_wiener_stems_sum_to_the_mixture_where_modelled():
    rng = np.random.default_rng(0)
    mix = random_mix(rng)
    est = rng.uniform(0.1, 2.0, (40, 12, 2, 3)).astype(np.float32)
    stems = masks.wiener_filter(est, mix, "zeros")
    assert stems.shape == (40, 17, 2, 3) and stems.dtype == np.complex64
    # norbert regularises the mixture covariance (sqrt(eps) I), so the sum is exact to ~60 dB
    assert error_db(stems[:, :12].sum(-1), mix[:, :12]) < -50
    assert np.abs(stems[:, 12:]).max() < 1e-3  # zeros extension silences the unmodelled bins


@pytest.mark.parametrize("loud_bin", [None, 3, 14])
def test_wiener_on_the_modelled_bins_equals_norbert_on_the_whole_spectrum(loud_bin):
    """The reference: norbert.wiener itself over all bins with zero powers above F, as Spleeter's
    --mwf runs it; a loud bin (below or above F) makes norbert rescale the mixture."""
    import norbert

    rng = np.random.default_rng(6)
    mix = random_mix(rng)
    if loud_bin is not None:
        mix[:, loud_bin] *= 500
    est = rng.uniform(0.0, 2.0, (40, 12, 2, 3)).astype(np.float32)
    powers = np.concatenate([est, np.zeros((40, 5, 2, 3), np.float32)], axis=1)
    expected = norbert.wiener(powers, mix.copy(), iterations=1)
    np.testing.assert_array_equal(masks.wiener_filter(est, mix, "zeros"), expected)


def test_wiener_average_extension_keeps_high_bins():
    rng = np.random.default_rng(1)
    mix = random_mix(rng)
    est = rng.uniform(0.1, 2.0, (40, 12, 2, 3)).astype(np.float32)
    stems = masks.wiener_filter(est, mix, "average")
    assert error_db(stems.sum(-1), mix) < -50


def test_wiener_follows_a_dominant_source():
    rng = np.random.default_rng(2)
    mix = random_mix(rng)
    est = np.full((40, 17, 2, 2), 1e-3, np.float32)
    est[..., 0] = np.abs(mix)
    stems = masks.wiener_filter(est, mix)
    assert np.abs(stems[..., 0] - mix).max() / np.abs(mix).max() < 1e-2


def test_residual_makes_stems_sum_to_mixture():
    rng = np.random.default_rng(3)
    mix = random_mix(rng)
    ratio = masks.ratio_masks(rng.uniform(0, 1, (40, 9, 2, 4)))
    stems = mix[..., None] * masks.extend_masks(ratio, 17)
    fixed = masks.add_residual(stems, mix)
    np.testing.assert_allclose(fixed.sum(-1), mix, atol=1e-5)
    np.testing.assert_array_equal(fixed[..., :-1], stems[..., :-1])


def test_shared_residual_sums_to_mixture_in_proportion_to_weights():
    rng = np.random.default_rng(4)
    mix = random_mix(rng)
    estimates = rng.uniform(0, 1, (40, 9, 2, 3))
    stems = mix[..., None] * masks.extend_masks(masks.ratio_masks(estimates), 17)
    weights = rng.dirichlet(np.ones(3), size=(40, 17, 2)).astype(np.float32)
    fixed = masks.share_residual(stems, mix, weights)
    np.testing.assert_allclose(fixed.sum(-1), mix, atol=1e-5)
    above = mix[:, 9:]  # zero masks above F: the whole mixture is the residual there
    np.testing.assert_allclose(fixed[:, 9:], above[..., None] * weights[:, 9:], atol=1e-6)


def test_wiener_leaves_the_mixture_unchanged():
    rng = np.random.default_rng(5)
    mix = (random_mix(rng) * 100).astype(np.complex64)  # loud enough for norbert to rescale it
    before = mix.copy()
    masks.wiener_filter(np.abs(mix)[:, :9, :, None].repeat(2, -1), mix)
    np.testing.assert_array_equal(mix, before)


@pytest.mark.parametrize("extension", masks.MASK_EXTENSIONS)
@pytest.mark.parametrize("residual", masks.RESIDUAL_MODES)
def test_split_masks_match_full_bin_products(extension, residual):
    """stem_masks + masked_spectra (F bins, constant above) == the per-bin float64 computation."""
    rng = np.random.default_rng(6)
    mix = random_mix(rng)  # (40, 17, 2)
    estimates = rng.uniform(0, 1, (40, 9, 2, 3)).astype(np.float32)
    power = estimates.astype(np.float64) ** 2
    ratio = (power + 1e-10 / 3) / (power.sum(-1, keepdims=True) + 1e-10)
    mean = ratio.mean(axis=1, keepdims=True)
    full = np.concatenate(
        [ratio, np.broadcast_to(mean if extension == "average" else 0 * mean, (40, 8, 2, 3))],
        axis=1,
    )
    want = mix[..., None].astype(np.complex128) * full
    if residual == "last":
        want[..., -1] += mix - want.sum(-1)
    elif residual == "share":
        weights = np.concatenate([ratio, np.broadcast_to(mean, (40, 8, 2, 3))], axis=1)
        want += (mix - want.sum(-1))[..., None] * weights
    low, high = masks.stem_masks(estimates, extension, residual)
    assert low.shape == (40, 2, 3, 9) and high.shape == (40, 2, 3, 1)
    got = masks.masked_spectra(mix.transpose(0, 2, 1), low, high)
    assert got.dtype == np.complex64 and got.shape == (40, 2, 3, 17)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, atol=1e-6 * np.abs(mix).max())
    if residual != "none":
        np.testing.assert_allclose(
            got.sum(2), mix.transpose(0, 2, 1), atol=1e-6 * np.abs(mix).max()
        )


def test_split_masks_reject_unknown_modes():
    est = np.ones((2, 3, 2, 2), np.float32)
    with pytest.raises(ValueError):
        masks.stem_masks(est, "mirror")
    with pytest.raises(ValueError):
        masks.stem_masks(est, "zeros", "all")
