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
# distributions, one value per worker process: its model load (TensorFlow import, model build,
# the warm-up call when it ran) and the Unix time its first batch went into the U-Net
MODEL_LOAD_MS = "model_load_ms"
FIRST_BATCH_UNIX_MS = "first_batch_unix_ms"


def count(name: str, n: int = 1) -> None:
    """Adds ``n`` to counter ``name`` of the job's namespace."""
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, name).inc(n)


def record(name: str, value: int) -> None:
    """Adds ``value`` to distribution ``name`` of the job's namespace."""
    beam.metrics.Metrics.distribution(METRICS_NAMESPACE, name).update(value)
