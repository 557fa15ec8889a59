"""The report's HTML: Jinja2 templates (package data under templates/, the stylesheet and the
table script inlined from there) filled with the run's figures. Autoescaping is on, so every
value from the results table is text on the page, never markup."""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import markupsafe
import numpy as np

from stembeam.pipeline.report import data, plots
from stembeam.pipeline.report.media import SPECTROGRAM_RANGE_DB, MediaWriter, excerpt_start

FAILED_LISTED = 1000  # failures listed in full on the main page; the rest are counted
INDEX_HEAD = (
    "Run",
    "Started (UTC)",
    "Model",
    "Input",
    "OK",
    "Skipped",
    "Failed",
    "Audio",
    "Real time",
)


@functools.cache
def _static(name: str) -> markupsafe.Markup:
    """A file of templates/ (CSS, JS) inlined as is."""
    text = importlib.resources.files(__package__).joinpath("templates", name).read_text("utf-8")
    return markupsafe.Markup(text)


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["static"] = _static
    env.filters["b64"] = lambda raw: base64.b64encode(raw).decode("ascii")
    env.filters["urlquote"] = urllib.parse.quote
    env.filters["basename"] = os.path.basename
    return env


def render(template: str, **context: Any) -> str:
    """``templates/<template>`` filled with ``context``."""
    return _environment().get_template(template).render(**context)


