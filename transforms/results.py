"""CommitRows: result rows committed to a SQL database (SQLAlchemy) or BigQuery as tracks finish.

SQL: tables ``results`` and ``runs`` per ``results_schema``, created when missing; rows are
upserted on (run_id, track_id), so re-running a catalog never duplicates rows, and a ``skipped``
row never replaces an ``ok`` row of the same run (a re-run after a crash keeps what the crashed
run recorded). BigQuery (``bigquery:PROJECT.DATASET.TABLE``): streaming inserts into TABLE and
``TABLE_runs``; BigQuery has no upsert, so re-runs with the same run_id append again.
Rows are committed in small batches (by count, by age, at bundle end), so a job killed at any
moment keeps the row of every track that finished a few seconds before.
"""

from __future__ import annotations

import datetime
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import numpy as np
import sqlalchemy as sa
from apache_beam.utils import shared
from sqlalchemy.dialects import postgresql, sqlite

from stembeam.transforms import metrics
from stembeam.transforms.bigquery import BIGQUERY_TYPES, bigquery_row
from stembeam.transforms.results_schema import (
    RESULT_COLUMNS,
    RESULT_KEY,
    RESULTS_TABLE,
    RUN_COLUMNS,
    RUN_KEY,
    RUNS_TABLE,
)

BIGQUERY_PREFIX = "bigquery:"
_SQL_TYPES = {
    "string": sa.Text,
    "float": sa.Float,
    "integer": sa.BigInteger,
    "timestamp": lambda: sa.DateTime(timezone=True),
}
# Key columns are VARCHAR so every database can index them; two of 255 characters stay within
# MySQL's 3072-byte index limit in utf8mb4 (catalog.MAX_TRACK_ID_CHARS stays below it).
KEY_LENGTH = 255


def sql_tables(metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table]:
    """SQLAlchemy ``results`` and ``runs`` tables built from ``results_schema``."""
    metadata = metadata or sa.MetaData()

    def table(name: str, columns, key) -> sa.Table:
        return sa.Table(
            name,
            metadata,
            *(
                sa.Column(
                    col,
                    sa.String(KEY_LENGTH) if col in key else _SQL_TYPES[kind](),
                    primary_key=col in key,
                    nullable=col not in key,
                    comment=doc,
                )
                for col, kind, doc in columns
            ),
        )

    return table(RESULTS_TABLE, RESULT_COLUMNS, RESULT_KEY), table(RUNS_TABLE, RUN_COLUMNS, RUN_KEY)


def create_engine(url: str, connect_timeout_s: int | None = None) -> sa.Engine:
    """An engine for ``url``; SQLite waits for locks held by concurrent writers, PostgreSQL and
    MySQL give up connecting after ``connect_timeout_s`` seconds when it is given."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":  # the file's folder may not exist yet
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
        return sa.create_engine(url, connect_args={"timeout": 120})
    connect_args = {}
    if connect_timeout_s and sa.engine.make_url(url).get_backend_name() in ("postgresql", "mysql"):
        connect_args["connect_timeout"] = connect_timeout_s
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def create_tables(engine: sa.Engine) -> tuple[sa.Table, sa.Table]:
    """Create the tables if missing (safe when several workers race to do it)."""
    tables = sql_tables(sa.MetaData())
    for table in tables:  # one at a time: any number of workers may race on each
        try:
            table.create(engine, checkfirst=True)
        except sa.exc.DBAPIError:  # another worker created it between check and create
            if not sa.inspect(engine).has_table(table.name):
                raise
    return tables


def _to_sql(row: dict[str, Any], table: sa.Table) -> dict[str, Any]:
    """``row`` as driver-ready values: numpy scalars as Python numbers (no driver adapts
    float32/int64), NaN/inf as NULL, timestamps as UTC datetimes (SQLite keeps only the wall
    clock, so an offset other than UTC would shift the stored instant)."""
    out = {}
    for column in table.columns:
        value = row.get(column.name)
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) and isinstance(column.type, sa.DateTime):
            value = datetime.datetime.fromisoformat(value)
        if isinstance(value, datetime.datetime):
            value = (
                value.replace(tzinfo=datetime.UTC)
                if value.tzinfo is None
                else value.astimezone(datetime.UTC)
            )
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        out[column.name] = value
    return out


def upsert(connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, replacing rows with the same primary key, except that a ``skipped``
    result never replaces an ``ok`` one.

    Rows are written in key order, the last one of a batch winning per key: concurrent writers
    then lock rows in the same order and cannot deadlock (PostgreSQL aborts one of two
    transactions that upsert overlapping keys in different orders), and no statement touches a
    key twice (which ON CONFLICT DO UPDATE refuses).
    """
    if not rows:
        return
    key = [c.name for c in table.primary_key.columns]
    by_key = {tuple(row[k] for k in key): row for row in rows}
    rows = [_to_sql(by_key[k], table) for k in sorted(by_key)]
    dialect = connection.dialect.name
    keep_ok = "status" in table.c
    if dialect in ("sqlite", "postgresql"):
        module = sqlite if dialect == "sqlite" else postgresql
        stmt = module.insert(table)
        where = (
            sa.not_(sa.and_(table.c.status == "ok", stmt.excluded.status == "skipped"))
            if keep_ok
            else None
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=key,
            where=where,
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in key},
        )
        connection.execute(stmt, rows)
        return
    for row in rows:  # other databases: replace row by row inside the transaction
        match = sa.and_(*(table.c[k] == row[k] for k in key))
        if keep_ok and row["status"] == "skipped":
            existing = connection.execute(sa.select(table.c.status).where(match)).scalar()
            if existing == "ok":
                continue
        connection.execute(table.delete().where(match))
        connection.execute(table.insert(), [row])


