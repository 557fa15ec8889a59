"""BigQuery form of the results tables: schema and rows for WriteToBigQuery.

The schema comes from ``results_schema`` (portable types -> BigQuery types, all columns NULLABLE,
descriptions kept). Rows become JSON-safe dicts: numpy scalars as Python numbers, NaN/inf as NULL
(BigQuery's JSON import rejects them), timestamps as UTC ``YYYY-MM-DD HH:MM:SS.ffffff UTC``
strings, and only the schema's columns (unknown fields fail a load job).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from apache_beam.io.gcp.internal.clients import bigquery as bq

Columns = Iterable[tuple[str, str, str]]

BIGQUERY_TYPES = {
    "string": "STRING",
    "float": "FLOAT64",
    "integer": "INT64",
    "timestamp": "TIMESTAMP",
}


def table_schema(columns: Columns) -> bq.TableSchema:
    """A BigQuery ``TableSchema`` for ``results_schema`` columns ``(name, type, description)``."""
    schema = bq.TableSchema()
    for name, kind, doc in columns:
        schema.fields.append(
            bq.TableFieldSchema(
                name=name, type=BIGQUERY_TYPES[kind], mode="NULLABLE", description=doc
            )
        )
    return schema


def _timestamp(value: datetime.datetime | str) -> str:
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)  # stembeam writes UTC
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def bigquery_row(row: dict[str, Any], columns: Columns) -> dict[str, Any]:
    """``row`` as a JSON-safe BigQuery row holding exactly the schema's columns."""
    out: dict[str, Any] = {}
    for name, kind, _ in columns:
        value = row.get(name)
        if isinstance(value, np.generic):
            value = value.item()
        if value is None:
            pass
        elif kind == "float":
            value = float(value)
            if not math.isfinite(value):
                value = None
        elif kind == "integer":
            value = int(value)
        elif kind == "timestamp":
            value = _timestamp(value)
        else:
            value = str(value)
        out[name] = value
    return out
