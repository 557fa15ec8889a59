"""Launcher checks of ``stembeam separate``: what would otherwise fail the pipeline after it
started, or lose its rows, is refused before it is built, each with a one-line ValueError.

- the results URL parses, names a known database, answers within CONNECT_TIMEOUT_S and holds
  (or gets) the results tables with every column; BigQuery URLs are only checked for syntax;
- the output root is writable: a probe file is written, read back and deleted through
  transforms.storage (local or remote);
- the catalog exists, reads (manifests: encoding, columns, lines) and lists at least one track.

A results URL is only ever shown through ``redact_url``, which hides its password.
"""

from __future__ import annotations

import logging
import re
import uuid

import sqlalchemy as sa
from apache_beam.io.filesystems import FileSystems

from stembeam.transforms import storage
from stembeam.transforms.catalog import check_source, list_catalog
from stembeam.transforms.results import BIGQUERY_PREFIX, KEY_LENGTH, create_engine, create_tables
from stembeam.transforms.results_schema import redact_url

CONNECT_TIMEOUT_S = 5
_BIGQUERY_TABLE = re.compile(r"^[a-z0-9.:-]+[.:]\w+\.[\w$-]+$")
_EXAMPLES = "sqlite:///FILE, postgresql://USER@HOST/DB or bigquery:PROJECT.DATASET.TABLE"
log = logging.getLogger("stembeam")


def _reason(error: BaseException) -> str:
    """A driver error's first line, without the driver's preamble (``connection to server at
    ... failed:``, ``FATAL:``)."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    text = text[0] if text else type(error).__name__
    text = re.sub(r"^(FATAL|ERROR):\s+", "", text.rsplit(" failed: ", 1)[-1])
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def check_results(url: str, timeout_s: int = CONNECT_TIMEOUT_S) -> None:
    """Raises ValueError unless ``url`` is a BigQuery table spec or a SQL database that answers
    within ``timeout_s`` seconds and holds the results tables (created here when missing)."""
    shown = redact_url(url)
    if url.startswith(BIGQUERY_PREFIX):
        if not _BIGQUERY_TABLE.match(url[len(BIGQUERY_PREFIX) :]):
            raise ValueError(f"the results table {shown!r} is not bigquery:PROJECT.DATASET.TABLE")
        return
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(
            f"the results URL {shown!r} is not a database URL; use {_EXAMPLES}"
        ) from None
    try:
        parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise ValueError(
            f"unknown database scheme {parsed.drivername!r} in {shown}; use {_EXAMPLES}"
        ) from None
    try:
        engine = create_engine(url, connect_timeout_s=timeout_s)
    except ImportError as e:
        raise ValueError(f"the database driver for {shown} is not installed: {e}") from None
    except OSError as e:  # the SQLite file's folder cannot be made
        raise ValueError(f"cannot connect to {shown}: {e.strerror}: {e.filename}") from None
    try:
        try:
            with engine.connect():
                pass
        except sa.exc.DBAPIError as e:
            raise ValueError(f"cannot connect to {shown}: {_reason(e)}") from None
        try:
            tables = create_tables(engine)
            inspector = sa.inspect(engine)
            for table in tables:
                present = {column["name"] for column in inspector.get_columns(table.name)}
                missing = [c.name for c in table.columns if c.name not in present]
                if missing:
                    raise ValueError(
                        f"the table {table.name} in {shown} lacks the columns "
                        f"{', '.join(missing)}; use a database of this version"
                    )
        except sa.exc.DBAPIError as e:
            raise ValueError(f"cannot create the results tables in {shown}: {_reason(e)}") from None
    finally:
        engine.dispose()


def check_output(output: str) -> None:
    """Raises ValueError unless a file can be written, read back and deleted in ``output``."""
    probe = storage.join(output.rstrip("/"), f".write-probe-{uuid.uuid4().hex[:12]}")
    try:
        storage.write_atomic(probe, b"stembeam")
        if storage.read_bytes(probe) != b"stembeam":
            raise OSError("a probe file read back different bytes")
        storage.delete([probe])
    except Exception as e:
        raise ValueError(f"the output {output} is not writable: {_reason(e)}") from None


def check_catalog(source: str) -> int:
    """The number of tracks ``source`` lists; ValueError when it is missing, unreadable (file,
    line and problem for a manifest) or lists nothing."""
    check_source(source)
    try:
        tracks = list_catalog(source)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"cannot list the catalog {source}: {_reason(e)}") from None
    if not tracks:
        raise ValueError(f"the catalog {source} matched no audio files")
    return len(tracks)


def validate_run(options, results: str, catalog_tracks: int | None = None) -> int:
    """Every launcher check of ``stembeam separate`` (``options``: SeparateOptions, ``results``:
    the results URL); returns the catalog's track count. ``catalog_tracks``: the caller listed
    the catalog already (that count), so it is not listed again."""
    FileSystems.set_options(options)  # as beam.Pipeline does: s3:// needs them to connect
    if options.run_id and len(options.run_id) > KEY_LENGTH:
        raise ValueError(
            f"--run_id is {len(options.run_id)} characters long; at most "
            f"{KEY_LENGTH} fit the results tables"
        )
    check_results(results)
    check_output(options.output)
    if catalog_tracks is not None:
        return catalog_tracks
    return check_catalog(options.input)
