"""The run report: rendered from a real SQLite results table and real generated audio files.

Structure is checked with an HTML parser; the page is then loaded in headless Chromium (Debian's
`chromium`) to check what a browser builds from it: decoded plot images, audio players that load
their files, sorting, and that HTML in track ids and error strings shows as text.
"""

from __future__ import annotations

import base64
import datetime as dt
import html.parser
import io
import json
import shutil
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import sqlalchemy as sa

from stembeam.pipeline import report
from stembeam.pipeline.report import media
from stembeam.transforms.results_schema import (
    RESULT_COLUMNS,
    RESULT_KEY,
    RESULTS_TABLE,
    RUN_COLUMNS,
    RUN_KEY,
    RUNS_TABLE,
)

SR = 44100
STEMS = ("vocals", "drums", "bass", "other")
EVIL_ID = '<b>x</b>&"'
EVIL_ERROR = '<script>alert("pwned")</script> could not decode: truncated FLAC frame'
SQL_TYPES = {"string": sa.Text, "float": sa.Float, "integer": sa.Integer, "timestamp": sa.DateTime}


def _create_tables(engine: sa.Engine) -> tuple[sa.Table, sa.Table]:
    meta = sa.MetaData()
    tables = tuple(
        sa.Table(
            name,
            meta,
            *(sa.Column(c, SQL_TYPES[t]()) for c, t, _ in columns),
            sa.PrimaryKeyConstraint(*key),
        )
        for name, columns, key in (
            (RESULTS_TABLE, RESULT_COLUMNS, RESULT_KEY),
            (RUNS_TABLE, RUN_COLUMNS, RUN_KEY),
        )
    )
    meta.create_all(engine)
    return tables


