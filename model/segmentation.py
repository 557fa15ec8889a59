"""Cutting a track's STFT frames into U-Net segments, and stitching the results back.

All indices are absolute: frames index the track's Spleeter STFT (see ``model.spectral``), samples
index the track's waveform. Two modes:

- ``'spleeter'``: consecutive, non-overlapping segments of T frames, zero-padded at the end; every
  frame of a segment is kept. Bit-for-bit Spleeter's cut (and its clicks at segment boundaries).
- ``'overlap'``: segments of T frames that overlap by ``2 * context`` frames; each keeps only its
  central frames, so every kept frame sees at least ``context`` frames of real neighbours on each
  side. The first segment starts at the track's first frame (keeping [0, T - context)) and the last
  one ends at the track's last frame when the track is longer than T, so no segment is fed more
  silence than the track itself has. The last (or only) segment is cut to what it needs: its
  kept frames, ``context`` frames before them and ``SILENCE_FRAMES`` of silence after them,
  rounded up to a multiple of ``SEGMENT_QUANTUM`` frames, when that is fewer than T: a 3 s track
  costs 384 frames of U-Net work, not 512, with the same result.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stembeam.model.config import FRAME_LENGTH, FRAME_STEP

SEGMENTATION_MODES = ("overlap", "spleeter")
SEGMENT_QUANTUM = 64  # U-Net input lengths are multiples of 2**6 frames
# Silence after a short last segment's kept frames, frames. The U-Net's receptive field reaches
# about 250 frames: with the 2stems weights, kept frames followed by 220 or more frames of
# silence are bit-identical to those of a whole T = 512 segment (186: 2e-5 relative, 122: 2e-2).
SILENCE_FRAMES = 224


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """One U-Net segment of a track.

    Attributes:
      index: position of the segment in the track, 0-based.
      frame_start: first frame fed to the U-Net; frames [frame_start, frame_start + T) form the
        input
        (frames outside the track are silence).
      keep_start, keep_stop: frames [keep_start, keep_stop) of this segment's output are kept.
      frames: frames fed to the U-Net when fewer than the model's T (a short last segment);
        None: T.
    """

    index: int
    frame_start: int
    keep_start: int
    keep_stop: int
    frames: int | None = None

    def length(self, T: int) -> int:
        """Frames fed to the U-Net for a model of segment length T."""
        return T if self.frames is None else self.frames


def default_context(T: int) -> int:
    """Frames discarded at each side of an overlap segment by default: T / 16 (32 for T = 512,
    0.74 s at 44.1 kHz), so the U-Net sees 1.12-1.14x the frames of Spleeter's cut instead of
    1.31-1.33x with T / 8. On 560 s of rendered songs with true stems (2stems weights) T / 16 and
    T / 8 give the same median SDR within 0.02 dB and within 0.1 dB around Spleeter's cut points;
    T / 32 is worse (``bench/context_sdr.py``, BENCHMARKS.md section 3)."""
    return T // 16


def plan_segments(
    n_frames: int, T: int, mode: str = "overlap", context: int | None = None
) -> list[SegmentPlan]:
    """Segments covering frames [0, n_frames) exactly once with their kept ranges.

    Args:
      n_frames: frames in the track (``model.spectral.frame_count``), >= 1.
      T: frames per segment.
      mode: ``'overlap'`` or ``'spleeter'``.
      context: frames discarded at each side of an overlap segment, 0 <= context < T / 2;
        None means ``default_context(T)``.
    """
    if context is None:
        context = default_context(T)
    if n_frames < 1:
        raise ValueError("a track has at least one frame")
    if mode == "spleeter":
        return [
            SegmentPlan(i, start, start, min(start + T, n_frames))
            for i, start in enumerate(range(0, n_frames, T))
        ]
    if mode != "overlap":
        raise ValueError(f"segmentation must be one of {SEGMENTATION_MODES}, got {mode!r}")
    if not 0 <= context < T / 2:
        raise ValueError(f"context must be in [0, T/2), got {context} for T={T}")
    core = T - 2 * context
    plans = [SegmentPlan(0, 0, 0, min(T - context, n_frames))]
    last_start = max(0, n_frames - T)
    while plans[-1].keep_stop < n_frames:
        keep = plans[-1].keep_stop
        plans.append(
            SegmentPlan(
                len(plans), min(keep - context, last_start), keep, min(keep + core, n_frames)
            )
        )
    last = plans[-1]
    start = 0 if last.index == 0 else last.keep_start - context
    frames = -(-(n_frames - start + SILENCE_FRAMES) // SEGMENT_QUANTUM) * SEGMENT_QUANTUM
    if frames < T:
        plans[-1] = SegmentPlan(last.index, start, last.keep_start, last.keep_stop, frames)
    return plans


def segment_sample_range(
    plan: SegmentPlan, T: int, frame_length: int = FRAME_LENGTH, frame_step: int = FRAME_STEP
) -> tuple[int, int]:
    """Track samples [start, stop) whose 'valid' STFT gives the segment's ``plan.length(T)`` frames.

    ``stop - start == (plan.length(T) - 1) * frame_step + frame_length``. Samples outside the
    track are zeros.
    """
    start = plan.frame_start * frame_step - frame_length
    return start, start + (plan.length(T) - 1) * frame_step + frame_length


def ola_sample_range(
    keep_start: int, keep_stop: int, frame_length: int = FRAME_LENGTH, frame_step: int = FRAME_STEP
) -> tuple[int, int]:
    """Track samples [start, stop) touched by the overlap-add of frames [keep_start, keep_stop)."""
    return keep_start * frame_step - frame_length, (keep_stop - 1) * frame_step


class StreamingOverlapAdd:
    """Sums overlap-added blocks pushed in track order and releases finished samples.

    A block ``(start, samples)`` covers track samples [start, start + len(samples)); blocks must be
    pushed in increasing ``start`` with no gaps, and may overlap the previous block's tail.
    Output is
    cropped to [0, num_samples); ``num_samples`` may stay None (no end crop) until it is known,
    before the last push. Memory holds one block tail, not the track.
    """

    def __init__(self, num_samples: int | None):
        self.num_samples = num_samples
        self._position = 0  # next track sample to release
        self._tail: np.ndarray | None = None  # pending samples from self._position on

    def push(self, start: int, block: np.ndarray) -> np.ndarray:
        """Adds ``block`` (n, ...) at track sample ``start``; returns the samples final before
        ``start``.

        ``block`` is taken over: the pending tail is added into its head in place.
        """
        if self._tail is None:
            self._tail = np.zeros((0,) + block.shape[1:], dtype=block.dtype)
            self._position = start
        pending_stop = self._position + self._tail.shape[0]
        if start < self._position or start > pending_stop:
            raise ValueError(
                f"block at {start} does not continue the stream at "
                f"[{self._position}, {pending_stop})"
            )
        cut = start - self._position
        if pending_stop <= start + block.shape[0]:
            block[: pending_stop - start] += self._tail[cut:]
            pending = block
        else:  # the pending tail reaches past the block's end
            pending = self._tail[cut:].copy()
            pending[: block.shape[0]] += block
        ready, released_from = self._tail[:cut], self._position
        self._tail, self._position = pending, start
        return self._crop(released_from, ready)

    def finish(self) -> np.ndarray:
        """Releases everything still pending."""
        if self._tail is None:
            return np.zeros((0,))
        ready, released_from = self._tail, self._position
        self._position += ready.shape[0]
        self._tail = ready[:0]
        return self._crop(released_from, ready)

    def _crop(self, released_from: int, samples: np.ndarray) -> np.ndarray:
        lo = max(0, -released_from)
        hi = samples.shape[0]
        if self.num_samples is not None:
            hi = max(lo, min(hi, self.num_samples - released_from))
        return samples[lo:hi]
