"""The SQL results sink on real servers: PostgreSQL (started by .ci/start-postgres.sh) and SQLite.

Rows are generated here and read back with plain SQLAlchemy selects; expectations are computed
from the generated values (NaN/inf -> NULL, timestamps as UTC instants), not from the sink.
"""

from __future__ import annotations

import datetime
import math
import multiprocessing
import random
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
import sqlalchemy as sa
from apache_beam.options.pipeline_options import PipelineOptions

from stembeam.transforms.results import CommitRows, create_engine, create_tables, sql_tables, upsert
from stembeam.transforms.results_schema import (
    RESULT_COLUMNS,
    RESULTS_TABLE,
    RUN_COLUMNS,
    RUNS_TABLE,
    column_names,
)

UTC = datetime.UTC
FLOAT_EDGES = (float("nan"), float("inf"), -float("inf"), -0.0, 1e-300, 123456.789)


def generated_rows(run_id: str, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` result rows with every column set: text with quotes and non-ASCII characters,
    floats including NaN/inf, integers, numpy scalars as stages produce them, ISO timestamps
    with a UTC offset of -1, 0 or +1 h."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        row: dict[str, Any] = {}
        for name, kind, _ in RESULT_COLUMNS:
            if kind == "string":
                row[name] = f'{name} ’quoted\' "x" {rng.random():.6f} é'
            elif kind == "float":
                row[name] = (
                    FLOAT_EDGES[i % len(FLOAT_EDGES)]
                    if name == "sdr_vocals"
                    else rng.uniform(-50, 50)
                )
            elif kind == "integer":
                row[name] = rng.randrange(1, 2**40)
            else:
                offset = datetime.timezone(datetime.timedelta(hours=(i % 3) - 1))
                moment = datetime.datetime(2026, 11, 29, 1, 2, 3, 456789, UTC) + datetime.timedelta(
                    seconds=rng.randrange(10**6)
                )
                row[name] = moment.astimezone(offset).isoformat()
        row.update(
            run_id=run_id,
            track_id=f"artist/album/track {i:03d}",
            status="ok",
            sdr_other=np.float32(row["sdr_other"]),
            sample_rate=np.int64(44100 + i),
        )
        row["error"] = None if i % 4 == 0 else row["error"]
        rows.append(row)
    return rows


def expected(row: dict[str, Any], columns=RESULT_COLUMNS) -> dict[str, Any]:
    """What a database should hand back for ``row``: NaN/inf as None, timestamps as naive UTC."""
    out = {}
    for name, kind, _ in columns:
        value = row.get(name)
        if isinstance(value, np.generic):
            value = value.item()
        if kind == "float" and value is not None and not math.isfinite(value):
            value = None
        if kind == "timestamp" and value is not None:
            value = datetime.datetime.fromisoformat(value).astimezone(UTC).replace(tzinfo=None)
        out[name] = value
    return out


def read_table(url: str, table: str, columns) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every row of ``table`` keyed by its primary key, timestamps as naive UTC."""
    engine = sa.create_engine(url)
    # the tables' types parse SQLite's text
    typed = dict(zip((RESULTS_TABLE, RUNS_TABLE), sql_tables(), strict=True))[table]
    with engine.connect() as connection:
        fetched = (
            connection.execute(sa.select(*(typed.c[name] for name in column_names(columns))))
            .mappings()
            .all()
        )
    engine.dispose()
    out = {}
    for row in fetched:
        row = dict(row)
        for name, kind, _ in columns:
            if kind == "timestamp" and row[name] is not None and row[name].tzinfo is not None:
                row[name] = row[name].astimezone(UTC).replace(tzinfo=None)
        key = (row["run_id"], row["track_id"]) if "track_id" in row else (row["run_id"],)
        assert key not in out, f"duplicate key {key}"
        out[key] = row
    return out


def run_write(url: str, rows: list[dict[str, Any]], table: str = RESULTS_TABLE) -> None:
    """CommitRows in a real pipeline on the FnApiRunner."""
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        _ = (
            pipeline
            | beam.Create(rows, reshuffle=False)
            | beam.Map(lambda r: (None, r))
            | CommitRows(url, table, max_rows=7)
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def results_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    return request.getfixturevalue("postgres_db")


def test_postgres_gets_the_same_rows_as_sqlite(postgres_db, tmp_path):
    rows = generated_rows("run-1", 30, seed=1)
    run_row = {name: None for name in column_names(RUN_COLUMNS)}
    run_row.update(
        run_id="run-1",
        started_at="2026-11-29T01:00:00+00:00",
        finished_at="2026-11-29T03:00:00.5+01:00",
        tracks_ok=30,
        audio_s=float("nan"),
    )
    sqlite_url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    for url in (sqlite_url, postgres_db):
        run_write(url, rows)
        run_write(url, [run_row], RUNS_TABLE)

    want = {(r["run_id"], r["track_id"]): expected(r) for r in rows}
    in_sqlite = read_table(sqlite_url, RESULTS_TABLE, RESULT_COLUMNS)
    in_postgres = read_table(postgres_db, RESULTS_TABLE, RESULT_COLUMNS)
    assert in_sqlite == want
    assert in_postgres == want
    want_run = {("run-1",): expected(run_row, RUN_COLUMNS)}
    assert read_table(sqlite_url, RUNS_TABLE, RUN_COLUMNS) == want_run
    assert read_table(postgres_db, RUNS_TABLE, RUN_COLUMNS) == want_run


def test_rerun_updates_rows_without_duplicating(results_url):
    first = generated_rows("run-1", 12, seed=2)
    first[3].update(status="failed", error="decode error")
    run_write(results_url, first)
    # The same run again (a resumed run): tracks done before come back as 'skipped' and must not
    # replace their 'ok' rows; the failed track now succeeds and replaces its row. A second run
    # id adds rows of its own.
    again = [dict(r, status="skipped", error="already done", wall_s=0.0) for r in first]
    again[3] = dict(first[3], status="ok", error=None, wall_s=99.0)
    other_run = generated_rows("run-2", 5, seed=3)
    run_write(results_url, again + other_run)

    want = {(r["run_id"], r["track_id"]): expected(r) for r in first + other_run}
    want[("run-1", first[3]["track_id"])] = expected(again[3])
    assert read_table(results_url, RESULTS_TABLE, RESULT_COLUMNS) == want


def _concurrent_writer(url: str, writer: int, keys: list[int], barrier) -> None:
    """One worker process: creates the tables (racing the others), then upserts its rows in
    shuffled batches, one transaction per batch, six times over."""
    engine = create_engine(url)
    barrier.wait()
    results, _ = create_tables(engine)
    rng = random.Random(writer)
    for round_ in range(6):
        order = keys[:]
        rng.shuffle(order)
        for start in range(0, len(order), 40):
            batch = [
                {
                    "run_id": "run-c",
                    "track_id": f"t{k:04d}",
                    "status": "ok",
                    "wall_s": float(writer),
                    "duration_s": float(round_),
                }
                for k in order[start : start + 40]
            ]
            with engine.begin() as connection:
                upsert(connection, results, batch)
    engine.dispose()


def test_concurrent_writer_processes_lose_nothing(results_url):
    """Four processes upsert overlapping keys at once into a database without tables.

    Before upsert sorted its rows, PostgreSQL aborted writers here with 'deadlock detected'."""
    writers = 4
    keys = {w: list(range(w * 10, w * 10 + 80)) for w in range(writers)}  # neighbours share 70
    # Children fork from a clean single-threaded server that imported the sink once (spawning
    # each would import Beam four times; forking this process would copy Beam's gRPC threads).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["stembeam.transforms.results", __name__])
    barrier = context.Barrier(writers)
    processes = [
        context.Process(target=_concurrent_writer, args=(results_url, w, keys[w], barrier))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * writers

    table = read_table(results_url, RESULTS_TABLE, RESULT_COLUMNS)
    writers_of = {}
    for w, ks in keys.items():
        for k in ks:
            writers_of.setdefault(f"t{k:04d}", set()).add(float(w))
    assert sorted(track for _, track in table) == sorted(writers_of)
    for (_, track), row in table.items():
        assert row["wall_s"] in writers_of[track]
        assert row["duration_s"] == 5.0  # every writer's last round wins over its earlier ones


def test_create_tables_when_another_worker_wins_every_race(tmp_path):
    """Between this worker's existence check and its CREATE, another worker creates each table
    (a DDL hook runs exactly there): create_tables must still succeed and leave both tables."""
    url = f"sqlite:///{tmp_path}/race.sqlite"
    other_worker = create_engine(url)
    raced: list[str] = []

    def other_worker_creates_it_first(table, connection, **kw):
        if table.name not in raced:  # the other worker's own CREATE fires this hook too
            raced.append(table.name)
            next(t for t in sql_tables(sa.MetaData()) if t.name == table.name).create(other_worker)

    sa.event.listen(sa.Table, "before_create", other_worker_creates_it_first)
    try:
        create_tables(create_engine(url))
    finally:
        sa.event.remove(sa.Table, "before_create", other_worker_creates_it_first)
    assert sorted(raced) == sorted([RESULTS_TABLE, RUNS_TABLE])
    assert set(sa.inspect(other_worker).get_table_names()) == {RESULTS_TABLE, RUNS_TABLE}