def _write_track(folder: Path, seconds: float, seed: int) -> tuple[Path, dict[str, Path]]:
    """Four generated stems (sung tone, drum hits, bass, chord) as FLAC and their sum as WAV."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    hits = np.exp(-30 * (t % 0.5))
    signals = {
        "vocals": 0.3 * np.sin(2 * np.pi * 440 * t + 3 * np.sin(2 * np.pi * 5 * t)),
        "drums": 0.3 * hits * rng.standard_normal(t.size),
        "bass": 0.3 * np.sin(2 * np.pi * 55 * t),
        "other": 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)),
    }
    folder.mkdir(parents=True)
    stems = {}
    for name, mono in signals.items():
        stems[name] = folder / f"{name}.flac"
        sf.write(stems[name], np.stack([mono, 0.8 * mono], axis=1).astype(np.float32), SR)
    mix = folder / "mixture.wav"
    sf.write(mix, sum(sf.read(p, dtype="float32")[0] for p in stems.values()), SR)
    return mix, stems


@dataclass
class Catalog:
    url: str
    root: Path
    sdr_vocals: dict[str, float]
    medians: dict[tuple[str, str], float]
    files: dict[str, tuple[Path, dict[str, Path]]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """run-1 (results rows only) and run-2 (3 ok incl. an HTML id, 1 failed, 1 skipped, a runs
    row)."""
    root = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{root / 'results.sqlite'}"
    engine = sa.create_engine(url)
    results, runs = _create_tables(engine)
    rng = np.random.default_rng(7)
    t0 = dt.datetime(2026, 11, 28, 22, 0, 0)
    files = {}
    rows = []
    metrics: dict[tuple[str, str], list[float]] = {}
    for n, (track, seconds) in enumerate((("alpha", 3.0), ("beta", 4.0), (EVIL_ID, 2.0))):
        mix, stems = _write_track(root / "stems" / f"track{n}", seconds, n)
        files[track] = (mix, stems)
        row = dict(
            run_id="run-2",
            track_id=track,
            source_uri=str(mix),
            status="ok",
            error="",
            duration_s=seconds,
            sample_rate=SR,
            channels=2,
            codec="WAV",
            model="spleeter:4stems",
            stems=json.dumps({k: str(v) for k, v in stems.items()}),
            wall_s=seconds / 2,
            realtime_factor=2.0,
            finished_at=t0 + dt.timedelta(minutes=n + 1),
        )
        for stem in STEMS:
            for metric, centre in (("sdr", 6.0), ("sir", 12.0), ("sar", 7.0), ("isr", 11.0)):
                value = float(centre + rng.normal(scale=2.0))
                row[f"{metric}_{stem}"] = value
                metrics.setdefault((metric, stem), []).append(value)
        rows.append(row)
    gamma_mix, _ = _write_track(root / "stems" / "gamma", 2.0, 9)
    files["gamma"] = (gamma_mix, {})
    skipped_or_failed = dict(run_id="run-2", model="spleeter:4stems", finished_at=t0)
    rows.append(
        {
            **skipped_or_failed,
            "track_id": "gamma",
            "source_uri": str(gamma_mix),
            "status": "skipped",
            "error": "already done",
        }
    )
    rows.append(
        {
            **skipped_or_failed,
            "track_id": "broken",
            "source_uri": "/masters/broken.flac",
            "status": "failed",
            "error": EVIL_ERROR,
        }
    )
    old_mix, _ = _write_track(root / "stems" / "old", 2.0, 11)
    rows.append(
        dict(
            run_id="run-1",
            track_id="old",
            source_uri=str(old_mix),
            status="ok",
            duration_s=90.0,
            wall_s=30.0,
            model="spleeter:2stems",
            finished_at=t0 - dt.timedelta(days=1),
        )
    )
    with engine.begin() as conn:
        for row in rows:  # rows differ in their columns: one statement each
            conn.execute(results.insert().values(**row))
        conn.execute(
            runs.insert(),
            [
                dict(
                    run_id="run-2",
                    started_at=t0,
                    finished_at=t0 + dt.timedelta(minutes=5),
                    input="/masters/*.flac",
                    output=str(root / "stems"),
                    model="spleeter:4stems",
                    tracks_ok=3,
                    tracks_skipped=1,
                    tracks_failed=1,
                    audio_s=9.0,
                    wall_s=4.5,
                    realtime_factor=2.0,
                )
            ],
        )
    engine.dispose()
    return Catalog(
        url,
        root,
        {r["track_id"]: r["sdr_vocals"] for r in rows if "sdr_vocals" in r},
        {k: float(np.median(v)) for k, v in metrics.items()},
        files,
    )


class _Dom(html.parser.HTMLParser):
    """Start tags with attributes, and text with the tag stack it sits in."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.texts: list[tuple[tuple[str, ...], str]] = []
        self._stack: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in {"img", "meta", "br", "input", "link"}:
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            del self._stack[len(self._stack) - 1 - self._stack[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        self.texts.append((tuple(self._stack), data))

    def all(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(a.get(k, "").startswith(v) for k, v in attrs.items())
        ]

    def text_in(self, tag: str) -> list[str]:
        return [d for stack, d in self.texts if tag in stack]


def _image(src: str, kind: str) -> np.ndarray:
    """Decode a data: URI image of the given kind ('png', 'jpeg') into pixels (rows, cols,
    channels)."""
    prefix = f"data:image/{kind};base64,"
    assert src.startswith(prefix)
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(src[len(prefix) :])), format=kind)


def _stats(dom: _Dom) -> dict[str, str]:
    """The summary tiles, label -> value: the page's div texts taken in pairs."""
    texts = dom.text_in("div")
    return dict(zip(texts[0::2], texts[1::2], strict=False))


def _table_data(dom: _Dom) -> dict:
    return json.loads(
        "".join(
            d
            for stack, d in dom.texts
            if stack and stack[-1] == "script" and d.startswith('{"columns"')
        )
    )


def _rendered(catalog: Catalog, name: str, **kwargs) -> tuple[Path, _Dom]:
    out = catalog.root / name / "report.html"
    assert report.write_report(catalog.url, str(out), **kwargs) == str(out)
    return out, _Dom(out.read_text(encoding="utf-8"))


