"""The run report: an offline HTML page (plus page files) per run, read from the results table.

``stembeam report --results URL [--run RUN_ID] --output report.html`` writes:

- ``report.html``: the run summary, the failed tracks with their reasons, SDR/SIR/SAR box plots over
  tracks with published medians as reference lines, a sortable per-track table, and the first page
  of per-track cards (spectrograms of the mixture and each stem, audio players);
- ``report-p2.html``, ``report-p3.html``...: the remaining track cards, ``page_size`` tracks a page;
- ``report_media/``: short OGG/Vorbis excerpts, only for audio the page cannot link to (remote
  files, or formats browsers do not play).

Spectrograms and excerpts are made for the first ``media_pages`` pages only (the cost is a decode and
an STFT of ``excerpt_s`` seconds per file); later pages still link local audio files. Pages use no
external CSS/JS/fonts, so they work offline; every value from the table is HTML-escaped.
"""
from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import html
import io
import json
import logging
import math
import os
import posixpath
import re
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import Any, BinaryIO, Mapping, Sequence

import numpy as np

from transforms.results_schema import ALL_STEMS, METRICS, RESULTS_TABLE, RUNS_TABLE

_LOG = logging.getLogger(__name__)

# Published MUSDB18 test-set median SDRs in dB (museval BSSEval v4), drawn as reference lines.
# Spleeter paper (JOSS 2020), 4stems with multichannel Wiener filtering; open-unmix README, UMX.
PUBLISHED_SDR: dict[str, dict[str, float]] = {
    "Spleeter 4stems (Wiener)": {"vocals": 6.86, "drums": 6.71, "bass": 5.51, "other": 4.55},
    "Open-Unmix UMX": {"vocals": 6.32, "drums": 5.73, "bass": 5.23, "other": 4.02},
}
PLOT_METRICS = ("sdr", "sir", "sar")
# File extensions Chromium/Firefox play in <audio>; anything else gets an excerpt.
PLAYABLE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm"})
SPECTROGRAM_SHAPE = (64, 240)  # (log-frequency rows, time columns) pixels
SPECTROGRAM_RANGE_DB = 80.0
FAILED_LISTED = 1000  # failures listed in full on the main page; the rest are counted


@dataclass(frozen=True)
class Summary:
    """What the run did: from its `runs` row, fields it lacks aggregated from the `results` rows."""

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
    """Render the report of run `run_id` (the latest run when None) and return the main page's path.

    `results_url` is a SQLAlchemy URL (sqlite:///..., postgresql://...) holding the `results` and
    `runs` tables; `output_html` a local path, or a remote one (gs://...: rendered in a temporary
    folder with excerpts for all audio, then copied; earlier pages there are not removed). Track cards go `page_size` to a page; spectrograms and
    excerpts are rendered for the first `media_pages` pages. With `link_local_audio=False`, players use
    excerpts instead of linking local files (a report that can be moved without the stems).
    """
    if page_size < 1 or media_pages < 0 or excerpt_s <= 0:
        raise ValueError("page_size must be >= 1, media_pages >= 0 and excerpt_s > 0")
    if is_remote(output_html):
        with tempfile.TemporaryDirectory(prefix="stembeam-report-") as tmp:
            write_report(results_url, os.path.join(tmp, posixpath.basename(output_html)), run_id,
                         page_size=page_size, media_pages=media_pages, excerpt_s=excerpt_s,
                         link_local_audio=False)
            _upload_folder(tmp, posixpath.dirname(output_html))
        return output_html
    run_id, run_row, rows = load_run(results_url, run_id)
    summary = summarize(run_id, run_row, rows)
    output_html = os.path.abspath(output_html)
    out_dir = os.path.dirname(output_html)
    os.makedirs(out_dir, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(output_html))
    ext = ext or ".html"
    page_names = [base + ext]
    cards = [row for row in rows if row.get("status") != "failed"]
    n_pages = max(1, math.ceil(len(cards) / page_size))
    page_names += [f"{base}-p{n}{ext}" for n in range(2, n_pages + 1)]
    page_file = re.compile(rf"{re.escape(base)}-p\d+{re.escape(ext)}")
    for name in os.listdir(out_dir):  # pages of an earlier, longer report at the same path
        if page_file.fullmatch(name) and name not in page_names:
            os.remove(os.path.join(out_dir, name))
    media = _MediaWriter(out_dir, os.path.join(out_dir, f"{base}_media"), excerpt_s, link_local_audio)

    def card_href(index: int) -> str:
        return f"{urllib.parse.quote(page_names[index // page_size])}#t{index}"

    hrefs = {row["track_id"]: card_href(i) for i, row in enumerate(cards)}
    stems = _stem_order(rows)
    metric_cols = _metric_columns(rows, stems)
    for page in range(n_pages):
        page_cards = "".join(
            _track_card(i, cards[i], media, with_media=page < media_pages, metric_cols=metric_cols)
            for i in range(page * page_size, min(len(cards), (page + 1) * page_size))
        )
        nav = _page_nav(page_names, page)
        tracks_title = f"Tracks {page * page_size + 1}–{min(len(cards), (page + 1) * page_size)} of {len(cards)}"
        body = [f'<h1>stembeam run <span class="id">{_esc(run_id)}</span></h1>']
        if page == 0:
            body += [
                _summary_section(summary),
                _failures_section(rows),
                _metrics_section(rows, stems, metric_cols),
                _table_section(rows, metric_cols, hrefs),
            ]
        else:
            body.append(f'<p><a href="{urllib.parse.quote(page_names[0])}">Back to the run summary</a></p>')
        body.append(
            f'<section id="tracks"><h2>{_esc(tracks_title) if cards else "Tracks"}</h2>{nav}'
            f'{page_cards or "<p>No separated tracks in this run.</p>"}{nav}'
            f'{_media_note(media_pages, page_size, n_pages)}</section>'
        )
        with open(os.path.join(out_dir, page_names[page]), "w", encoding="utf-8") as f:
            f.write(_page(f"stembeam run {run_id}", "".join(body)))
    return output_html


