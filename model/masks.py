"""Turning the U-Net's magnitude estimates into complex stem spectrograms.

Shapes: ``n`` frames, ``F`` bins seen by the U-Net, ``bins = frame_length // 2 + 1`` bins of the
full spectrum, ``C`` channels, ``S`` stems (last axis). Magnitudes are float32, spectra complex64.
"""

from __future__ import annotations

import numpy as np

MASK_EXTENSIONS = ("zeros", "average")
POSTPROCESS_MODES = ("ratio", "wiener")
RESIDUAL_MODES = ("none", "last", "share")
EPSILON = 1e-10


def ratio_masks(estimates: np.ndarray, exponent: float = 2.0, eps: float = EPSILON) -> np.ndarray:
    """Spleeter's soft masks ``(s_i^p + eps/S) / (sum_j s_j^p + eps)``.

    Args:
      estimates: (..., S) non-negative magnitude estimates.
    Returns:
      (..., S) float32 masks in [0, 1] summing to 1 over stems.
    """
    estimates = np.asarray(estimates, dtype=np.float32)
    powered = estimates**exponent
    n_stems = estimates.shape[-1]
    return (powered + np.float32(eps / n_stems)) / (
        powered.sum(axis=-1, keepdims=True) + np.float32(eps)
    )


def extend_masks(masks: np.ndarray, n_bins: int, mode: str = "zeros") -> np.ndarray:
    """Extends masks from the F modelled bins to all ``n_bins`` bins.

    Args:
      masks: (n, F, C, S).
      mode: ``'zeros'`` (bins above F are silenced) or ``'average'`` (each frame's mean mask
        over F).
    Returns:
      (n, n_bins, C, S), same dtype.
    """
    n, F = masks.shape[:2]
    extra = n_bins - F
    if extra < 0:
        raise ValueError(f"masks have {F} bins, more than the spectrum's {n_bins}")
    if mode == "zeros":
        fill = np.zeros((n, extra) + masks.shape[2:], dtype=masks.dtype)
    elif mode == "average":
        fill = np.broadcast_to(masks.mean(axis=1, keepdims=True), (n, extra) + masks.shape[2:])
    else:
        raise ValueError(f"mask extension must be one of {MASK_EXTENSIONS}, got {mode!r}")
    return np.concatenate([masks, fill], axis=1)


