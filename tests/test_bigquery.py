"""BigQuery schema and row conversion of the results tables.

BigQuery itself cannot run here (it needs a Google Cloud project, a dataset and network access to
bigquery.googleapis.com), so these tests check what the sink is given: the TableSchema against the
schema's declared columns, and rows against JSON's and BigQuery's rules (no NaN, UTC timestamp
strings, only schema columns).
"""

from __future__ import annotations

import datetime
import json
import math

import numpy as np
from apache_beam.io.gcp import bigquery_tools

from stembeam.transforms.bigquery import bigquery_row, table_schema
from stembeam.transforms.results_schema import RESULT_COLUMNS, RUN_COLUMNS


def test_schema_has_every_column_with_its_bigquery_type():
    for columns in (RESULT_COLUMNS, RUN_COLUMNS):
        schema = table_schema(columns)
        fields = [(f.name, f.type, f.mode, f.description) for f in schema.fields]
        mapping = {
            "string": "STRING",
            "float": "FLOAT64",
            "integer": "INT64",
            "timestamp": "TIMESTAMP",
        }
        assert fields == [(n, mapping[k], "NULLABLE", d) for n, k, d in columns]
        # Beam's own JSON round trip of the schema (what WriteToBigQuery sends) keeps it intact.
        as_json = json.dumps(bigquery_tools.table_schema_to_dict(schema))
        assert bigquery_tools.parse_table_schema_from_json(as_json) == schema


def test_rows_are_json_safe_and_typed():
    row = {
        "run_id": "run-1",
        "track_id": "a/b",
        "status": "ok",
        "error": None,
        "duration_s": np.float32(1.5),
        "wall_s": float("nan"),
        "realtime_factor": float("inf"),
        "sample_rate": np.int64(48000),
        "channels": 2,
        "sdr_vocals": np.float64(-3.25),
        "finished_at": "2026-11-29T03:04:05.123456+01:00",
        "not_a_column": "dropped",
    }
    out = bigquery_row(row, RESULT_COLUMNS)
    assert list(out) == [name for name, _, _ in RESULT_COLUMNS]
    text = json.dumps(out, allow_nan=False)  # raises on NaN/inf or numpy types
    back = json.loads(text)
    assert back["duration_s"] == 1.5 and back["sdr_vocals"] == -3.25
    assert back["wall_s"] is None and back["realtime_factor"] is None and back["error"] is None
    assert back["sample_rate"] == 48000 and isinstance(back["sample_rate"], int)
    assert back["finished_at"] == "2026-11-29 02:04:05.123456 UTC"
    assert all(back[n] is None for n, _, _ in RESULT_COLUMNS if n not in row and n != "finished_at")


def test_timestamps_from_datetimes_naive_means_utc():
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    run = {
        "run_id": "r",
        "started_at": moment.replace(tzinfo=None),
        "finished_at": moment.astimezone(datetime.timezone(datetime.timedelta(hours=-5))),
        "audio_s": math.nan,
    }
    out = bigquery_row(run, RUN_COLUMNS)
    assert out["started_at"] == out["finished_at"] == "2026-01-02 03:04:05.000000 UTC"
    assert out["audio_s"] is None


def test_bigquery_sink_creates_the_table_and_streams_rows(monkeypatch):
    """BigQuery cannot run here: google-cloud-bigquery's Client is replaced by a stand-in that
    records the calls the sink makes (the only mock in the suite, for that reason)."""
    from google.cloud import bigquery

    from stembeam.transforms.results import open_sink

    calls = []

    class RecordingClient:
        def __init__(self, project):
            calls.append(("client", project))

        def create_table(self, table, exists_ok):
            calls.append(
                ("create", str(table.reference), [f.name for f in table.schema], exists_ok)
            )

        def insert_rows_json(self, table, rows, row_ids):
            calls.append(("insert", table, rows, row_ids))
            return []

    monkeypatch.setattr(bigquery, "Client", RecordingClient)
    sink = open_sink("bigquery:proj.dataset.results", "runs")
    sink.open()
    sink.write([{"run_id": "r", "audio_s": float("nan")}])
    assert calls[0] == ("client", "proj")
    assert calls[1] == ("create", "proj.dataset.results_runs", [n for n, _, _ in RUN_COLUMNS], True)
    _, table, rows, ids = calls[2]
    assert table == "proj.dataset.results_runs" and ids == ["r"]
    assert rows == [bigquery_row({"run_id": "r", "audio_s": float("nan")}, RUN_COLUMNS)]
    assert rows[0]["audio_s"] is None and json.dumps(rows, allow_nan=False)