REPORTS_DIR = "reports"  # OUTPUT/reports/<run id>.html: one report per run


def run_report_name(run_id: str) -> str:
    """The file name of run ``run_id``'s report: the id with anything but letters, digits,
    ``-_.`` replaced, so any id stays a plain file name."""
    return re.sub(r"[^\w.\-]", "_", run_id).lstrip(".") + ".html"


def write_run_reports(results_url: str, output_dir: str, run_id: str, **options: Any) -> str:
    """``output_dir/reports/<run id>.html`` for run ``run_id`` (reports of earlier runs are kept,
    so a rerun that skips every track leaves the first run's figures in place) and the index
    ``output_dir/report.html`` linking every run's report, newest first. ``options`` go to
    write_report. Returns the run's report path."""
    path = write_report(results_url, os.path.join(output_dir, REPORTS_DIR,
                                                  run_report_name(run_id)), run_id, **options)
    write_index(results_url, os.path.join(output_dir, "report.html"))
    return path


def write_index(results_url: str, index_html: str) -> str:
    """The runs table as a page linking each run's report under ``reports/`` next to it."""
    import sqlalchemy as sa

    reports = os.path.join(os.path.dirname(os.path.abspath(index_html)), REPORTS_DIR)
    engine = sa.create_engine(results_url)
    try:
        with engine.connect() as conn:
            runs = [dict(r) for r in conn.execute(sa.text(
                f"SELECT * FROM {RUNS_TABLE} ORDER BY started_at DESC, run_id DESC")).mappings()]
    finally:
        engine.dispose()
    head = ("Run", "Started (UTC)", "Model", "Input", "OK", "Skipped", "Failed", "Audio",
            "Real time")
    rows = []
    for run in runs:
        name = run_report_name(run["run_id"])
        link = (f'<a href="{REPORTS_DIR}/{urllib.parse.quote(name)}">{_esc(run["run_id"])}</a>'
                if os.path.isfile(os.path.join(reports, name)) else _esc(run["run_id"]))
        cells = (_when(run.get("started_at")), run.get("model"), run.get("input"),
                 run.get("tracks_ok"), run.get("tracks_skipped"), run.get("tracks_failed"),
                 _audio_amount(_num(run.get("audio_s")) or 0.0),
                 _fmt(run.get("realtime_factor")) + "x")
        rows.append(f"<tr><td>{link}</td>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) +
                    "</tr>")
    body = ('<h1>stembeam runs</h1><table class="failures"><thead><tr>' +
            "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows) +
            "</tbody></table>")
    with open(index_html, "w", encoding="utf-8") as f:
        f.write(_page("stembeam runs", body))
    return index_html


def _upload_folder(local_dir: str, remote_dir: str) -> None:
    """Copy every file under local_dir to remote_dir (gs://...) through Beam FileSystems."""
    from apache_beam.io.filesystems import FileSystems

    for folder, _, names in os.walk(local_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), local_dir).replace(os.sep, "/")
            mime = "text/html" if name.endswith((".html", ".htm")) else "audio/ogg"
            with open(os.path.join(folder, name), "rb") as src, \
                    FileSystems.create(f"{remote_dir}/{rel}", mime_type=mime) as dst:
                dst.write(src.read())


