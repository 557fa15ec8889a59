"""WriteResults: result rows into a SQL database (SQLAlchemy) or BigQuery.

SQL: tables ``results`` and ``runs`` per ``results_schema``, created when missing; rows are
upserted on (run_id, track_id), so re-running a catalog never duplicates rows, and a ``skipped``
row never replaces an ``ok`` row of the same run (a re-run after a crash keeps what the crashed
run recorded). BigQuery (``bigquery:PROJECT.DATASET.TABLE``): WriteToBigQuery appends to TABLE and
``TABLE_runs``; BigQuery has no upsert, so re-runs with the same run_id append again.
"""
from __future__ import annotations

import datetime
import math
import threading
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from transforms.bigquery import bigquery_row, table_schema
from transforms.results_schema import (RESULT_COLUMNS, RESULT_KEY, RESULTS_TABLE, RUN_COLUMNS,
                                       RUN_KEY, RUNS_TABLE)

BIGQUERY_PREFIX = "bigquery:"
_SQL_TYPES = {"string": sa.Text, "float": sa.Float, "integer": sa.BigInteger,
              "timestamp": lambda: sa.DateTime(timezone=True)}
# Key columns are VARCHAR so every database can index them; two of 255 characters stay within
# MySQL's 3072-byte index limit in utf8mb4 (catalog.MAX_TRACK_ID_CHARS stays below it).
KEY_LENGTH = 255


def sql_tables(metadata: Optional[sa.MetaData] = None) -> tuple[sa.Table, sa.Table]:
    """SQLAlchemy ``results`` and ``runs`` tables built from ``results_schema``."""
    metadata = metadata or sa.MetaData()

    def table(name: str, columns, key) -> sa.Table:
        return sa.Table(name, metadata, *(
            sa.Column(col, sa.String(KEY_LENGTH) if col in key else _SQL_TYPES[kind](),
                      primary_key=col in key, nullable=col not in key, comment=doc)
            for col, kind, doc in columns))

    return table(RESULTS_TABLE, RESULT_COLUMNS, RESULT_KEY), table(RUNS_TABLE, RUN_COLUMNS, RUN_KEY)


def create_engine(url: str, connect_timeout_s: Optional[int] = None) -> sa.Engine:
    """An engine for ``url``; SQLite waits for locks held by concurrent writers, PostgreSQL and
    MySQL give up connecting after ``connect_timeout_s`` seconds when it is given."""
    if url.startswith("sqlite"):
        return sa.create_engine(url, connect_args={"timeout": 120})
    connect_args = {}
    if connect_timeout_s and sa.engine.make_url(url).get_backend_name() in ("postgresql",
                                                                            "mysql"):
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
            value = (value.replace(tzinfo=datetime.timezone.utc) if value.tzinfo is None
                     else value.astimezone(datetime.timezone.utc))
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
        where = (sa.not_(sa.and_(table.c.status == "ok", stmt.excluded.status == "skipped"))
                 if keep_ok else None)
        stmt = stmt.on_conflict_do_update(
            index_elements=key, where=where,
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in key})
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


class _WriteSqlFn(beam.DoFn):
    """Upserts batches of rows; one engine per worker process, shared by its threads."""

    _engines: dict[str, tuple[sa.Engine, sa.Table, sa.Table]] = {}
    _lock = threading.Lock()

    def __init__(self, url: str, table: str):
        self._url, self._table = url, table

    def setup(self):
        with self._lock:
            if self._url not in self._engines:
                engine = create_engine(self._url)
                self._engines[self._url] = (engine, *create_tables(engine))
        engine, results, runs = self._engines[self._url]
        self._engine = engine
        self._target = results if self._table == RESULTS_TABLE else runs

    def process(self, rows):
        with self._engine.begin() as connection:
            upsert(connection, self._target, rows)
        beam.metrics.Metrics.counter("stembeam", f"{self._target.name}_rows_written").inc(
            len(rows))
        yield from rows


def _bigquery_sink(table: str, columns):
    from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery

    return WriteToBigQuery(
        table, schema=table_schema(columns),
        create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
        write_disposition=BigQueryDisposition.WRITE_APPEND)


class WriteResults(beam.PTransform):
    """Rows of table ``results`` (default) or ``runs`` -> ``url``.

    ``url``: any SQLAlchemy URL, or ``bigquery:PROJECT.DATASET.TABLE`` (the runs table is then
    ``TABLE_runs``). Returns the rows written (SQL) so later stages can follow them.
    """

    def __init__(self, url: str, table: str = RESULTS_TABLE, batch_size: int = 50):
        super().__init__()
        if table not in (RESULTS_TABLE, RUNS_TABLE):
            raise ValueError(f"unknown results table {table!r}")
        self._url, self._table, self._batch_size = url, table, batch_size

    def expand(self, rows):
        columns = RESULT_COLUMNS if self._table == RESULTS_TABLE else RUN_COLUMNS
        if self._url.startswith(BIGQUERY_PREFIX):
            table = self._url[len(BIGQUERY_PREFIX):]
            if self._table == RUNS_TABLE:
                table += "_runs"
            return (rows
                    | "ToBigQueryRow" >> beam.Map(bigquery_row, columns)
                    | "WriteToBigQuery" >> _bigquery_sink(table, columns))
        return (rows
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
                | "Upsert" >> beam.ParDo(_WriteSqlFn(self._url, self._table)))
