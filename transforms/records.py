"""The records that flow between stages.

Only ``Track``, ``DecodeSummary``, ``ChunkRef`` and result rows (plain dicts, see
``results_schema``) ever cross a shuffle; ``Segment`` carries audio and stays inside one fused
stage (decode -> spectrogram -> inference -> reconstruct -> chunk write).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any, Optional

import numpy as np

from transforms.results_schema import RESULT_COLUMNS, column_names


@dataclasses.dataclass(frozen=True)
class Track:
    """One catalog entry.

    Attributes:
      track_id: safe relative id (``a/b/c``); stems go to ``OUT/<track_id>/``.
      uri: the audio to separate.
      references: ``(stem, uri)`` pairs of reference stems, for evaluation.
    """

    track_id: str
    uri: str
    references: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What decoding learnt about an input.

    Attributes:
      sample_rate: input rate, Hz.
      channels: input channel count.
      codec: container/codec name as decoded (e.g. ``'WAV/PCM_16'``, ``'aac'``).
      num_samples: input length in samples at ``sample_rate``.
      model_samples: length after resampling to the model rate, samples.
    """

    sample_rate: int
    channels: int
    codec: str
    num_samples: int
    model_samples: int

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate


@dataclasses.dataclass
class Segment:
    """One segment of one track on its way through the model (never shuffled).

    Attributes:
      track: the track.
      plan: the ``model.segmentation.SegmentPlan`` of this segment.
      started_at: UNIX time the track's decode started, s.
      samples: ``(L_s, 2)`` float32 model-rate audio the segment's STFT needs.
      mix_stft: ``(T, n_bins, 2)`` complex64 mixture STFT (after Spectrogram).
      magnitude: ``(T, F, 2)`` float32 model input (after Spectrogram).
      estimates: ``(T, F, 2, S)`` float32 model output (after RunInference).
      error: set when a stage failed for this segment; later stages pass it through.
    """

    track: Track
    plan: Any
    started_at: float
    samples: Optional[np.ndarray] = None
    mix_stft: Optional[np.ndarray] = None
    magnitude: Optional[np.ndarray] = None
    estimates: Optional[np.ndarray] = None
    error: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DecodeSummary:
    """How decoding a track ended: ``info`` and ``n_segments`` on success, else ``error``."""

    track: Track
    started_at: float
    info: Optional[AudioInfo] = None
    n_segments: int = 0
    error: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ChunkRef:
    """A segment's separated audio written to a temporary chunk file.

    Attributes:
      track_id: the track.
      index: segment index (chunks are overlap-added in index order).
      uri: the chunk file (``.npy``, ``(n, 2, S)`` float32), or ``''`` when ``error`` is set.
      start: model-rate sample of the track where the chunk starts (may be negative).
      error: why this segment could not be separated.
    """

    track_id: str
    index: int
    uri: str
    start: int
    error: Optional[str] = None


RESULT_NAMES = frozenset(column_names(RESULT_COLUMNS))


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def result_row(track: Track, run_id: str, model: str, model_sha256: str, status: str,
               error: str = "", info: Optional[AudioInfo] = None,
               stems: Optional[dict[str, str]] = None, wall_s: Optional[float] = None,
               **columns: Any) -> dict[str, Any]:
    """A row of the ``results`` table (column -> value); missing columns are None.

    ``columns`` sets any other column (``sdr_vocals``...). ``finished_at`` is ISO-8601 UTC.
    """
    row: dict[str, Any] = dict.fromkeys(RESULT_NAMES)
    row.update(
        run_id=run_id, track_id=track.track_id, source_uri=track.uri, status=status,
        error=error, model=model, model_sha256=model_sha256,
        stems=json.dumps(stems or {}), wall_s=wall_s,
        finished_at=utc_now().isoformat(),
    )
    if info is not None:
        row.update(duration_s=info.duration_s, sample_rate=info.sample_rate,
                   channels=info.channels, codec=info.codec)
        if wall_s and status == "ok":
            row["realtime_factor"] = info.duration_s / wall_s
    unknown = set(columns) - RESULT_NAMES
    if unknown:
        raise ValueError(f"not result columns: {sorted(unknown)}")
    row.update(columns)
    return row