def load_run(results_url: str, run_id: str | None) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
    """Read one run: (run_id, its `runs` row or None, its `results` rows sorted by track_id)."""
    import sqlalchemy as sa

    from pipeline.validate import redact_url

    if results_url.startswith("bigquery:"):
        raise ValueError("the report reads SQL results tables; export the BigQuery table to SQL first")
    try:
        url = sa.engine.make_url(results_url)
    except sa.exc.ArgumentError:
        raise ValueError(f"not a SQLAlchemy URL: {redact_url(results_url)!r} (e.g. sqlite:///out/results.sqlite)") from None
    where = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not os.path.isfile(url.database):
        raise LookupError(f"no SQLite file at {url.database}")  # connecting would create an empty one
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
                found = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
                run_row = dict(found) if found is not None else None
            query = sa.select(results).where(results.c.run_id == run_id).order_by(results.c.track_id)
            rows = [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()
    if run_row is None and not rows:
        raise LookupError(f"run {run_id!r} not found in {where}")
    return run_id, run_row, rows


def _latest_run_id(conn: Any, results: Any, runs: Any) -> str | None:
    """The run with the latest activity: max of runs.started_at/finished_at and results.finished_at."""
    import sqlalchemy as sa

    latest: dict[str, str] = {}

    def note(run: str, when: Any) -> None:
        if when is not None and str(when) > latest.get(run, ""):
            latest[run] = str(when)
        latest.setdefault(run, "")

    if "finished_at" in results.c:
        for run, when in conn.execute(
            sa.select(results.c.run_id, sa.func.max(results.c.finished_at)).group_by(results.c.run_id)
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


def summarize(run_id: str, run_row: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]]) -> Summary:
    """The run's figures from its `runs` row, each missing one aggregated over its `results` rows."""
    counts = collections.Counter(row.get("status") for row in rows)
    ok_rows = [row for row in rows if row.get("status") == "ok"]
    audio = sum(_num(row.get("duration_s")) or 0.0 for row in ok_rows)
    walls = [_num(row.get("wall_s")) for row in ok_rows]
    track_wall = sum(w for w in walls if w is not None) if any(w is not None for w in walls) else None
    models = collections.Counter(row.get("model") for row in rows if row.get("model"))
    finished = sorted((row["finished_at"] for row in rows if row.get("finished_at") is not None), key=str)
    aggregated = {
        "tracks_ok": counts["ok"],
        "tracks_skipped": counts["skipped"],
        "tracks_failed": counts["failed"],
        "audio_s": audio,
        "wall_s": track_wall,
        "model": models.most_common(1)[0][0] if models else "",
        "started_at": finished[0] if finished else None,
        "finished_at": finished[-1] if finished else None,
    }
    run = dict(run_row or {})
    missing = [name for name in aggregated if run.get(name) is None or run.get(name) == ""]

    def pick(name: str) -> Any:
        return aggregated[name] if name in missing else run[name]

    wall = _num(pick("wall_s"))
    audio_s = _num(pick("audio_s")) or 0.0
    rtf = _num(run.get("realtime_factor")) if "wall_s" not in missing else None
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
        started_at=_when(pick("started_at")),
        finished_at=_when(pick("finished_at")),
        input=str(run.get("input") or ""),
        output=str(run.get("output") or ""),
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# Audio: reading excerpts, spectrogram images, players


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than file:// (gs://, s3://...): read through Beam FileSystems."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() != "file" and scheme.isalnum()


def _local_path(uri: str) -> str:
    return urllib.parse.unquote(uri[len("file://"):]) if uri.lower().startswith("file://") else uri


def _open_binary(uri: str) -> BinaryIO:
    if is_remote(uri):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)
    return open(_local_path(uri), "rb")


def read_excerpt(uri: str, start_s: float, length_s: float) -> tuple[np.ndarray, int]:
    """Decode `length_s` seconds from `start_s` of a local or remote audio file.

    Returns (samples (n, C) float32 in [-1, 1], sample rate in Hz); n is shorter at the file's end.
    """
    import soundfile as sf

    with _open_binary(uri) as f, sf.SoundFile(f) as snd:
        rate = snd.samplerate
        if snd.seekable() and start_s > 0:
            snd.seek(min(int(start_s * rate), max(0, snd.frames - 1)))
        return snd.read(int(length_s * rate), dtype="float32", always_2d=True), rate


def excerpt_start(duration_s: float | None, length_s: float) -> float:
    """Where excerpts start, seconds: a quarter into the track, so intros are skipped, within bounds."""
    if not duration_s or duration_s <= length_s:
        return 0.0
    return min(duration_s * 0.25, duration_s - length_s)