def clock(seconds: float) -> str:
    """'M:SS', or 'H:MM:SS' from an hour on."""
    h, rest = divmod(round(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def audio_amount(seconds: float) -> str:
    """Hours of audio, in minutes or seconds when under a tenth of an hour."""
    if seconds >= 360:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def fixed(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals, '' when missing."""
    num = data.number(value)
    return "" if num is None else f"{num:.{digits}f}"


def _rounded(value: Any, digits: int) -> float | None:
    num = data.number(value)
    return None if num is None else round(num, digits)


def json_for_script(value: Any) -> markupsafe.Markup:
    """JSON safe inside a <script> element: <, > and & as \\u escapes, so no tag can close it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return markupsafe.Markup(
        text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


def summary_stats(s: data.Summary) -> list[tuple[str, str]]:
    """The summary's (label, value) tiles."""
    dates = f"{s.started_at} → {s.finished_at}" if s.started_at != s.finished_at else s.started_at
    return [
        ("Tracks ok", f"{s.ok:,}"),
        ("Skipped", f"{s.skipped:,}"),
        ("Failed", f"{s.failed:,}"),
        ("Audio", audio_amount(s.audio_s)),
        ("Wall time", clock(s.wall_s) if s.wall_s is not None else "–"),
        ("Real-time factor", f"{s.realtime_factor:.1f}×" if s.realtime_factor is not None else "–"),
        ("Model", s.model or "–"),
        ("Date", dates or "–"),
    ]


def metrics_context(
    rows: Sequence[data.Row], stems: Sequence[str], metric_cols: Sequence[tuple[str, str]]
) -> dict[str, Any] | None:
    """The box plot (PNG) and the medians table of the run, None when nothing is plotted."""
    values = data.metric_values(rows, metric_cols)
    plotted = [m for m in plots.PLOT_METRICS if any(values.get((m, s)) for s in stems)]
    if not plotted:
        return None
    plot_stems = [s for s in stems if any(values.get((m, s)) for m in plotted)]
    lines = [
        {
            "label": f"{m.upper()} (this run)",
            "reference": False,
            "cells": [
                fixed(np.median(values[(m, s)]) if values.get((m, s)) else None) for s in plot_stems
            ],
        }
        for m in plotted
    ]
    lines += [
        {
            "label": f"SDR, {name}",
            "reference": True,
            "cells": [fixed(ref.get(s)) for s in plot_stems],
        }
        for name, ref in plots.PUBLISHED_SDR.items()
    ]
    return {
        "png": plots.metrics_boxplot_png(values, plot_stems, plotted),
        "stems": plot_stems,
        "lines": lines,
        "n_tracks": max(len(v) for v in values.values()),
    }


def table_json(
    rows: Sequence[data.Row], metric_cols: Sequence[tuple[str, str]], hrefs: Mapping[str, str]
) -> markupsafe.Markup:
    """The per-track table for templates/table.js (sortable, drawn 100 rows at a time).

    JSON: {"columns": [[label, "text"|"num", digits]], "rows": [[track_id, card href or "",
    status, numbers (null when missing)...]]}; about 130 bytes a row with 16 metric columns.
    """
    columns = [
        ["Track", "text", 0],
        ["Status", "text", 0],
        ["Duration s", "num", 1],
        ["× real time", "num", 1],
    ]
    columns += [[f"{m.upper()} {s}", "num", 2] for m, s in metric_cols]
    table = [
        [row["track_id"], hrefs.get(row["track_id"], ""), row.get("status") or ""]
        + [_rounded(row.get(k), 1) for k in ("duration_s", "realtime_factor")]
        + [_rounded(row.get(f"{m}_{s}"), 2) for m, s in metric_cols]
        for row in rows
    ]
    return json_for_script({"columns": columns, "rows": table})


def track_card(
    index: int,
    row: data.Row,
    media: MediaWriter,
    *,
    with_media: bool,
    metric_cols: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """One track's card: title, facts, and per source (mixture, each stem) a spectrogram and a
    player."""
    sources = [("mixture", row.get("source_uri") or ""), *data.stems_of(row).items()]
    duration = data.number(row.get("duration_s"))
    start = excerpt_start(duration, media.excerpt_s)
    shown = media.sources(index, sources, start, with_media)
    facts = [str(row.get("status") or "")]
    if duration is not None:
        facts.append(clock(duration))
    for key, unit in (("sample_rate", " Hz"), ("channels", " ch"), ("codec", "")):
        if row.get(key) not in (None, ""):
            facts.append(f"{row[key]}{unit}")
    rtf = data.number(row.get("realtime_factor"))
    if rtf is not None:
        facts.append(f"{rtf:.1f}× real time")
    for metric, stem in metric_cols:
        sdr = data.number(row.get(f"sdr_{stem}")) if metric == "sdr" else None
        if sdr is not None:
            facts.append(f"SDR {stem} {sdr:.2f} dB")
    excerpt = (
        f"{clock(start)}–{clock(start + media.excerpt_s)}"
        if any(s.spectrogram for s in shown)
        else ""
    )
    return {
        "index": index,
        "track_id": row["track_id"],
        "facts": facts,
        "sources": shown,
        "excerpt": excerpt,
    }


def run_page(
    *,
    run_id: str,
    page: int,
    page_names: Sequence[str],
    first: dict[str, Any] | None,
    cards: Sequence[dict[str, Any]],
    tracks_title: str,
    media_pages: int,
    page_size: int,
) -> str:
    """One page of run ``run_id``'s report; ``first``: the first page's sections (from
    first_page_context), None on later pages."""
    return render(
        "run.html.j2",
        title=f"stembeam run {run_id}",
        run_id=run_id,
        page=page,
        page_names=page_names,
        first=first is not None,
        **(first or {}),
        cards=cards,
        tracks_title=tracks_title,
        range_db=SPECTROGRAM_RANGE_DB,
        media_note=len(page_names) > media_pages,
        media_pages=media_pages,
        page_size=page_size,
    )


def first_page_context(
    summary: data.Summary,
    rows: Sequence[data.Row],
    stems: Sequence[str],
    metric_cols: Sequence[tuple[str, str]],
    hrefs: Mapping[str, str],
) -> dict[str, Any]:
    """What only the first page shows: summary, failures, metrics and the per-track table."""
    failed = [row for row in rows if row.get("status") == "failed"]
    return {
        "stats": summary_stats(summary),
        "where": [(k, v) for k, v in (("input", summary.input), ("output", summary.output)) if v],
        "source": summary.source,
        "failures": {"total": len(failed), "rows": failed[:FAILED_LISTED]},
        "metrics": metrics_context(rows, stems, metric_cols),
        "table_rows": len(rows),
        "table_json": table_json(rows, metric_cols, hrefs),
    }


def index_page(runs: Sequence[data.Row], report_href: Mapping[str, str | None]) -> str:
    """The runs table; ``report_href``: run id -> its report's href (None: no report)."""
    listed = [
        {
            "run_id": run["run_id"],
            "report": report_href.get(run["run_id"]),
            "cells": (
                data.utc_time(run.get("started_at")),
                run.get("model"),
                run.get("input"),
                run.get("tracks_ok"),
                run.get("tracks_skipped"),
                run.get("tracks_failed"),
                audio_amount(data.number(run.get("audio_s")) or 0.0),
                fixed(run.get("realtime_factor")) + "x",
            ),
        }
        for run in runs
    ]
    return render("index.html.j2", title="stembeam runs", head=INDEX_HEAD, runs=listed)
