"""SkipDone: drop the tracks whose stems are already in the output, made the way this run would.

A track is skipped only when its done-marker (``output_state``) vouches for this run's
signature (model weights and config, format, post-processing...), for the current source file
(URI, size and modification time) and its stems still exist. A changed source is separated
again. A track whose stems were made with other settings is not overwritten silently: it gets a
``failed`` row naming what changed, unless ``--force`` is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from stembeam.transforms import metrics, storage
from stembeam.transforms.output_state import (
    MARKER_ROW_FIELDS,
    DoneMarker,
    describe_change,
    done_marker,
    fingerprint,
)
from stembeam.transforms.records import Track, result_row

ROWS_TAG = "rows"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The run as the skip check needs it.

    Attributes:
      output: output root.
      run_id: this run.
      model: model spec as given; model_sha256: its weights' sha256.
      signature: ``output_state.signature(settings)``; settings: what it hashes.
      force: separate every track again.
    """

    output: str
    run_id: str
    model: str
    model_sha256: str
    signature: str
    settings: dict[str, Any]
    force: bool = False


class _SkipDoneFn(beam.DoFn):
    def __init__(self, run: RunSettings):
        self._run = run

    def process(self, track: Track) -> Iterator[Any]:
        run = self._run
        track = dataclasses.replace(track, fingerprint=fingerprint(track.uri))
        marker = None if run.force else DoneMarker.read(done_marker(run.output, track.track_id))
        if marker is None:
            yield track
            return
        if marker.signature != run.signature:
            metrics.count(metrics.TRACKS_FAILED)
            yield self._row(
                track,
                "failed",
                error=f"{storage.join(run.output, track.track_id)} holds stems made "
                "with other settings "
                f"({describe_change(marker.settings, run.settings)}, run "
                f"{marker.run_id}); pass --force to replace them or choose another "
                "--output",
            )
            return
        if (track.fingerprint and marker.fingerprint != track.fingerprint) or not all(
            storage.exists(uri) for uri in marker.stems.values()
        ):
            yield track  # the source changed or stems were removed: separate again
            return
        metrics.count(metrics.TRACKS_SKIPPED)
        yield self._row(
            track,
            "skipped",
            error=f"already separated by run {marker.run_id}; use --force to redo",
            stems=marker.stems,
            **{k: marker.row.get(k) for k in MARKER_ROW_FIELDS},
        )

    def _row(self, track: Track, status: str, **fields: Any) -> beam.pvalue.TaggedOutput:
        run = self._run
        row = result_row(track, run.run_id, run.model, run.model_sha256, status, **fields)
        return beam.pvalue.TaggedOutput(ROWS_TAG, (track, row))


class SkipDone(beam.PTransform):
    """``Track`` -> main output ``todo``: tracks to separate (with their source fingerprint);
    ``rows``: ``(Track, row)`` for tracks skipped (or refused: stems of other settings)."""

    def __init__(self, run: RunSettings):
        super().__init__()
        self._run = run

    def expand(self, tracks):
        outputs = tracks | beam.ParDo(_SkipDoneFn(self._run)).with_outputs(ROWS_TAG, main="todo")
        return {"todo": outputs.todo, ROWS_TAG: outputs[ROWS_TAG]}