def stem_masks(
    estimates: np.ndarray,
    extension: str = "zeros",
    residual: str = "none",
    exponent: float = 2.0,
    eps: float = EPSILON,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ratio_masks` with the residual folded in, bins last, in two parts: per bin below F,
    per frame above.

    The stems are ``mixture * mask``: ``residual='last'`` gives the last stem ``1 - (sum of the
    other masks)``; ``'share'`` adds ``(1 - sum of masks) * weights`` to every mask, the weights
    being the ratio masks extended with ``'average'``. Above F every bin of a frame has the same
    mask (0 or the frame's mean), so no per-bin arithmetic is spent there.

    Args:
      estimates: (n, F, C, S) non-negative magnitude estimates.
      extension: ``'zeros'`` or ``'average'`` (see :func:`extend_masks`).
      residual: ``'none'``, ``'last'`` or ``'share'``.
    Returns:
      (low (n, C, S, F), high (n, C, S, 1)) float32: masks of bins < F and of every bin >= F.
    """
    if extension not in MASK_EXTENSIONS:
        raise ValueError(f"mask extension must be one of {MASK_EXTENSIONS}, got {extension!r}")
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    # one transposing copy; from here on the stems axis (2) is an outer axis: cheap to reduce
    low = np.ascontiguousarray(np.asarray(estimates, np.float32).transpose(0, 2, 3, 1))
    if exponent == 2.0:
        np.square(low, out=low)
    else:
        np.power(low, np.float32(exponent), out=low)
    total = low.sum(axis=2, keepdims=True)
    total += np.float32(eps)
    low += np.float32(eps / low.shape[2])
    low /= total
    needs_mean = extension == "average" or residual == "share"
    mean = low.mean(axis=-1, keepdims=True) if needs_mean else None
    high = mean.copy() if extension == "average" else np.zeros(low.shape[:3] + (1,), np.float32)
    if residual == "last":
        for part in (low, high):
            part[:, :, -1] = 1 - part[:, :, :-1].sum(axis=2)
    elif residual == "share":
        low *= 2 - low.sum(axis=2, keepdims=True)  # m + (1 - sum m) * m
        high += (1 - high.sum(axis=2, keepdims=True)) * mean
    return low, high


def masked_spectra(mix: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Stem spectra ``mixture * mask`` laid out for the inverse FFT (bins last).

    Args:
      mix: (n, C, bins) complex mixture (bins last; any strides).
      low, high: (n, C, S, F) and (n, C, S, 1) masks from :func:`stem_masks`.
    Returns:
      (n, C, S, bins) complex64, C-contiguous.
    """
    n, channels, n_bins = mix.shape
    F, n_stems = low.shape[-1], low.shape[2]
    out = np.empty((n, channels, n_stems, n_bins), np.complex64)
    mix = mix[:, :, None, :]  # (n, C, 1, bins)
    np.multiply(mix[..., :F], low, out=out[..., :F])
    if np.any(high):
        np.multiply(mix[..., F:], high, out=out[..., F:])
    else:
        out[..., F:] = 0
    return out


def wiener_filter(
    estimates: np.ndarray, mix_stft: np.ndarray, mask_extension: str = "zeros", iterations: int = 1
) -> np.ndarray:
    """Multichannel Wiener filtering with norbert, as Spleeter's ``--mwf`` does.

    Args:
      estimates: (n, F, C, S) magnitude estimates from the U-Net.
      mix_stft: (n, bins, C) complex mixture spectrogram.
      mask_extension: how the estimates extend above F: ``'zeros'`` (Spleeter) or ``'average'``
        (the ratio masks' per-frame mean times the mixture magnitude).
      iterations: EM iterations of norbert.
    Returns:
      (n, bins, C, S) complex64 stem spectrograms.
    """
    n, n_bins, channels = mix_stft.shape
    estimates = np.asarray(estimates, dtype=np.float32)
    mix = mix_stft.astype(np.complex64, copy=False)
    # norbert's EM scales by the largest magnitude of the whole mixture (in its precision)
    scale = max(1, np.abs(mix).max() / 10.0)
    if mask_extension == "zeros":
        # Above F every source's power is 0, and norbert's soft mask and EM updates work bin by
        # bin, so its stems are exactly 0 there: filter the F modelled bins only (half the work)
        F = estimates.shape[1]
        stems = np.zeros((n, n_bins, channels, estimates.shape[-1]), np.complex64)
        stems[:, :F] = _norbert_wiener(estimates, mix[:, :F], iterations, scale)
        return stems
    masks = extend_masks(ratio_masks(estimates), n_bins, mask_extension)
    powers = np.concatenate(
        [estimates, (masks * np.abs(mix)[..., None])[:, estimates.shape[1] :]], axis=1
    )
    return _norbert_wiener(powers, mix, iterations, scale)


def _norbert_wiener(powers: np.ndarray, mix: np.ndarray, iterations: int, scale: float):
    """``norbert.wiener(powers, mix, iterations)`` with its scaling factor given (it takes the
    largest magnitude of ``mix`` / 10, at least 1), so that a band of bins filters exactly as
    it does inside the whole spectrum. powers (n, bins, C, S) float32, mix (n, bins, C)
    complex64 -> (n, bins, C, S) complex64."""
    import norbert  # imported here: only Wiener post-processing needs it

    stems = norbert.softmask(powers, mix)
    if iterations:
        stems = norbert.expectation_maximization(stems / scale, mix / scale, iterations)[0]
        stems *= scale
    return stems.astype(np.complex64, copy=False)


def add_residual(stems_stft: np.ndarray, mix_stft: np.ndarray) -> np.ndarray:
    """Adds what the stems miss of the mixture to the last stem (the catch-all 'other' /
    'accompaniment' in every preset), so the stems sum to the mixture.

    Args:
      stems_stft: (n, bins, C, S) complex; mix_stft: (n, bins, C) complex.
    Returns:
      (n, bins, C, S) complex64.
    """
    out = np.array(stems_stft, dtype=np.complex64, copy=True)
    out[..., -1] += mix_stft - stems_stft.sum(axis=-1)
    return out


def share_residual(stems_stft: np.ndarray, mix_stft: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Shares what the stems miss of the mixture out between the stems, bin by bin, in
    proportion to ``weights``, so the stems sum to the mixture.

    Args:
      stems_stft: (n, bins, C, S) complex; mix_stft: (n, bins, C) complex.
      weights: (n, bins, C, S) non-negative, summing to 1 over stems (e.g. the ratio masks
        extended with ``'average'``: above F each frame's mean mask).
    Returns:
      (n, bins, C, S) complex64.
    """
    missing = mix_stft - stems_stft.sum(axis=-1)
    return (stems_stft + missing[..., None] * weights).astype(np.complex64, copy=False)