def spectrogram_db(samples: np.ndarray, rate: int, shape: tuple[int, int] = SPECTROGRAM_SHAPE) -> np.ndarray:
    """Power spectrogram of the channel mean, dB, on a log-frequency grid (rows, 40 Hz..16 kHz).

    samples (n, C) float32 -> (rows, cols) float64: Hann STFT of 2048 (hop 512, or longer so that
    about two frames fall in a column), band maxima over log-spaced frequency bands, frame means over
    equal time slices.
    """
    rows, cols = shape
    frame = 2048
    hop = max(512, samples.shape[0] // (2 * cols))
    mono = samples.mean(axis=1, dtype=np.float64)
    if mono.size < frame:
        mono = np.pad(mono, (0, frame - mono.size))
    frames = np.lib.stride_tricks.sliding_window_view(mono, frame)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(frame + 1)[:-1], axis=1)) ** 2  # (n_frames, bins)
    freqs = np.fft.rfftfreq(frame, 1.0 / rate)
    edges = np.geomspace(40.0, min(16000.0, rate / 2), rows + 1)
    starts = np.minimum(np.searchsorted(freqs, edges[:-1]), freqs.size - 1)
    banded = np.maximum.reduceat(power, starts, axis=1)  # empty bands take their nearest bin
    n = banded.shape[0]
    slices = np.minimum((np.arange(cols) * n) // cols, n - 1)
    timed = np.add.reduceat(banded, slices, axis=0) / np.maximum(np.diff(np.append(slices, n)), 1)[:, None]
    return 10.0 * np.log10(timed.T + 1e-12)


def spectrogram_jpeg(db: np.ndarray, top_db: float) -> bytes:
    """(rows, cols) dB -> JPEG bytes (low frequencies at the bottom), colours over [top_db - 80, top_db].

    JPEG at quality 85 is about a quarter of the PNG's size for these noisy images (~7 KB vs ~27 KB).
    """
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, db, cmap="magma", vmin=top_db - SPECTROGRAM_RANGE_DB, vmax=top_db,
                            origin="lower", format="jpeg", pil_kwargs={"quality": 85})
    return buf.getvalue()


class _MediaWriter:
    """Spectrograms and players for one report: links local files, writes excerpts for the rest."""

    def __init__(self, out_dir: str, media_dir: str, excerpt_s: float, link_local: bool) -> None:
        self.out_dir = out_dir
        self.media_dir = media_dir
        self.excerpt_s = excerpt_s
        self.link_local = link_local

    def link(self, uri: str) -> str | None:
        """A relative href from the report's folder to a local, browser-playable file, else None."""
        if not self.link_local or is_remote(uri):
            return None
        path = os.path.abspath(_local_path(uri))
        if os.path.splitext(path)[1].lower() not in PLAYABLE_EXTENSIONS or not os.path.isfile(path):
            return None
        try:
            rel = os.path.relpath(path, self.out_dir)
        except ValueError:  # another drive on Windows
            return None
        return "/".join(urllib.parse.quote(part) for part in rel.split(os.sep))

    def write_excerpt(self, name: str, samples: np.ndarray, rate: int) -> str:
        """Write samples as OGG/Vorbis under the media folder; return its href from the report."""
        import soundfile as sf

        os.makedirs(self.media_dir, exist_ok=True)
        path = os.path.join(self.media_dir, name + ".ogg")
        sf.write(path, samples, rate, format="OGG", subtype="VORBIS", compression_level=0.6)
        rel = os.path.relpath(path, self.out_dir)
        return "/".join(urllib.parse.quote(part) for part in rel.split(os.sep))


