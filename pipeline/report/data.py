"""The report's figures: one run's rows read from the SQL results tables, and what is aggregated
over them (run summary, stem order, metric columns and values)."""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stembeam.model.config import ALL_STEMS
from stembeam.transforms.results_schema import METRICS, RESULTS_TABLE, RUNS_TABLE

_LOG = logging.getLogger(__name__)

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Summary:
    """What the run did: from its `runs` row, fields it lacks aggregated from the `results` rows.

    Times are display strings ('YYYY-MM-DD HH:MM:SS UTC'); audio and wall time in seconds.
    """

    run_id: str
    ok: int
    skipped: int
    failed: int
    audio_s: float
    wall_s: float | None
    realtime_factor: float | None
    model: str
    started_at: str
    finished_at: str
    input: str
    output: str
    source: str  # where the figures came from, shown on the page


def load_run(
    results_url: str, run_id: str | None
) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
    """Read one run: (run_id, its `runs` row or None, its `results` rows sorted by track_id).

    `run_id` None picks the run with the latest activity. Raises ValueError for a URL that is not
    SQLAlchemy's, LookupError for a missing SQLite file, table or run.
    """
    import sqlalchemy as sa

    from stembeam.transforms.results_schema import redact_url

    if results_url.startswith("bigquery:"):
        raise ValueError(
            "the report reads SQL results tables; export the BigQuery table to SQL first"
        )
    try:
        url = sa.engine.make_url(results_url)
    except sa.exc.ArgumentError:
        raise ValueError(
            f"not a SQLAlchemy URL: {redact_url(results_url)!r} (e.g. sqlite:///out/results.sqlite)"
        ) from None
    where = url.render_as_string(hide_password=True)
    if (
        url.get_backend_name() == "sqlite"
        and url.database not in (None, "", ":memory:")
        and not os.path.isfile(url.database)
    ):
        raise LookupError(f"no SQLite file at {url.database}")  # connecting would create one
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine, only=lambda name, _: name in (RESULTS_TABLE, RUNS_TABLE))
        if RESULTS_TABLE not in meta.tables:
            raise LookupError(f"no '{RESULTS_TABLE}' table in {where}")
        results = meta.tables[RESULTS_TABLE]
        runs = meta.tables.get(RUNS_TABLE)
        with engine.connect() as conn:
            if run_id is None:
                run_id = _latest_run_id(conn, results, runs)
                if run_id is None:
                    raise LookupError(f"no runs recorded in {where}")
            run_row = None
            if runs is not None:
                found = (
                    conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
                )
                run_row = dict(found) if found is not None else None
            query = (
                sa.select(results).where(results.c.run_id == run_id).order_by(results.c.track_id)
            )
            rows = [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()
    if run_row is None and not rows:
        raise LookupError(f"run {run_id!r} not found in {where}")
    return run_id, run_row, rows


def load_runs(results_url: str) -> list[dict[str, Any]]:
    """Every `runs` row, newest first."""
    import sqlalchemy as sa

    engine = sa.create_engine(results_url)
    try:
        with engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.text(f"SELECT * FROM {RUNS_TABLE} ORDER BY started_at DESC, run_id DESC")
                ).mappings()
            ]
    finally:
        engine.dispose()


def _latest_run_id(conn: Any, results: Any, runs: Any) -> str | None:
    """The run with the latest activity: max of runs.started_at/finished_at and
    results.finished_at."""
    import sqlalchemy as sa

    latest: dict[str, str] = {}

    def note(run: str, when: Any) -> None:
        if when is not None and str(when) > latest.get(run, ""):
            latest[run] = str(when)
        latest.setdefault(run, "")

    if "finished_at" in results.c:
        for run, when in conn.execute(
            sa.select(results.c.run_id, sa.func.max(results.c.finished_at)).group_by(
                results.c.run_id
            )
        ):
            note(run, when)
    else:
        for (run,) in conn.execute(sa.select(results.c.run_id).distinct()):
            note(run, None)
    if runs is not None:
        times = [runs.c[name] for name in ("started_at", "finished_at") if name in runs.c]
        for run, *whens in conn.execute(sa.select(runs.c.run_id, *times)):
            for when in whens:
                note(run, when)
    if not latest:
        return None
    return max(latest, key=lambda run: (latest[run], run))


