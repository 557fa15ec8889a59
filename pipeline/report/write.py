"""Writing a run's report pages (and the runs index) to a local folder, or to a remote one
through transforms.storage."""

from __future__ import annotations

import math
import os
import re
import tempfile
import urllib.parse
from typing import Any

from stembeam.pipeline.report import data, pages
from stembeam.pipeline.report.media import MediaWriter
from stembeam.transforms import storage

REPORTS_DIR = "reports"  # OUTPUT/reports/<run id>.html: one report per run
_MIME_TYPES = {".html": "text/html", ".ogg": "audio/ogg"}


def write_report(
    results_url: str,
    output_html: str,
    run_id: str | None = None,
    *,
    page_size: int = 50,
    media_pages: int = 4,
    excerpt_s: float = 20.0,
    link_local_audio: bool = True,
) -> str:
    """Render the report of run `run_id` (the latest run when None) and return the main page's
    path.

    `results_url` is a SQLAlchemy URL (sqlite:///..., postgresql://...) holding the `results` and
    `runs` tables; `output_html` a local path, or a remote one (gs://...: rendered in a temporary
    folder with excerpts for all audio, then copied; earlier pages there are not removed). Track
    cards go `page_size` to a page; spectrograms and excerpts (`excerpt_s` seconds) are rendered
    for the first `media_pages` pages. With `link_local_audio=False`, players use excerpts
    instead of linking local files (a report that can be moved without the stems).
    """
    if page_size < 1 or media_pages < 0 or excerpt_s <= 0:
        raise ValueError("page_size must be >= 1, media_pages >= 0 and excerpt_s > 0")
    if not storage.is_local(output_html):
        with tempfile.TemporaryDirectory(prefix="stembeam-report-") as tmp:
            write_report(
                results_url,
                os.path.join(tmp, storage.basename(output_html)),
                run_id,
                page_size=page_size,
                media_pages=media_pages,
                excerpt_s=excerpt_s,
                link_local_audio=False,
            )
            _upload_folder(tmp, storage.parent(output_html))
        return output_html
    run_id, run_row, rows = data.load_run(results_url, run_id)
    output_html = os.path.abspath(output_html)
    out_dir = os.path.dirname(output_html)
    os.makedirs(out_dir, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(output_html))
    ext = ext or ".html"
    cards = [row for row in rows if row.get("status") != "failed"]
    n_pages = max(1, math.ceil(len(cards) / page_size))
    page_names = [base + ext] + [f"{base}-p{n}{ext}" for n in range(2, n_pages + 1)]
    page_file = re.compile(rf"{re.escape(base)}-p\d+{re.escape(ext)}")
    for name in os.listdir(out_dir):  # pages of an earlier, longer report at the same path
        if page_file.fullmatch(name) and name not in page_names:
            os.remove(os.path.join(out_dir, name))
    media = MediaWriter(
        out_dir, os.path.join(out_dir, f"{base}_media"), excerpt_s, link_local_audio
    )
    hrefs = {
        row["track_id"]: f"{urllib.parse.quote(page_names[i // page_size])}#t{i}"
        for i, row in enumerate(cards)
    }
    stems = data.stem_order(rows)
    metric_cols = data.metric_columns(rows, stems)
    first = pages.first_page_context(
        data.summarize(run_id, run_row, rows), rows, stems, metric_cols, hrefs
    )
    for page in range(n_pages):
        shown = range(page * page_size, min(len(cards), (page + 1) * page_size))
        page_cards = [
            pages.track_card(
                i, cards[i], media, with_media=page < media_pages, metric_cols=metric_cols
            )
            for i in shown
        ]
        title = f"Tracks {shown.start + 1}–{shown.stop} of {len(cards)}" if cards else "Tracks"
        text = pages.run_page(
            run_id=run_id,
            page=page,
            page_names=page_names,
            first=first if page == 0 else None,
            cards=page_cards,
            tracks_title=title,
            media_pages=media_pages,
            page_size=page_size,
        )
        with open(os.path.join(out_dir, page_names[page]), "w", encoding="utf-8") as f:
            f.write(text)
    return output_html


def run_report_name(run_id: str) -> str:
    """The file name of run ``run_id``'s report: the id with anything but letters, digits,
    ``-_.`` replaced, so any id stays a plain file name."""
    return re.sub(r"[^\w.\-]", "_", run_id).lstrip(".") + ".html"


def write_run_reports(results_url: str, output_dir: str, run_id: str, **options: Any) -> str:
    """``output_dir/reports/<run id>.html`` for run ``run_id`` (reports of earlier runs are kept,
    so a rerun that skips every track leaves the first run's figures in place) and the index
    ``output_dir/report.html`` linking every run's report, newest first. ``options`` go to
    write_report. Returns the run's report path."""
    path = write_report(
        results_url,
        os.path.join(output_dir, REPORTS_DIR, run_report_name(run_id)),
        run_id,
        **options,
    )
    write_index(results_url, os.path.join(output_dir, "report.html"))
    return path


def write_index(results_url: str, index_html: str) -> str:
    """The runs table as a page linking each run's report under ``reports/`` next to it."""
    reports = os.path.join(os.path.dirname(os.path.abspath(index_html)), REPORTS_DIR)
    runs = data.load_runs(results_url)
    hrefs = {}
    for run in runs:
        name = run_report_name(run["run_id"])
        exists = os.path.isfile(os.path.join(reports, name))
        hrefs[run["run_id"]] = f"{REPORTS_DIR}/{urllib.parse.quote(name)}" if exists else None
    with open(index_html, "w", encoding="utf-8") as f:
        f.write(pages.index_page(runs, hrefs))
    return index_html


def _upload_folder(local_dir: str, remote_dir: str) -> None:
    """Copy every file under ``local_dir`` to ``remote_dir`` (gs://..., s3://...), each
    atomically, with its content type."""
    for folder, _, names in os.walk(local_dir):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, local_dir).split(os.sep)
            mime = _MIME_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
            with open(path, "rb") as src:
                storage.write_atomic(storage.join(remote_dir, *rel), src.read(), mime_type=mime)