def _track_card(index: int, row: Mapping[str, Any], media: _MediaWriter, *, with_media: bool,
                metric_cols: Sequence[tuple[str, str]]) -> str:
    """One track: title, facts, and per source (mixture, each stem) a spectrogram and a player."""
    sources = [("mixture", row.get("source_uri") or "")] + list(_stems_of(row).items())
    duration = _num(row.get("duration_s"))
    start = excerpt_start(duration, media.excerpt_s)
    decoded: dict[str, tuple[np.ndarray, int] | str] = {}
    if with_media:
        for label, uri in sources:
            if not uri:
                decoded[label] = "no file recorded"
                continue
            try:
                decoded[label] = read_excerpt(uri, start, media.excerpt_s)
            except Exception as exc:  # a missing or unreadable file is reported on the card, not fatal
                _LOG.warning("report: cannot read %s: %s", uri, exc)
                decoded[label] = f"cannot read: {exc}"
    spectra = {label: spectrogram_db(*got) for label, got in decoded.items() if not isinstance(got, str)}
    top_db = max((float(s.max()) for s in spectra.values()), default=0.0)
    figures = []
    for n, (label, uri) in enumerate(sources):
        got = decoded.get(label)
        if label in spectra:
            img = (f'<img class="spec" alt="spectrogram of {_esc(label)}" '
                   f'src="data:image/jpeg;base64,{_b64(spectrogram_jpeg(spectra[label], top_db))}">')
        elif isinstance(got, str):
            img = f'<div class="nospec">{_esc(got)}</div>'
        else:
            img = ""
        href = media.link(uri) if uri else None
        if href is None and got is not None and not isinstance(got, str):
            samples, rate = got
            try:
                href = media.write_excerpt(f"{index}-{n}", samples, rate)
            except Exception as exc:
                _LOG.warning("report: cannot write excerpt of %s: %s", uri, exc)
        if href is not None:
            player = f'<audio controls preload="none" src="{_esc(href)}"></audio>'
        elif uri and not with_media:
            player = '<div class="nospec">no player: excerpts of remote files are made for the first pages only</div>'
        else:
            player = ""
        figures.append(
            f'<figure><figcaption>{_esc(label)} <span class="uri" title="{_esc(uri)}">'
            f'{_esc(os.path.basename(uri.rstrip("/")))}</span></figcaption>{img}{player}</figure>'
        )
    facts = [_esc(row.get("status") or "")]
    if duration is not None:
        facts.append(_clock(duration))
    for key, unit in (("sample_rate", " Hz"), ("channels", " ch"), ("codec", "")):
        if row.get(key) not in (None, ""):
            facts.append(_esc(f"{row[key]}{unit}"))
    rtf = _num(row.get("realtime_factor"))
    if rtf is not None:
        facts.append(f"{rtf:.1f}× real time")
    sdr = {stem: _num(row.get(f"sdr_{stem}")) for metric, stem in metric_cols if metric == "sdr"}
    sdrs = [f"SDR {_esc(stem)} {value:.2f} dB" for stem, value in sdr.items() if value is not None]
    excerpt_note = (f'<p class="note">Spectrograms: {_clock(start)}–{_clock(start + media.excerpt_s)}, '
                    f'shared colour scale ({SPECTROGRAM_RANGE_DB:.0f} dB range).</p>' if spectra else "")
    return (
        f'<section class="track" id="t{index}"><h3>{_esc(row["track_id"])}</h3>'
        f'<p class="facts">{" · ".join(facts + sdrs)}</p>'
        f'<div class="sources">{"".join(figures)}</div>{excerpt_note}</section>'
    )


# ---------------------------------------------------------------------------------------------
# Page sections


def _summary_section(s: Summary) -> str:
    items = [
        ("Tracks ok", f"{s.ok:,}"),
        ("Skipped", f"{s.skipped:,}"),
        ("Failed", f"{s.failed:,}"),
        ("Audio", _audio_amount(s.audio_s)),
        ("Wall time", _clock(s.wall_s) if s.wall_s is not None else "–"),
        ("Real-time factor", f"{s.realtime_factor:.1f}×" if s.realtime_factor is not None else "–"),
        ("Model", s.model or "–"),
        ("Date", f"{s.started_at} → {s.finished_at}" if s.started_at != s.finished_at else s.started_at or "–"),
    ]
    cells = "".join(f'<div class="stat"><div class="k">{_esc(k)}</div><div class="v">{_esc(v)}</div></div>'
                    for k, v in items)
    extra = "".join(f"<li>{_esc(k)}: <code>{_esc(v)}</code></li>"
                    for k, v in (("input", s.input), ("output", s.output)) if v)
    return (f'<section id="summary"><h2>Summary</h2><div class="stats">{cells}</div>'
            f'<ul class="note">{extra}<li>Figures: {_esc(s.source)}.</li></ul></section>')


def _failures_section(rows: Sequence[Mapping[str, Any]]) -> str:
    failed = [row for row in rows if row.get("status") == "failed"]
    if not failed:
        return '<section id="failures"><h2>Failed tracks</h2><p>None.</p></section>'
    body = "".join(
        f'<tr><td class="tid">{_esc(row["track_id"])}</td><td><code>{_esc(row.get("source_uri") or "")}</code></td>'
        f'<td class="err">{_esc(row.get("error") or "(no reason recorded)")}</td></tr>'
        for row in failed[:FAILED_LISTED]
    )
    more = (f'<p class="note">… and {len(failed) - FAILED_LISTED:,} more: query the results table '
            f"(status = 'failed').</p>" if len(failed) > FAILED_LISTED else "")
    return (f'<section id="failures"><h2>Failed tracks ({len(failed):,})</h2>'
            f'<table class="failures"><thead><tr><th>Track</th><th>Source</th><th>Reason</th></tr></thead>'
            f"<tbody>{body}</tbody></table>{more}</section>")