def test_page_structure(catalog: Catalog) -> None:
    out, dom = _rendered(catalog, "plain")
    assert "run-2" in dom.text_in("h1")  # latest run by default
    stats = _stats(dom)
    assert {
        k: stats[k]
        for k in (
            "Tracks ok",
            "Skipped",
            "Failed",
            "Audio",
            "Wall time",
            "Real-time factor",
            "Model",
        )
    } == {
        "Tracks ok": "3",
        "Skipped": "1",
        "Failed": "1",
        "Audio": "9.0 s",
        "Wall time": "0:04",
        "Real-time factor": "2.0×",
        "Model": "spleeter:4stems",
    }
    assert stats["Date"] == "2026-11-28 22:00:00 UTC → 2026-11-28 22:05:00 UTC"
    # The failure and its reason come before the plots; user strings are text, not markup.
    assert EVIL_ERROR in dom.text_in("td")
    text = out.read_text(encoding="utf-8")
    assert text.index('id="failures"') < text.index('id="metrics"') < text.index('id="table"')
    assert "<b>" not in text and "<script>alert" not in text  # nowhere raw, not even in the JSON
    assert len(dom.all("script")) == 2 and not dom.all("b")  # the table's data and its code
    assert dom.text_in("h3").count(EVIL_ID) == 1
    # Box plots: one PNG with the three panels; medians next to it equal numpy's.
    (plot,) = dom.all("img", **{"class": "plot"})
    assert _image(plot["src"], "png").shape[:2] == (360, 1120)
    cells = [c for c in dom.text_in("td") if c.replace(".", "").replace("-", "").isdigit()]
    expected = [f"{catalog.medians[(m, s)]:.2f}" for m in ("sdr", "sir", "sar") for s in STEMS]
    assert cells[: len(expected)] == expected
    # The sortable table's data: every row of the run, metric columns for each stem.
    table = _table_data(dom)
    labels = [c[0] for c in table["columns"]]
    assert labels[:4] == ["Track", "Status", "Duration s", "× real time"]
    assert labels[4:] == [f"{m} {s}" for m in ("SDR", "SIR", "SAR", "ISR") for s in STEMS]
    by_id = {r[0]: r for r in table["rows"]}
    assert sorted(by_id) == sorted([EVIL_ID, "alpha", "beta", "broken", "gamma"])
    assert by_id["alpha"][2:5] == ["ok", 3.0, 2.0] and by_id["alpha"][5] == round(
        catalog.sdr_vocals["alpha"], 2
    )
    assert by_id["broken"][1:] == ["", "failed"] + [None] * 18  # no card, no figures
    # Cards: skipped and ok tracks (failed ones are listed above); a spectrogram per file.
    assert len(dom.all("section", **{"class": "track"})) == 4
    specs = dom.all("img", **{"class": "spec"})
    assert len(specs) == 3 * 5 + 1 and all(
        _image(s["src"], "jpeg").shape[:2] == media.SPECTROGRAM_SHAPE for s in specs
    )
    # Players link the files themselves, relative to the report's folder.
    linked = {(out.parent / urllib.parse.unquote(a["src"])).resolve() for a in dom.all("audio")}
    wanted = {p.resolve() for mix, stems in catalog.files.values() for p in [mix, *stems.values()]}
    assert linked == wanted


def test_spectrogram_puts_a_tone_in_its_band() -> None:
    t = np.arange(2 * SR) / SR
    freq = 47 * SR / 2048  # on an FFT bin (1012 Hz), so no scalloping loss
    tone = np.stack([np.sin(2 * np.pi * freq * t)] * 2, axis=1).astype(np.float32)
    db = media.spectrogram_db(tone, SR)
    edges = np.geomspace(40.0, 16000.0, media.SPECTROGRAM_SHAPE[0] + 1)
    band = int(np.searchsorted(edges, freq)) - 1
    assert db.shape == media.SPECTROGRAM_SHAPE
    assert abs(int(np.argmax(db.mean(axis=1))) - band) <= 1
    # Power of a unit sine through a periodic Hann window of 2048: (2048 * 0.5 / 2)^2.
    assert db.max() == pytest.approx(10 * np.log10((2048 * 0.25) ** 2), abs=0.5)


