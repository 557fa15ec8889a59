"""Results sinks: SQL upserts (SQLite here; the same code path serves PostgreSQL) and the
BigQuery schema/row conversion (BigQuery itself needs Google Cloud and is not run)."""

import sqlite3

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from stembeam.transforms.records import Track, result_row
from stembeam.transforms.results import CommitRows
from stembeam.transforms.results_schema import RESULT_COLUMNS


def row(track_id, status, run_id="r", **columns):
    return result_row(Track(track_id, f"/in/{track_id}.wav"), run_id, "m", "sha", status, **columns)


def write(url, rows, table="results"):
    with BeamTestPipeline(runner="FnApiRunner") as p:
        _ = (
            p
            | beam.Create(rows)
            | beam.Map(lambda r: (None, r))
            | CommitRows(url, table=table, max_rows=2)
        )


def test_sql_upsert_is_idempotent_and_keeps_ok_over_skipped(tmp_path):
    db = tmp_path / "r.sqlite"
    url = f"sqlite:///{db}"
    write(
        url,
        [
            row("a", "ok", sdr_vocals=5.0),
            row("b", "failed", error="bad"),
            row("c", "ok", sdr_vocals=float("nan")),
        ],
    )
    write(url, [row("a", "skipped"), row("b", "ok"), row("d", "ok"), row("a", "ok", run_id="r2")])
    got = sorted(
        sqlite3.connect(db).execute("SELECT run_id, track_id, status, sdr_vocals FROM results")
    )
    assert got == [
        ("r", "a", "ok", 5.0),
        ("r", "b", "ok", None),
        ("r", "c", "ok", None),
        ("r", "d", "ok", None),
        ("r2", "a", "ok", None),
    ]
    columns = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(results)")]
    assert columns == [name for name, _, _ in RESULT_COLUMNS]


def test_runs_table(tmp_path):
    db = tmp_path / "r.sqlite"
    run = {"run_id": "r", "tracks_ok": 3, "started_at": "2026-01-01T00:00:00+00:00", "wall_s": 2.5}
    write(f"sqlite:///{db}", [run], table="runs")
    write(f"sqlite:///{db}", [dict(run, tracks_ok=4)], table="runs")
    assert list(sqlite3.connect(db).execute("SELECT run_id, tracks_ok, wall_s FROM runs")) == [
        ("r", 4, 2.5)
    ]