def _metrics_section(rows: Sequence[Mapping[str, Any]], stems: Sequence[str],
                     metric_cols: Sequence[tuple[str, str]]) -> str:
    values = _metric_values(rows, metric_cols)
    plotted = [m for m in PLOT_METRICS if any(values.get((m, s)) for s in stems)]
    if not plotted:
        return ""
    plot_stems = [s for s in stems if any(values.get((m, s)) for m in plotted)]
    png = metrics_boxplot_png(values, plot_stems, plotted)
    head = "".join(f"<th>{_esc(s)}</th>" for s in plot_stems)
    lines = []
    for m in plotted:
        cells = "".join(f"<td>{_fmt(np.median(values[(m, s)]) if values.get((m, s)) else None)}</td>"
                        for s in plot_stems)
        lines.append(f"<tr><th>{m.upper()} (this run)</th>{cells}</tr>")
    for name, ref in PUBLISHED_SDR.items():
        cells = "".join(f"<td>{_fmt(ref.get(s))}</td>" for s in plot_stems)
        lines.append(f'<tr class="ref"><th>SDR, {_esc(name)}</th>{cells}</tr>')
    n_tracks = max(len(v) for v in values.values())
    return (
        f'<section id="metrics"><h2>Separation quality (museval BSSEval v4, {n_tracks} tracks)</h2>'
        f'<img class="plot" alt="SDR, SIR and SAR per stem over tracks" src="data:image/png;base64,{_b64(png)}">'
        f'<table class="medians"><thead><tr><th>median over tracks, dB</th>{head}</tr></thead>'
        f'<tbody>{"".join(lines)}</tbody></table>'
        '<p class="note">Each box: one value per track (the median over 1 s frames). Reference lines: '
        "published medians on the MUSDB18 test set (50 tracks); comparable only when this run is "
        "MUSDB18 test.</p></section>"
    )


