"""The records that flow between stages.

Only ``Track`` and result rows (plain dicts, see ``results_schema``) ever cross a shuffle;
``Segment`` carries audio and stays inside the one fused stage that takes a track from decoding
to its committed result row.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pickle
from typing import Any

import apache_beam as beam
import numpy as np

from stembeam.model.segmentation import SegmentPlan
from stembeam.transforms.results_schema import RESULT_COLUMNS, column_names


@dataclasses.dataclass(frozen=True)
class Track:
    """One catalog entry.

    Attributes:
      track_id: safe relative id (``a/b/c``); stems go to ``OUT/<track_id>/``.
      uri: the audio to separate.
      references: ``(stem, uri)`` pairs of reference stems, for evaluation.
      fingerprint: the source file's ``<uri>|<size>:<mtime>`` when known (set by SkipDone); a done
        track whose source changed is separated again.
    """

    track_id: str
    uri: str
    references: tuple[tuple[str, str], ...] = ()
    fingerprint: str = ""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What decoding learnt about an input.

    Attributes:
      sample_rate: input rate, Hz.
      channels: input channel count.
      codec: container/codec name as decoded (e.g. ``'WAV/PCM_16'``, ``'aac'``).
      num_samples: input length in samples at ``sample_rate``; None until the last segment
        when the container does not state it (it is counted while decoding).
      model_samples: length after resampling to the model rate, samples; None likewise.
    """

    sample_rate: int
    channels: int
    codec: str
    num_samples: int | None
    model_samples: int | None

    @property
    def duration_s(self) -> float | None:
        return None if self.num_samples is None else self.num_samples / self.sample_rate


@dataclasses.dataclass(frozen=True)
class Segment:
    """One segment of one track on its way through the model (never shuffled). Immutable:
    each stage returns a ``dataclasses.replace`` copy sharing the arrays it does not change.

    Attributes:
      track: the track.
      plan: where the segment sits in the track; None for a track that failed before any segment.
      is_last: the track's last segment (decoding sets it once the stream ended).
      info: what decoding learnt about the track; exact lengths at the latest with the last
        segment.
      started_at: UNIX time the track's decode started, s.
      samples: ``(L_s, 2)`` float32 model-rate audio the segment's STFT needs (kept until the
        writer: with a residual the last stem is the mixture minus the others).
      mix_stft: ``(n, n_bins, 2)`` complex64 mixture STFT (host path); n = T, or fewer
        frames (a multiple of 64) for a short last segment (``SegmentPlan.frames``).
      magnitude: ``(n, F, 2)`` float32 model input (host path, inside RunInference).
      estimates: ``(n, F, 2, S)`` float32 model output (after RunInference, host path).
      stem_block: ``(start, (N, 2, S) float32)``: the segment's kept frames' stems overlap-added,
        starting at track sample ``start`` (after RunInference, graph path; see
        ``model.reconstruct.reconstruct_segment``).
      error: set when a stage failed for this segment's track; the track ends there.
    """

    track: Track
    plan: SegmentPlan | None
    is_last: bool
    info: AudioInfo | None
    started_at: float
    samples: np.ndarray | None = None
    mix_stft: np.ndarray | None = None
    magnitude: np.ndarray | None = None
    estimates: np.ndarray | None = None
    stem_block: tuple[int, np.ndarray] | None = None
    error: str | None = None

    @property
    def index(self) -> int:
        return self.plan.index if self.plan is not None else -1

    @property
    def nbytes(self) -> int:
        """Bytes held in the segment's arrays."""
        arrays = (self.samples, self.mix_stft, self.magnitude, self.estimates)
        block = self.stem_block[1].nbytes if self.stem_block is not None else 0
        return block + sum(a.nbytes for a in arrays if a is not None)


class SegmentCoder(beam.coders.Coder):
    """Pickles ``Segment`` records; sizes them from their arrays.

    Beam's SDK harness samples the size of elements for its byte counters by encoding them
    with the PCollection's coder: with the default coder that pickled ~13 MB of audio per sampled
    segment (1.7 GB for 10 minutes of music). ``estimate_size`` reads ``Segment.nbytes`` instead.
    """

    def encode(self, value: Segment) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Segment:
        return pickle.loads(encoded)

    def estimate_size(self, value: Segment) -> int:
        return value.nbytes + SEGMENT_OVERHEAD_BYTES

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return Segment


SEGMENT_OVERHEAD_BYTES = 1024  # the track, plan and info fields, pickled: well under 1 KiB
beam.coders.registry.register_coder(Segment, SegmentCoder)


RESULT_NAMES = frozenset(column_names(RESULT_COLUMNS))


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def result_row(
    track: Track,
    run_id: str,
    model: str,
    model_sha256: str,
    status: str,
    error: str = "",
    info: AudioInfo | None = None,
    stems: dict[str, str] | None = None,
    wall_s: float | None = None,
    **columns: Any,
) -> dict[str, Any]:
    """A row of the ``results`` table (column -> value); missing columns are None.

    ``columns`` sets any other column (``sdr_vocals``...). ``finished_at`` is ISO-8601 UTC.
    """
    row: dict[str, Any] = dict.fromkeys(RESULT_NAMES)
    row.update(
        run_id=run_id,
        track_id=track.track_id,
        source_uri=track.uri,
        status=status,
        error=error,
        model=model,
        model_sha256=model_sha256,
        stems=json.dumps(stems or {}),
        wall_s=wall_s,
        finished_at=utc_now().isoformat(),
    )
    if info is not None:
        row.update(
            duration_s=info.duration_s,
            sample_rate=info.sample_rate,
            channels=info.channels,
            codec=info.codec,
        )
        if wall_s and status == "ok":
            row["realtime_factor"] = info.duration_s / wall_s
    unknown = set(columns) - RESULT_NAMES
    if unknown:
        raise ValueError(f"not result columns: {sorted(unknown)}")
    row.update(columns)
    return row
