"""The job's Beam metrics: one namespace, every counter name declared once.

Workers update them with ``count``; the launcher reads them back after the run
(``pipeline.separate.summarize``).
"""

from __future__ import annotations

import apache_beam as beam

METRICS_NAMESPACE = "stembeam"

TRACKS_OK = "tracks_ok"
TRACKS_SKIPPED = "tracks_skipped"
TRACKS_FAILED = "tracks_failed"
TRACKS_EVALUATED = "tracks_evaluated"
AUDIO_MS = "audio_ms"  # milliseconds of input audio in tracks separated ok
SEGMENTS = "segments"
DECODE_FAILURES = "decode_failures"
INFERENCE_FAILURES = "inference_failures"
ROWS_COMMITTED = "rows_committed"


def count(name: str, n: int = 1) -> None:
    """Adds ``n`` to counter ``name`` of the job's namespace."""
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, name).inc(n)