def metrics_boxplot_png(values: Mapping[tuple[str, str], Sequence[float]], stems: Sequence[str],
                        metrics: Sequence[str]) -> bytes:
    """SiSEC-style figure: one panel per metric, one box per stem over tracks, published SDR lines."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(3.6 * len(metrics) + 0.4, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    styles = [("#d62728", "--"), ("#1f77b4", ":")]
    for ax, metric in zip(axes, metrics):
        data = [list(values.get((metric, s), ())) for s in stems]
        ax.boxplot(data, tick_labels=list(stems), widths=0.6, medianprops={"color": "black"},
                   flierprops={"markersize": 3})
        if metric == "sdr":
            handles = []
            for (name, ref), (color, dash) in zip(PUBLISHED_SDR.items(), styles):
                for pos, stem in enumerate(stems, start=1):
                    if stem in ref:
                        ax.hlines(ref[stem], pos - 0.4, pos + 0.4, colors=color, linestyles=dash, linewidth=1.6)
                if any(stem in ref for stem in stems):
                    handles.append(Line2D([], [], color=color, linestyle=dash, label=f"{name} median"))
            if handles:
                ax.legend(handles=handles, fontsize=7, loc="lower left")
        ax.set_title(metric.upper())
        ax.set_ylabel("dB")
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _table_section(rows: Sequence[Mapping[str, Any]], metric_cols: Sequence[tuple[str, str]],
                   hrefs: Mapping[str, str]) -> str:
    """The per-track table as embedded JSON, drawn 100 rows at a time by _TABLE_JS (sortable).

    JSON: {"columns": [[label, "text"|"num", digits]], "rows": [[track_id, card href or "", status,
    numbers (null when missing)...]]}; about 130 bytes a row with 16 metric columns.
    """
    columns = [["Track", "text", 0], ["Status", "text", 0], ["Duration s", "num", 1], ["× real time", "num", 1]]
    columns += [[f"{m.upper()} {s}", "num", 2] for m, s in metric_cols]
    data = [
        [row["track_id"], hrefs.get(row["track_id"], ""), row.get("status") or ""]
        + [_round(row.get(k), 1) for k in ("duration_s", "realtime_factor")]
        + [_round(row.get(f"{m}_{s}"), 2) for m, s in metric_cols]
        for row in rows
    ]
    return (f'<section id="table"><h2>Per-track results ({len(rows):,})</h2>'
            '<p class="note">Click a column to sort over all tracks; click again to reverse.</p>'
            f'<script type="application/json" id="results-data">{_json_for_script({"columns": columns, "rows": data})}</script>'
            '<div class="pager"><button type="button" id="results-prev">◀</button> <span id="results-info"></span> '
            '<button type="button" id="results-next">▶</button></div>'
            '<div class="scroll"><table class="sortable" id="results"><thead><tr></tr></thead><tbody></tbody></table></div>'
            "<noscript><p>The table needs JavaScript; the results table holds the same figures.</p></noscript>"
            "</section>")


def _page_nav(names: Sequence[str], current: int) -> str:
    if len(names) < 2:
        return ""
    links = "".join(f'<span class="cur">{i + 1}</span>' if i == current
                    else f'<a href="{urllib.parse.quote(name)}">{i + 1}</a>' for i, name in enumerate(names))
    return f'<nav class="pages">Pages: {links}</nav>'


def _media_note(media_pages: int, page_size: int, n_pages: int) -> str:
    if n_pages <= media_pages:
        return ""
    return (f'<p class="note">Spectrograms and excerpts are rendered for the first {media_pages} page(s) '
            f"({media_pages * page_size} tracks); later pages link local audio files only. Raise "
            "<code>--media-pages</code> to render more.</p>")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:0 20px 40px;color:#222}
h1{font-size:22px;margin:18px 0 8px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:15px;margin:0 0 4px;word-break:break-all}.id{font-family:monospace;font-weight:normal}
.stats{display:flex;flex-wrap:wrap;gap:10px}.stat{background:#f4f5f7;border-radius:6px;padding:8px 14px;min-width:110px}
.stat .k{font-size:12px;color:#666}.stat .v{font-size:18px;font-weight:600}
.note{color:#666;font-size:12px}code{font-size:12px}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e4e4e4;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.pager{margin:4px 0;font-size:13px}.err{color:#a40000;white-space:pre-wrap}
.tid{overflow-wrap:anywhere;min-width:9em;max-width:360px}.scroll{max-height:520px;overflow:auto;border:1px solid #e4e4e4}
table.sortable th{cursor:pointer;position:sticky;top:0;background:#f4f5f7;user-select:none}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
.medians td{text-align:right}.medians tr.ref{color:#555}img.plot{max-width:100%;display:block;margin:8px 0}
.track{border:1px solid #e4e4e4;border-radius:6px;padding:10px 12px;margin:12px 0}.facts{margin:0 0 6px;color:#444}
.sources{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px}figure{margin:0;min-width:0}figcaption{font-weight:600;font-size:12px}
.uri{font-weight:normal;color:#888;word-break:break-all}img.spec{width:100%;height:64px;display:block;border-radius:3px}
.nospec{font-size:12px;color:#a40000;min-height:20px}audio{width:100%;height:32px;margin-top:4px}
nav.pages{margin:8px 0;display:flex;flex-wrap:wrap;gap:4px}nav.pages a,nav.pages .cur{padding:1px 7px;border:1px solid #ccc;border-radius:3px}
nav.pages .cur{background:#222;color:#fff}
"""

_TABLE_JS = """
(function () {
  var holder = document.getElementById("results-data");
  if (!holder) return;
  var data = JSON.parse(holder.textContent), cols = data.columns, rows = data.rows;
  var table = document.getElementById("results"), head = table.tHead.rows[0], body = table.tBodies[0];
  var info = document.getElementById("results-info"), prev = document.getElementById("results-prev"),
      next = document.getElementById("results-next"), perPage = 100, page = 0, sortCol = -1, dir = 1;
  function value(r, i) { return i === 0 ? r[0] : r[i + 1]; }  // r[1] is the track's card link
  function render() {
    var frag = document.createDocumentFragment(), first = page * perPage;
    rows.slice(first, first + perPage).forEach(function (r) {
      var tr = document.createElement("tr");
      cols.forEach(function (c, i) {
        var td = document.createElement("td"), v = value(r, i);
        if (i === 0 && r[1]) {
          var a = document.createElement("a"); a.setAttribute("href", r[1]); a.textContent = v; td.appendChild(a);
        } else if (c[1] === "num") {
          td.className = "n"; td.textContent = v === null ? "" : v.toFixed(c[2]);
        } else {
          td.textContent = v;
        }
        if (i === 0) td.className = "tid";
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    });
    body.textContent = "";
    body.appendChild(frag);
    info.textContent = rows.length ? "rows " + (first + 1) + "–" + Math.min(rows.length, first + perPage) +
                                     " of " + rows.length : "no rows";
    prev.disabled = page === 0;
    next.disabled = first + perPage >= rows.length;
  }
  function sortBy(i, th) {
    dir = sortCol === i ? -dir : 1;
    sortCol = i;
    var numeric = cols[i][1] === "num";
    rows.sort(function (a, b) {
      var x = value(a, i), y = value(b, i);
      if (x === null || y === null) return (x === null) - (y === null);  // missing values last
      return dir * (numeric ? x - y : String(x).localeCompare(String(y)));
    });
    Array.prototype.forEach.call(head.cells, function (h) { delete h.dataset.dir; });
    th.dataset.dir = dir > 0 ? "asc" : "desc";
    page = 0;
    render();
  }
  cols.forEach(function (c, i) {
    var th = document.createElement("th");
    th.textContent = c[0];
    th.addEventListener("click", function () { sortBy(i, th); });
    head.appendChild(th);
  });
  prev.addEventListener("click", function () { page -= 1; render(); });
  next.addEventListener("click", function () { page += 1; render(); });
  render();
})();
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>{body}"
            f"<script>{_TABLE_JS}</script></body></html>")


# ---------------------------------------------------------------------------------------------
# Small helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _num(value: Any) -> float | None:
    """A finite float, or None for NULL / NaN / non-numbers."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _fmt(value: Any, digits: int = 2) -> str:
    num = _num(value)
    return "" if num is None else f"{num:.{digits}f}"