def test_pages_and_excerpts(catalog: Catalog) -> None:
    out, dom = _rendered(
        catalog, "paged", page_size=3, media_pages=1, excerpt_s=1.0, link_local_audio=False
    )
    page2 = out.parent / "report-p2.html"
    dom2 = _Dom(page2.read_text(encoding="utf-8"))
    assert (
        len(dom.all("section", **{"class": "track"})) == 3
        and len(dom2.all("section", **{"class": "track"})) == 1
    )
    assert not dom2.all("img", **{"class": "spec"}) and not dom2.all("audio")
    hrefs = {r[0]: r[1] for r in _table_data(dom)["rows"]}  # the table links each track to its card
    assert (hrefs["alpha"], hrefs["gamma"], hrefs["broken"]) == (
        "report.html#t1",
        "report-p2.html#t3",
        "",
    )
    # Excerpts next to the report: 1 s from a quarter into the track, matching the source samples.
    players = dom.all("audio")
    assert len(players) == 3 * 5 and all(a["src"].startswith("report_media/") for a in players)
    mix, _ = catalog.files["alpha"]
    ids = [d for d in dom.text_in("h3")]
    card = ids.index("alpha")
    excerpt, rate = sf.read(
        out.parent / urllib.parse.unquote(players[card * 5]["src"]), dtype="float32"
    )
    source, _ = sf.read(mix, dtype="float32", start=int(0.75 * SR), frames=SR)
    assert rate == SR and excerpt.shape == source.shape
    corr = np.sum(excerpt * source) / np.sqrt(np.sum(excerpt**2) * np.sum(source**2))
    assert corr > 0.95  # Vorbis is lossy
    # Rendering a shorter report at the same path removes the pages it no longer has.
    report.write_report(catalog.url, str(out), media_pages=0)
    assert out.exists() and not page2.exists()


def test_run_selection_and_cli(catalog: Catalog, capsys: pytest.CaptureFixture[str]) -> None:
    out = catalog.root / "old" / "r.html"
    assert report.main(["--results", catalog.url, "--run", "run-1", "--output", str(out)]) == 0
    dom = _Dom(out.read_text(encoding="utf-8"))
    stats = _stats(dom)
    assert (stats["Tracks ok"], stats["Audio"], stats["Wall time"], stats["Real-time factor"]) == (
        "1",
        "1.5 min",
        "0:30",
        "3.0×",
    )
    assert stats["Date"] == "2026-11-27 22:00:00 UTC"
    assert any("no runs row" in t for t in dom.text_in("li"))
    assert report.main(["--results", catalog.url, "--run", "nope", "--output", str(out)]) == 2
    assert "run 'nope' not found" in capsys.readouterr().err
    missing = catalog.root / "missing.sqlite"
    assert report.main(["--results", f"sqlite:///{missing}", "--output", str(out)]) == 2
    assert not missing.exists() and "no SQLite file" in capsys.readouterr().err
    assert report.main(["--results", "results.sqlite", "--output", str(out)]) == 2
    assert "not a SQLAlchemy URL" in capsys.readouterr().err


