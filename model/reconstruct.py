"""Segment-level separation maths shared by the Beam transforms, training validation and benchmarks.

A segment's life: samples (``segment_sample_range``) -> ``segment_spectrogram`` -> U-Net magnitude
estimates -> ``reconstruct_segment`` -> overlap-added stem samples, stitched by
``StreamingOverlapAdd``. ``separate_waveform`` runs the whole chain on an in-memory track.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from stembeam.model import masks as mask_ops
from stembeam.model.config import ModelConfig
from stembeam.model.segmentation import (
    DEFAULT_CONTEXT,
    SEGMENT_QUANTUM,
    SegmentPlan,
    StreamingOverlapAdd,
    ola_sample_range,
    plan_segments,
    segment_sample_range,
)
from stembeam.model.spectral import frame_count, overlap_add_gain, overlap_add_last, stft_frames

Predict = Callable[[np.ndarray], np.ndarray]


def segment_spectrogram(samples: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """STFT of one segment.

    Args:
      samples: (L, C) float32 at cfg.sample_rate, L = (n - 1) * frame_step + frame_length for
        n frames, a multiple of SEGMENT_QUANTUM (``SegmentPlan.length``).
    Returns:
      mix_stft: (n, bins, C) complex64; magnitude: (n, F, C) float32, the U-Net's input.
    """
    mix_stft = stft_frames(samples, cfg.frame_length, cfg.frame_step)
    n = mix_stft.shape[0]
    if n % SEGMENT_QUANTUM:
        raise ValueError(f"segment has {n} frames, the model takes a multiple of {SEGMENT_QUANTUM}")
    return mix_stft, np.abs(mix_stft[:, : cfg.F])  # (n, F, C): strided like mix_stft


def reconstruct_segment(
    mix_stft: np.ndarray,
    estimates: np.ndarray,
    plan: SegmentPlan,
    cfg: ModelConfig,
    postprocess: str = "ratio",
    residual: str = "none",
    samples: np.ndarray | None = None,
) -> tuple[int, np.ndarray]:
    """Stem waveforms of a segment's kept frames.

    Args:
      mix_stft: (T, bins, C) complex64 mixture spectrogram of the segment.
      estimates: (T, F, C, S) float32 U-Net magnitude estimates.
      plan: the segment's frame ranges.
      postprocess: ``'ratio'`` (Spleeter's default soft masks) or ``'wiener'`` (norbert, over the
        whole segment, then cropped to the kept frames).
      residual: what becomes of the part of the mixture the stems miss (above all the bins
        above F, silenced by the 'zeros' mask extension): ``'none'`` drops it; ``'last'`` adds it
        to the last stem (the catch-all 'other' / 'accompaniment'); ``'share'`` shares it out in
        proportion to the ratio masks (above F: each frame's mean mask). With 'last' or 'share'
        the stems sum to the mixture.
      samples: the segment's (L_s, C) float32 mixture samples (``segment_spectrogram``'s input).
        With a residual, the last stem is then the mixture minus the others in the time domain
        (the inverse STFT being linear): one inverse STFT fewer.
    Returns:
      (start, samples): the overlap-add of the kept frames, samples (n, C, S) float32 starting at
      track sample ``start`` (``ola_sample_range``); consecutive segments' blocks overlap and sum.
    """
    lo, hi = plan.keep_start - plan.frame_start, plan.keep_stop - plan.frame_start
    if postprocess == "ratio":
        low, high = mask_ops.stem_masks(estimates[lo:hi], cfg.mask_extension, residual)
        if samples is not None and residual != "none":
            low, high = low[:, :, :-1], high[:, :, :-1]  # the last stem comes from the rest
        spectra = mask_ops.masked_spectra(mix_stft[lo:hi].transpose(0, 2, 1), low, high)
    elif postprocess == "wiener":
        stems = mask_ops.wiener_filter(estimates, mix_stft, cfg.mask_extension)[lo:hi]
        if residual == "last":
            stems = mask_ops.add_residual(stems, mix_stft[lo:hi])
        elif residual == "share":
            weights = mask_ops.extend_masks(
                mask_ops.ratio_masks(estimates[lo:hi]), cfg.n_bins, "average"
            )
            stems = mask_ops.share_residual(stems, mix_stft[lo:hi], weights)
        elif residual != "none":
            raise ValueError(f"residual must be one of {mask_ops.RESIDUAL_MODES}, got {residual!r}")
        spectra = np.moveaxis(stems, 1, -1)  # (n, C, S, bins)
        if samples is not None and residual != "none":
            spectra = spectra[:, :, :-1]
    else:
        raise ValueError(
            f"postprocess must be one of {mask_ops.POSTPROCESS_MODES}, got {postprocess!r}"
        )
    start, _ = ola_sample_range(plan.keep_start, plan.keep_stop, cfg.frame_length, cfg.frame_step)
    blocks = overlap_add_last(spectra, cfg.frame_length, cfg.frame_step)  # (N, C, S or S - 1)
    if blocks.shape[-1] == len(cfg.stems):
        return start, blocks
    gain = overlap_add_gain(hi - lo, cfg.frame_length, cfg.frame_step)  # (N,)
    offset = lo * cfg.frame_step
    out = np.empty(blocks.shape[:-1] + (len(cfg.stems),), np.float32)
    out[..., :-1] = blocks
    np.multiply(samples[offset : offset + len(gain)], gain[:, None], out=out[..., -1])
    out[..., -1] -= blocks.sum(axis=-1)
    return start, out


def slice_with_silence(waveform: np.ndarray, start: int, stop: int) -> np.ndarray:
    """waveform[start:stop] (samples, C) with zeros where the range leaves [0, len(waveform))."""
    out = np.zeros((stop - start,) + waveform.shape[1:], dtype=np.float32)
    lo, hi = max(start, 0), min(stop, waveform.shape[0])
    if hi > lo:
        out[lo - start : hi - start] = waveform[lo:hi]
    return out


def iter_segments(
    num_samples: int,
    cfg: ModelConfig,
    segmentation: str = "overlap",
    context: int = DEFAULT_CONTEXT,
) -> Iterator[tuple[SegmentPlan, tuple[int, int]]]:
    """Each segment of a track of ``num_samples`` samples with the sample range it needs."""
    n_frames = frame_count(num_samples, cfg.frame_length, cfg.frame_step)
    for plan in plan_segments(n_frames, cfg.T, segmentation, context):
        yield plan, segment_sample_range(plan, cfg.T, cfg.frame_length, cfg.frame_step)


def separate_waveform(
    waveform: np.ndarray,
    predict: Predict,
    cfg: ModelConfig,
    segmentation: str = "overlap",
    postprocess: str = "ratio",
    batch_size: int = 4,
    context: int = DEFAULT_CONTEXT,
    residual: str = "none",
    fused: Callable | None = None,
) -> np.ndarray:
    """Separates an in-memory track.

    Args:
      waveform: (N, C) float32 at cfg.sample_rate, C == cfg.channels.
      predict: (B, T, F, C) float32 magnitudes -> (B, T, F, C, S) float32 estimates.
      fused: a ``model.fused.fused_separator`` (ratio masks): the whole spectral path of each
        batch in TensorFlow instead of ``predict`` with numpy around it.
    Returns:
      (N, C, S) float32 stems.
    """
    num_samples = waveform.shape[0]
    stitcher = StreamingOverlapAdd(num_samples)
    pieces = []
    segments = list(iter_segments(num_samples, cfg, segmentation, context))
    # batches of up to batch_size segments of one length (only a short last segment differs)
    edges = [
        i
        for i in range(len(segments) + 1)
        if i % batch_size == 0
        or i == len(segments)
        or segments[i][0].length(cfg.T) != segments[i - 1][0].length(cfg.T)
    ]
    for first, stop in zip(edges, edges[1:]):
        batch = segments[first:stop]
        samples = [slice_with_silence(waveform, *span) for _, span in batch]
        if fused is not None:
            if postprocess != "ratio":
                raise ValueError("the fused spectral path takes ratio masks only")
            for block in fused(np.stack(samples), [plan for plan, _ in batch]):
                pieces.append(stitcher.push(*block))
            continue
        spectra = [segment_spectrogram(waves, cfg) for waves in samples]
        estimates = np.asarray(
            predict(np.stack([magnitude for _, magnitude in spectra])), dtype=np.float32
        )
        for (plan, _), waves, (mix_stft, _), estimate in zip(batch, samples, spectra, estimates):
            block = reconstruct_segment(mix_stft, estimate, plan, cfg, postprocess, residual, waves)
            pieces.append(stitcher.push(*block))
    pieces.append(stitcher.finish())
    return (
        np.concatenate([p for p in pieces if p.size], axis=0)
        if num_samples
        else np.zeros((0,) + waveform.shape[1:] + (len(cfg.stems),), np.float32)
    )
