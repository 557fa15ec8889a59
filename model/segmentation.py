"""Cutting a track's STFT frames into U-Net segments, and stitching the results back.

All indices are absolute: frames index the track's Spleeter STFT (see ``model.spectral``), samples
index the track's waveform. Both modes keep Spleeter's grid: segment ``i`` keeps frames
[i T, (i + 1) T) (the last one up to the track's end), every frame kept exactly once.

- ``'spleeter'``: each segment is fed exactly its T kept frames, zero-padded at the end of the
  track. Bit-for-bit Spleeter's cut (and its clicks at segment boundaries, where the U-Net sees
  its own zero padding instead of the music).
- ``'overlap'``: each segment after the first is also fed the ``context`` frames before its kept
  ones (T + context frames; the first is the cut's, fed from the track's first frame). Every
  frame then sees at least the neighbours it sees in the cut, and ``context`` frames of real
  music more at the cut's seams. ``context`` is a multiple of ``SEGMENT_QUANTUM``, so the U-Net's
  stride-64 grid falls where it falls in the cut. The last (or only) segment is cut to what it
  needs: its kept frames, the ``context`` before them and ``SILENCE_FRAMES`` of silence after
  them, rounded up to a multiple of ``SEGMENT_QUANTUM`` frames, when that is fewer: a 3 s track
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
# Frames fed before each overlap segment's kept ones: one stride quantum (1.5 s at 44.1 kHz), 1.125x
# the U-Net work of the cut for T = 512. On 51 rendered songs (2stems weights) the median SDR of
# every stem equals the cut's and no song loses more than 0.3 dB; the former centred overlap
# (32 frames each side, 1.14x) lost 0.16 dB median on accompaniment, the context after the kept
# frames (alone or with the one before) lost up to 1.9 / 0.6 dB on some songs
# (``bench/segmentation_sdr.py``, BENCHMARKS.md "Segmentation quality").
DEFAULT_CONTEXT = SEGMENT_QUANTUM


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """One U-Net segment of a track.

    Attributes:
      index: position of the segment in the track, 0-based.
      frame_start: first frame fed to the U-Net; frames [frame_start, frame_start + length) form
        the input (frames outside the track are silence).
      keep_start, keep_stop: frames [keep_start, keep_stop) of this segment's output are kept.
      frames: frames fed to the U-Net when not the model's T (an overlap segment with its
        context, or a short last segment); None: T.
    """

    index: int
    frame_start: int
    keep_start: int
    keep_stop: int
    frames: int | None = None

    def length(self, T: int) -> int:
        """Frames fed to the U-Net for a model of segment length T."""
        return T if self.frames is None else self.frames


def plan_segments(
    n_frames: int, T: int, mode: str = "overlap", context: int = DEFAULT_CONTEXT
) -> list[SegmentPlan]:
    """Segments covering frames [0, n_frames) exactly once with their kept ranges.

    Args:
      n_frames: frames in the track (``model.spectral.frame_count``), >= 1.
      T: frames kept per segment, a multiple of ``SEGMENT_QUANTUM``.
      mode: ``'overlap'`` or ``'spleeter'``.
      context: frames fed before an overlap segment's kept ones, a multiple of
        ``SEGMENT_QUANTUM`` in [0, T].
    """
    if n_frames < 1:
        raise ValueError("a track has at least one frame")
    if mode == "spleeter":
        return [
            SegmentPlan(i, start, start, min(start + T, n_frames))
            for i, start in enumerate(range(0, n_frames, T))
        ]
    if mode != "overlap":
        raise ValueError(f"segmentation must be one of {SEGMENTATION_MODES}, got {mode!r}")
    if not 0 <= context <= T or context % SEGMENT_QUANTUM:
        raise ValueError(
            f"context must be a multiple of {SEGMENT_QUANTUM} in [0, T], got {context} for T={T}"
        )
    plans = []
    for index, keep_start in enumerate(range(0, n_frames, T)):
        keep_stop = min(keep_start + T, n_frames)
        frame_start = max(0, keep_start - context)
        frames = keep_start + T - frame_start
        if keep_stop == n_frames:  # the last segment: its kept frames, then enough silence
            needed = keep_stop - frame_start + SILENCE_FRAMES
            frames = min(frames, -(-needed // SEGMENT_QUANTUM) * SEGMENT_QUANTUM)
        plans.append(
            SegmentPlan(index, frame_start, keep_start, keep_stop, None if frames == T else frames)
        )
    return plans


def steady_frames(T: int, mode: str = "overlap", context: int = DEFAULT_CONTEXT) -> int:
    """Frames fed to the U-Net for most segments of a long track: T + context (overlap), T."""
    return T + context if mode == "overlap" else T


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
