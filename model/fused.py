"""The whole spectral path of a batch of segments as one TensorFlow function.

``fused_separator`` maps a batch of segments' mixture samples to their stems' overlap-added
samples in one traced call: Spleeter's STFT (``tf.signal``: periodic Hann window, 4096 / 1024),
the U-Net, the ratio masks with the residual folded in (``model.masks.stem_masks``' maths), the
masked spectra, the inverse FFT with the compensated synthesis window and the overlap-add. On a
GPU worker all of it runs on the device and the host only decodes and encodes; one batch crosses
the bus twice (samples in, stem samples out). The host path (``model.reconstruct``: numpy/scipy
STFT and masks around the U-Net) gives the same numbers up to float32 round-off.

Shapes: ``B`` segments, ``n`` frames per segment (a multiple of 64, ``SegmentPlan.length``),
``L_s = (n - 1) * frame_step + frame_length`` samples, ``C`` channels, ``S`` stems; ``F`` bins
seen by the U-Net of ``bins = frame_length // 2 + 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from stembeam.model.config import ModelConfig
from stembeam.model.masks import EPSILON, MASK_EXTENSIONS, RESIDUAL_MODES
from stembeam.model.segmentation import SegmentPlan, ola_sample_range
from stembeam.model.spectral import hann_window, window_compensation

# (samples (B, L_s, C) float32, the segments' plans) -> [(start, (N, C, S) float32)] per segment
FusedSeparator = Callable[[np.ndarray, Sequence[SegmentPlan]], list[tuple[int, np.ndarray]]]


def _masks(estimates: tf.Tensor, extension: str, residual: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Ratio masks (exponent 2) of (B, n, F, C, S) estimates, as ``masks.stem_masks``:
    (low (B, n, F, C, S) for bins < F, high (B, n, 1, C, S) for every bin >= F)."""
    n_stems = estimates.shape[-1]
    power = tf.square(estimates)
    low = (power + EPSILON / n_stems) / (tf.reduce_sum(power, axis=-1, keepdims=True) + EPSILON)
    mean = tf.reduce_mean(low, axis=2, keepdims=True)  # (B, n, 1, C, S)
    high = mean if extension == "average" else tf.zeros_like(mean)
    if residual == "last":
        low, high = (
            tf.concat([m[..., :-1], 1 - tf.reduce_sum(m[..., :-1], -1, keepdims=True)], -1)
            for m in (low, high)
        )
    elif residual == "share":
        low = low * (2 - tf.reduce_sum(low, axis=-1, keepdims=True))
        high = high + (1 - tf.reduce_sum(high, axis=-1, keepdims=True)) * mean
    return low, high


def fused_separator(
    model: keras.Model,
    cfg: ModelConfig,
    extension: str = "zeros",
    residual: str = "none",
) -> FusedSeparator:
    """``model`` (``model.unet.build_unet``) inside the whole ratio-mask spectral path.

    The returned function takes ``samples`` (B, L_s, C) float32, segments' mixture samples
    (``model.reconstruct.segment_spectrogram``'s input, all of one length), and their plans; it
    returns per segment ``(start, block)``, the overlap-add of its kept frames' stems ((N, C, S)
    float32 starting at track sample ``start``): ``model.reconstruct.reconstruct_segment``'s
    result. One trace per segment length, for every batch size.
    """
    if extension not in MASK_EXTENSIONS:
        raise ValueError(f"mask extension must be one of {MASK_EXTENSIONS}, got {extension!r}")
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    length, step, F = cfg.frame_length, cfg.frame_step, cfg.F
    analysis = tf.constant(hann_window(length))
    synthesis = tf.constant(hann_window(length) * np.float32(window_compensation(length, step)))
    _, t, _, channels = model.input.shape

    def separate(samples: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
        """(B, L_s, C) samples, (B, 2) kept frames [lo, hi) -> (B, L_s, C, S) overlap-added
        stems of the kept frames (zero where no kept frame reaches)."""
        frames = tf.signal.frame(tf.transpose(samples, [0, 2, 1]), length, step)  # (B, C, n, L)
        spec = tf.signal.rfft(frames * analysis)  # (B, C, n, bins)
        n = spec.shape[2]
        magnitude = tf.transpose(tf.abs(spec[..., :F]), [0, 2, 3, 1])  # (B, n, F, C)
        run = model if n == t else model.call  # the layers take any multiple of 64 frames
        low, high = _masks(run(magnitude, training=False), extension, residual)
        index = tf.range(n)[None, :]
        kept = tf.cast((index >= keep[:, :1]) & (index < keep[:, 1:]), tf.float32)  # (B, n)
        kept = kept[:, None, None, :, None]
        # masks to (B, C, S, n, F | 1), zero outside the kept frames
        low, high = (tf.transpose(m, [0, 3, 4, 1, 2]) * kept for m in (low, high))
        spec = spec[:, :, None]  # (B, C, 1, n, bins)
        stems = tf.concat(
            [
                spec[..., :F] * tf.complex(low, tf.zeros_like(low)),
                spec[..., F:] * tf.complex(high, tf.zeros_like(high)),
            ],
            axis=-1,
        )  # (B, C, S, n, bins)
        out = tf.signal.overlap_and_add(tf.signal.irfft(stems) * synthesis, step)  # (B, C, S, L_s)
        return tf.transpose(out, [0, 3, 1, 2])

    traced: dict[int, Callable] = {}  # samples per segment -> traced graph

    def call(samples: np.ndarray, plans: Sequence[SegmentPlan]) -> list[tuple[int, np.ndarray]]:
        samples = np.asarray(samples, np.float32)
        size = samples.shape[1]
        if size not in traced:
            traced[size] = tf.function(
                separate,
                input_signature=[
                    tf.TensorSpec((None, size, channels), tf.float32),
                    tf.TensorSpec((None, 2), tf.int32),
                ],
            )
        keep = [(p.keep_start - p.frame_start, p.keep_stop - p.frame_start) for p in plans]
        blocks = traced[size](samples, np.array(keep, np.int32)).numpy()
        if not np.isfinite(blocks).all():
            raise ValueError("the model produced NaN or infinite values")
        out = []
        for plan, (lo, _), block in zip(plans, keep, blocks):
            start, stop = ola_sample_range(plan.keep_start, plan.keep_stop, length, step)
            out.append((start, block[lo * step : lo * step + stop - start]))
        return out

    return call