def summarize(run_id: str, run_row: Row | None, rows: Sequence[Row]) -> Summary:
    """The run's figures from its `runs` row, each missing one aggregated over its `results`
    rows."""
    counts = collections.Counter(row.get("status") for row in rows)
    ok_rows = [row for row in rows if row.get("status") == "ok"]
    audio = sum(number(row.get("duration_s")) or 0.0 for row in ok_rows)
    walls = [w for w in (number(row.get("wall_s")) for row in ok_rows) if w is not None]
    models = collections.Counter(row.get("model") for row in rows if row.get("model"))
    finished = sorted(
        (row["finished_at"] for row in rows if row.get("finished_at") is not None), key=str
    )
    aggregated = {
        "tracks_ok": counts["ok"],
        "tracks_skipped": counts["skipped"],
        "tracks_failed": counts["failed"],
        "audio_s": audio,
        "wall_s": sum(walls) if walls else None,
        "model": models.most_common(1)[0][0] if models else "",
        "started_at": finished[0] if finished else None,
        "finished_at": finished[-1] if finished else None,
    }
    run = dict(run_row or {})
    missing = [name for name in aggregated if run.get(name) is None or run.get(name) == ""]

    def pick(name: str) -> Any:
        return aggregated[name] if name in missing else run[name]

    wall = number(pick("wall_s"))
    audio_s = number(pick("audio_s")) or 0.0
    rtf = number(run.get("realtime_factor")) if "wall_s" not in missing else None
    if rtf is None and wall:
        rtf = audio_s / wall
    if run_row is None:
        source = "aggregated from the results rows (no runs row); wall time is the sum over tracks"
    elif missing:
        source = f"runs table; {', '.join(missing)} aggregated from the results rows"
    else:
        source = "runs table"
    return Summary(
        run_id=run_id,
        ok=int(pick("tracks_ok")),
        skipped=int(pick("tracks_skipped")),
        failed=int(pick("tracks_failed")),
        audio_s=audio_s,
        wall_s=wall,
        realtime_factor=rtf,
        model=str(pick("model") or ""),
        started_at=utc_time(pick("started_at")),
        finished_at=utc_time(pick("finished_at")),
        input=str(run.get("input") or ""),
        output=str(run.get("output") or ""),
        source=source,
    )


def number(value: Any) -> float | None:
    """A finite float, or None for NULL / NaN / non-numbers."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def utc_time(value: Any) -> str:
    """A UTC timestamp (datetime or ISO string) as 'YYYY-MM-DD HH:MM:SS UTC'; other text as is."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def stems_of(row: Row) -> dict[str, str]:
    """The row's `stems` JSON {stem: uri}, {} when empty or malformed."""
    raw = row.get("stems")
    if not raw:
        return {}
    try:
        stems = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        _LOG.warning("report: track %r has malformed stems JSON", row.get("track_id"))
        return {}
    return {str(k): str(v) for k, v in stems.items() if v} if isinstance(stems, dict) else {}


def stem_order(rows: Sequence[Row]) -> list[str]:
    """Stems in the order the run wrote them, then any other known stem."""
    order: dict[str, None] = {}
    for row in rows:
        order.update(dict.fromkeys(stems_of(row)))
    order.update(dict.fromkeys(ALL_STEMS))
    return list(order)


def metric_columns(rows: Sequence[Row], stems: Sequence[str]) -> list[tuple[str, str]]:
    """(metric, stem) pairs with at least one value in the run, grouped by metric."""
    return [
        (m, s)
        for m in METRICS
        for s in stems
        if any(number(row.get(f"{m}_{s}")) is not None for row in rows)
    ]


def metric_values(
    rows: Sequence[Row], metric_cols: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[float]]:
    """(metric, stem) -> the run's values of that column (dB), missing ones left out."""
    values: dict[tuple[str, str], list[float]] = {}
    for m, s in metric_cols:
        got = (number(row.get(f"{m}_{s}")) for row in rows)
        values[(m, s)] = [v for v in got if v is not None]
    return values