def test_local_report_loads_neither_beam_nor_tensorflow(catalog: Catalog) -> None:
    """``stembeam report`` on a local table and local stems, in a fresh interpreter."""
    out = catalog.root / "fresh" / "r.html"
    code = (
        "import sys\n"
        "from stembeam.pipeline.cli import command_status\n"
        f"argv = ['report', '--results', {catalog.url!r}, '--output', {str(out)!r}]\n"
        "status = command_status(argv)\n"
        "print(status, [m for m in ('apache_beam', 'tensorflow', 'keras') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split("\n")[-2] == "0 []", proc.stdout + proc.stderr
    assert "Tracks ok" in out.read_text(encoding="utf-8")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(binary: str, profile: Path, *args: str) -> str:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


# Appended to a copy of the page: sort by SDR vocals, load every player, report into the DOM.
_PROBE = """<script>
document.querySelectorAll("th").forEach(function (th) {
  if (th.textContent === "SDR vocals") th.click();
});
var out = {order: Array.prototype.map.call(document.querySelectorAll("#results tbody tr"),
                                           function (r) { return r.cells[0].textContent; }),
           images: Array.prototype.map.call(document.images, function (i) {
             return [i.naturalWidth, i.naturalHeight];
           }),
           audio: []};
var audios = Array.prototype.slice.call(document.querySelectorAll("audio")), left = audios.length;
audios.forEach(function (a) {
  function done(ok) {
    out.audio.push([a.getAttribute("src"), ok, a.duration]);
    if (--left === 0) finish();
  }
  a.addEventListener("loadedmetadata", function () { done(true); });
  a.addEventListener("error", function () { done(false); });
  a.load();
});
function finish() {
  var p = document.createElement("pre");
  p.id = "probe";
  p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
}
</script></body>"""


@pytest.mark.skipif(
    _chromium() is None, reason="no chromium binary on PATH (Debian package `chromium`)"
)
def test_page_in_headless_chromium(catalog: Catalog, tmp_path: Path) -> None:
    out, _ = _rendered(catalog, "browser")
    probe_page = out.with_name("probe.html")
    probe_page.write_text(
        out.read_text(encoding="utf-8").replace("</body>", _PROBE), encoding="utf-8"
    )
    dom = _Dom(
        _run_chromium(
            _chromium(),
            tmp_path / "profile",
            "--virtual-time-budget=15000",
            "--dump-dom",
            probe_page.as_uri(),
        )
    )
    # The HTML track id and error string are text in the browser's DOM, not elements.
    assert not dom.all("b") and len(dom.all("script")) == 3
    assert EVIL_ID in dom.text_in("h3") and EVIL_ERROR in dom.text_in("td")
    assert EVIL_ID in dom.text_in(
        "a"
    )  # the table drawn by the page's script: text, linked to its card
    probe = json.loads("".join(dom.text_in("pre")))
    # Sorting by SDR vocals (ascending), failed/skipped rows (no value) last.
    by_sdr = sorted(catalog.sdr_vocals, key=catalog.sdr_vocals.get)
    assert probe["order"][:3] == by_sdr and sorted(probe["order"][3:]) == ["broken", "gamma"]
    # Every image decoded in the browser: the box plot and 16 spectrograms.
    assert sorted(map(tuple, probe["images"])) == [(240, 64)] * 16 + [(1120, 360)]
    # Every player loaded its file's metadata, with the file's duration.
    assert len(probe["audio"]) == 16 and all(ok for _, ok, _ in probe["audio"])
    loaded = {(out.parent / urllib.parse.unquote(src)).resolve(): d for src, _, d in probe["audio"]}
    files = [p.resolve() for mix, stems in catalog.files.values() for p in [mix, *stems.values()]]
    assert loaded == pytest.approx({p: sf.info(p).duration for p in files}, abs=0.01)


def test_remote_audio_gets_excerpts(tmp_path: Path, gcs_emulator) -> None:
    """gs:// mixture and stems (gcp-storage-emulator, tests/services.py): read through Beam
    FileSystems, excerpts written next to the report."""
    mix, stems = _write_track(tmp_path / "audio", 3.0, 5)
    root = gcs_emulator.bucket("stems")
    bucket = gcs_emulator.client().bucket(root.removeprefix("gs://"))
    uris = {}
    for name, path in [("mixture", mix), *stems.items()]:
        bucket.blob(f"song/{path.name}").upload_from_filename(str(path))
        uris[name] = f"{root}/song/{path.name}"
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    engine = sa.create_engine(url)
    results, _ = _create_tables(engine)
    with engine.begin() as conn:
        conn.execute(
            results.insert().values(
                run_id="r",
                track_id="song",
                source_uri=uris.pop("mixture"),
                status="ok",
                duration_s=3.0,
                stems=json.dumps(uris),
                finished_at=dt.datetime(2026, 1, 1),
            )
        )
    engine.dispose()
    out = tmp_path / "site" / "report.html"
    report.write_report(url, str(out), excerpt_s=2.0)
    dom = _Dom(out.read_text(encoding="utf-8"))
    assert len(dom.all("img", **{"class": "spec"})) == 5
    players = [a["src"] for a in dom.all("audio")]
    assert len(players) == 5 and all(src.startswith("report_media/") for src in players)
    # The vocals excerpt holds the vocals file's samples from 0.75 s (a quarter in) to 2.75 s.
    excerpt, rate = sf.read(out.parent / players[1], dtype="float32")
    source, _ = sf.read(stems["vocals"], dtype="float32", start=int(0.75 * SR), frames=2 * SR)
    corr = np.sum(excerpt * source) / np.sqrt(np.sum(excerpt**2) * np.sum(source**2))
    assert rate == SR and excerpt.shape == source.shape and corr > 0.95
    # A report written to gs:// lands there with its excerpts.
    remote = f"{root}/site/report.html"
    assert report.write_report(url, remote, excerpt_s=2.0) == remote
    names = sorted(b.name for b in bucket.list_blobs(prefix="site/"))
    assert names == ["site/report.html"] + [f"site/report_media/0-{n}.ogg" for n in range(5)]
    page = bucket.get_blob("site/report.html")
    assert page.content_type == "text/html"  # browsers show it rather than download it
    remote_page = page.download_as_bytes().decode("utf-8")
    assert remote_page == out.read_text(encoding="utf-8")