def _when(value: Any) -> str:
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
            value = value.astimezone(dt.timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _audio_amount(seconds: float) -> str:
    """Hours of audio, in minutes or seconds when under a tenth of an hour."""
    if seconds >= 360:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _round(value: Any, digits: int) -> float | None:
    num = _num(value)
    return None if num is None else round(num, digits)


def _json_for_script(value: Any) -> str:
    """JSON safe inside a <script> element: <, > and & as \\u escapes, so no tag can close it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _stems_of(row: Mapping[str, Any]) -> dict[str, str]:
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


def _stem_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Stems in the order the run wrote them, then any other known stem."""
    order: dict[str, None] = {}
    for row in rows:
        order.update(dict.fromkeys(_stems_of(row)))
    order.update(dict.fromkeys(ALL_STEMS))
    return list(order)


def _metric_columns(rows: Sequence[Mapping[str, Any]], stems: Sequence[str]) -> list[tuple[str, str]]:
    """(metric, stem) pairs with at least one value in the run, grouped by metric."""
    return [(m, s) for m in METRICS for s in stems if any(_num(row.get(f"{m}_{s}")) is not None for row in rows)]


def _metric_values(rows: Sequence[Mapping[str, Any]],
                   metric_cols: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[float]]:
    values: dict[tuple[str, str], list[float]] = {}
    for m, s in metric_cols:
        got = [_num(row.get(f"{m}_{s}")) for row in rows]
        values[(m, s)] = [v for v in got if v is not None]
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``stembeam report``."""
    parser.add_argument("--results", required=True,
                        help="SQLAlchemy URL of the results table (sqlite:///OUT/results.sqlite, "
                             "postgresql://user@host/db)")
    parser.add_argument("--run", dest="run_id", default=None,
                        help="run id (default: the latest run)")
    parser.add_argument("--output", default="report.html",
                        help="main page path, local or gs:// (default %(default)s)")
    parser.add_argument("--page-size", type=int, default=50,
                        help="track cards per page (default %(default)s)")
    parser.add_argument("--media-pages", type=int, default=4,
                        help="pages that get spectrograms and excerpts (default %(default)s)")
    parser.add_argument("--excerpt-seconds", type=float, default=20.0,
                        help="excerpt length, seconds (default %(default)s)")
    parser.add_argument("--no-local-links", action="store_true",
                        help="use excerpts next to the report instead of linking local stem files")


def main(argv: Sequence[str] | None = None) -> int:
    """``stembeam report ...``: 0 when written, 2 (one line on stderr) when the options, the
    database or the run are wrong."""
    parser = argparse.ArgumentParser(prog="stembeam report",
                                     description="Write a run's self-contained HTML report.")
    add_arguments(parser)
    return run_main(parser.parse_args(argv))


def run_main(args: argparse.Namespace) -> int:
    """Writes the report ``args`` (from add_arguments) describe."""
    import sqlalchemy as sa

    try:
        path = write_report(args.results, args.output, args.run_id, page_size=args.page_size,
                            media_pages=args.media_pages, excerpt_s=args.excerpt_seconds,
                            link_local_audio=not args.no_local_links)
    except (LookupError, ValueError, OSError) as exc:
        print(f"stembeam report: {exc}", file=sys.stderr)
        return 2
    except sa.exc.SQLAlchemyError as exc:  # unreachable server, refused login, not our tables
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"stembeam report: cannot read {args.results}: {reason}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
