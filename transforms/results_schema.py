"""The results table's schema: one row per input track per run, plus one row per run.

Plain Python (no SQLAlchemy, no Beam) so every sink (SQL, BigQuery) and the report share it.
Types are the portable names ``'string'``, ``'float'``, ``'integer'``, ``'timestamp'``.
"""

from __future__ import annotations

import re

from stembeam.model.config import ALL_STEMS

_CREDENTIALS = re.compile(r"^(?P<user>[^:/?#]+://[^/:@?#]*:).*@(?P<rest>[^@]*)$")

METRICS = ("sdr", "sir", "sar", "isr")

RESULTS_TABLE = "results"
RUNS_TABLE = "runs"

# (name, type, description)
RESULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("run_id", "string", "identifier of the run that wrote the row"),
    ("track_id", "string", "track identifier, unique within the catalog"),
    ("source_uri", "string", "where the input audio was read from"),
    ("status", "string", "ok, skipped or failed"),
    ("error", "string", "why the track failed or was skipped; empty when ok"),
    ("duration_s", "float", "input duration, seconds"),
    ("sample_rate", "integer", "input sample rate, Hz"),
    ("channels", "integer", "input channel count"),
    ("codec", "string", "input container/codec as decoded"),
    ("model", "string", "model id, e.g. spleeter:4stems"),
    ("model_sha256", "string", "sha256 of the model weights"),
    ("stems", "string", "JSON object: stem name -> written URI"),
    ("wall_s", "float", "wall seconds spent on the track (decode to last stem written)"),
    ("realtime_factor", "float", "audio seconds per wall second for the track"),
    ("finished_at", "timestamp", "UTC time the row was produced"),
) + tuple(
    (f"{metric}_{stem}", "float", f"museval BSSEval v4 {metric.upper()} median over 1 s frames, dB")
    for stem in ALL_STEMS
    for metric in METRICS
)

RUN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("run_id", "string", "identifier of the run"),
    ("started_at", "timestamp", "UTC start time"),
    ("finished_at", "timestamp", "UTC end time"),
    ("input", "string", "catalog the run read (glob, manifest or folder)"),
    ("output", "string", "output root"),
    ("model", "string", "model id"),
    ("model_sha256", "string", "sha256 of the model weights"),
    ("options", "string", "JSON of the separation options (segmentation, postprocess, format...)"),
    ("tracks_ok", "integer", "tracks separated"),
    ("tracks_skipped", "integer", "tracks skipped (already done)"),
    ("tracks_failed", "integer", "tracks failed"),
    ("audio_s", "float", "seconds of audio separated in this run"),
    ("wall_s", "float", "wall seconds of the whole run"),
    ("realtime_factor", "float", "audio_s / wall_s"),
)

RESULT_KEY = ("run_id", "track_id")
RUN_KEY = ("run_id",)


def column_names(columns: tuple[tuple[str, str, str], ...]) -> list[str]:
    return [name for name, _, _ in columns]


def redact_url(url: str) -> str:
    """A results ``url`` with the password (everything between ``user:`` and the last ``@``) as
    ``***``: the only form in which a results URL is ever shown."""
    match = _CREDENTIALS.match(url)
    return f"{match['user']}***@{match['rest']}" if match else url