class SqlSink:
    """Upserts rows into one SQL table; one engine per worker process and URL, shared by the
    process's threads through Beam's ``Shared``."""

    def __init__(self, url: str, table: str):
        self._url, self._table = url, table
        self._shared = shared.Shared()

    def open(self) -> None:
        self._handle = self._shared.acquire(lambda: _Engine(self._url), tag=self._url)

    def write(self, rows: list[dict[str, Any]]) -> None:
        target = self._handle.tables[self._table]
        with self._handle.engine.begin() as connection:
            upsert(connection, target, rows)

    def close(self) -> None:
        self._handle = None


class _Engine:
    """A SQLAlchemy engine with the results tables created (weak-referenceable for Shared)."""

    def __init__(self, url: str):
        self.engine = create_engine(url)
        results, runs = create_tables(self.engine)
        self.tables = {RESULTS_TABLE: results, RUNS_TABLE: runs}


class BigQuerySink:
    """Appends rows to a BigQuery table with streaming inserts (google-cloud-bigquery), so each
    committed batch is visible at once; the table is created from ``results_schema`` when
    missing. BigQuery has no upsert: ``insertId`` ``run_id/track_id`` de-duplicates retries
    (best effort, about a minute)."""

    def __init__(self, table: str, columns):
        self._table = table.replace(":", ".", 1)
        self._columns = list(columns)

    def open(self) -> None:
        from google.cloud import bigquery

        self._client = bigquery.Client(project=self._table.split(".")[0])
        schema = [
            bigquery.SchemaField(name, BIGQUERY_TYPES[kind], mode="NULLABLE", description=doc)
            for name, kind, doc in self._columns
        ]
        self._client.create_table(bigquery.Table(self._table, schema=schema), exists_ok=True)

    def write(self, rows: list[dict[str, Any]]) -> None:
        key = [c for c in ("run_id", "track_id") if any(c == n for n, _, _ in self._columns)]
        errors = self._client.insert_rows_json(
            self._table,
            [bigquery_row(row, self._columns) for row in rows],
            row_ids=["/".join(str(row.get(k)) for k in key) for row in rows],
        )
        if errors:
            raise RuntimeError(f"BigQuery refused rows of {self._table}: {errors[:3]}")

    def close(self) -> None:
        self._client = None


def open_sink(url: str, table: str = RESULTS_TABLE):
    """The sink for ``url``: any SQLAlchemy URL, or ``bigquery:PROJECT.DATASET.TABLE`` (the runs
    table is then ``TABLE_runs``)."""
    if table not in (RESULTS_TABLE, RUNS_TABLE):
        raise ValueError(f"unknown results table {table!r}")
    if url.startswith(BIGQUERY_PREFIX):
        name = url[len(BIGQUERY_PREFIX) :] + ("_runs" if table == RUNS_TABLE else "")
        return BigQuerySink(name, RESULT_COLUMNS if table == RESULTS_TABLE else RUN_COLUMNS)
    return SqlSink(url, table)


class _CommitRowsFn(beam.DoFn):
    """Commits ``(Track, row)`` pairs in small batches: when ``max_rows`` are buffered, when the
    oldest has waited ``max_delay_s`` (a background thread watches the clock, so a row never
    waits for the next track) and at the end of each bundle. After each commit, ``after_commit``
    runs on the committed pairs (the done-markers). Passes the rows on at once."""

    def __init__(
        self,
        url: str,
        table: str,
        after_commit: Callable | None = None,
        max_rows: int = 25,
        max_delay_s: float = 5.0,
    ):
        self._sink = open_sink(url, table)
        self._after_commit = after_commit
        self._max_rows, self._max_delay_s = max_rows, max_delay_s

    def setup(self):
        self._sink.open()
        self._lock = threading.Lock()
        self._buffer: list[tuple[Any, dict[str, Any]]] = []
        self._oldest = 0.0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._clock = threading.Thread(target=self._watch, daemon=True, name="stembeam-commit-rows")
        self._clock.start()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self._max_delay_s / 2)):
            if self._buffer and time.time() - self._oldest >= self._max_delay_s:
                try:
                    self._flush()
                except Exception as e:  # re-raised in the bundle's thread
                    self._error = e

    def _flush(self) -> None:
        with self._lock:
            pairs, self._buffer = self._buffer, []
            if not pairs:
                return
            try:
                self._sink.write([row for _, row in pairs])
            except BaseException:
                self._buffer = pairs + self._buffer  # kept for the retry of the bundle's end
                raise
            metrics.count(metrics.ROWS_COMMITTED, len(pairs))
            if self._after_commit is not None:
                self._after_commit(pairs)

    def _raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def process(self, pair):
        self._raise_pending()
        with self._lock:
            if not self._buffer:
                self._oldest = time.time()
            self._buffer.append(pair)
            full = len(self._buffer) >= self._max_rows
        if full:
            self._flush()
        yield pair[1]

    def finish_bundle(self):
        self._raise_pending()
        self._flush()

    def teardown(self):
        self._stop.set()
        self._sink.close()


class CommitRows(beam.PTransform):
    """``(Track, row)`` pairs -> rows, each committed to ``url`` (table ``results`` or ``runs``)
    within ``max_delay_s`` of arriving; ``after_commit(pairs)`` runs after each commit."""

    def __init__(
        self,
        url: str,
        table: str = RESULTS_TABLE,
        after_commit: Callable | None = None,
        max_rows: int = 25,
        max_delay_s: float = 5.0,
    ):
        super().__init__()
        self._fn = _CommitRowsFn(url, table, after_commit, max_rows, max_delay_s)

    def expand(self, pairs):
        return pairs | beam.ParDo(self._fn)
