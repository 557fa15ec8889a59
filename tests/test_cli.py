"""The ``stembeam`` command as cron runs it: real subprocess runs on the tiny model."""

import os
import re
import select
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from tests.audio_files import hostile_files, tone, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = re.compile(r"apache_beam|absl|I0000|oneDNN|Converting string literal|grpc", re.I)


def stembeam(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stembeam.pipeline", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version_help_and_usage_errors(tmp_path):
    setup = open(os.path.join(ROOT, "setup.py")).read()
    expected = re.search(r'version="([^"]+)"', setup).group(1)
    assert stembeam("--version").stdout.strip() == f"stembeam {expected}"
    helped = stembeam("help")
    assert helped.returncode == 0
    assert all(c in helped.stdout for c in ("separate", "report", "demo", "train"))
    assert "--no-local-links" in stembeam("help", "report").stdout
    unknown = stembeam("foo")
    assert unknown.returncode == 2 and "stembeam: unknown command 'foo'" in unknown.stderr
    write(str(tmp_path / "a.wav"), tone(0.5))
    wav = str(tmp_path / "a.wav")
    for args, message in (
        ([wav, "--bogus-option", "1"], "unknown option --bogus-option"),
        ([wav, "--batch_size", "x"], "invalid int value: 'x'"),
        ([wav, "--output"], "option --output needs a value"),
        (["--input", str(tmp_path / "none-*.wav")], "is empty (no file matches)"),
        ([wav, "--input", str(tmp_path / "missing.csv")], "does not exist"),
    ):
        proc = stembeam("separate", "-o", str(tmp_path / "o"), *args)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "o")  # nothing ran


def test_report_database_errors_are_one_line():
    for url, message in (
        ("sqlite:////nonexistent/results.sqlite", "no SQLite file"),
        ("postgresql://stembeam@127.0.0.1:9/db", "cannot read"),
        ("not a url", "not a SQLAlchemy URL"),
    ):
        proc = stembeam("report", "--results", url, "--output", "/tmp/never.html")
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def _musdb_track(folder: str, seconds: float) -> None:
    """One MUSDB18-HQ style track: two references and their sum as the mixture."""
    vocals, accompaniment = tone(seconds, seed=1) * 0.5, tone(seconds, seed=2)[::-1] * 0.5
    write(os.path.join(folder, "song", "vocals.wav"), vocals)
    write(os.path.join(folder, "song", "accompaniment.wav"), np.ascontiguousarray(accompaniment))
    write(os.path.join(folder, "song", "mixture.wav"), vocals + accompaniment)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model):
    """A first run (a MUSDB folder and a WAV as positional inputs, a garbage file by --input,
    a Beam option a local run ignores), then the same command again with -q."""
    root = tmp_path_factory.mktemp("cli")
    _musdb_track(str(root / "db"), 3.0)
    single = write(str(root / "files" / "single.wav"), tone(2.5, seed=3))
    garbage = hostile_files(str(root / "bad"))["garbage"]
    out = str(root / "out")
    argv = [
        sys.executable,
        "-m",
        "stembeam.pipeline",
        "separate",
        str(root / "db"),
        single,
        "--input",
        garbage,
        "-o",
        out,
        "--model",
        tiny_model,
        "--direct_num_workers",
        "1",
        "--job_name",
        "nightly-stems",
    ]
    started = time.time()
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ready, _, _ = select.select([proc.stderr], [], [], 30)
    first_line_s = time.time() - started
    first = proc.stderr.readline() if ready else ""
    stdout, rest = proc.communicate(timeout=240)
    first_run = (proc.returncode, first + rest, first_line_s, time.time() - started)
    rerun = subprocess.run(argv + ["-q"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    db = sqlite3.connect(os.path.join(out, "results.sqlite"))
    runs = [r for (r,) in db.execute("SELECT run_id FROM runs ORDER BY started_at")]
    return {
        "out": out,
        "first": first_run,
        "rerun": rerun,
        "runs": runs,
        "db": db,
        "single": single,
        "root": root,
    }


def test_first_run_output_and_exit_status(two_runs):
    code, err, first_line_s, _ = two_runs["first"]
    assert code == 3, err  # one track failed, the others written
    assert first_line_s < 2.0 and err.splitlines()[0].endswith("reading options and the catalog")
    assert not [line for line in err.splitlines() if NOISE.search(line)], err
    tracks = [m.group(1) for m in re.finditer(r" track (\S+): ", err)]
    assert sorted(tracks) == ["garbage", "single", "song"]  # one line each
    failed = [line for line in err.splitlines() if "track garbage" in line]
    assert " WARNING track garbage: failed: " in failed[0]
    assert "run summary: 2 ok, 0 skipped, 1 failed" in err
    assert "1 of 3 tracks failed (exit status 3)" in err
    frames = soundfile.info(two_runs["single"]).frames
    for stem in ("vocals", "accompaniment"):
        assert (
            soundfile.info(os.path.join(two_runs["out"], "single", f"{stem}.wav")).frames == frames
        )


def test_first_run_reports_its_startup_times(two_runs):
    _, err, first_line_s, wall_s = two_runs["first"]
    (line,) = [line for line in err.splitlines() if " start-up: " in line]
    match = re.search(
        r"start-up: imports ([\d.]+) s, model load ([\d.]+) s, first batch at ([\d.]+) s$", line
    )
    imports, load, first_batch = map(float, match.groups())
    # seconds from the command's start: the first line is printed before Beam's import, the
    # model loads after it and before the first batch, which comes before the command ends
    assert first_line_s - 0.1 <= imports < first_batch <= wall_s
    assert 0 < load < first_batch - imports + 0.1


def test_version_and_help_import_neither_beam_nor_tensorflow():
    code = (
        "import sys\n"
        "from stembeam.pipeline.cli import main\n"
        "main(sys.argv[1:])\n"
        "print([m for m in ('apache_beam', 'tensorflow', 'keras') if m in sys.modules])"
    )
    for args in (["--version"], ["help"], []):
        out = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True
        )
        assert out.stdout.splitlines()[-1] == "[]", (args, out.stdout, out.stderr)


def test_the_program_imports_beam_without_notebook_modules():
    code = (
        "import sys\n"
        "from stembeam.pipeline import cli\n"
        "def probe(argv, verbosity):\n"
        "    import apache_beam\n"
        "    print([m for m, module in sys.modules.items() if m.split('.')[0] == 'IPython'"
        " and module is not None], apache_beam.__version__ is not None)\n"
        "    return 0\n"
        "cli.COMMANDS['probe'] = (probe, '')\n"
        "sys.argv = ['stembeam', 'probe']\n"
        "cli.main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split("\n")[0] == "[] True", out.stderr


def test_the_program_ends_when_its_command_returns():
    # a non-daemon thread would hold a normal interpreter exit for 60 s
    code = (
        "import sys, threading, time\n"
        "from stembeam.pipeline.cli import main\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "sys.argv = ['stembeam', 'foo']\n"
        "main()\n"
    )
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50
    )
    assert time.time() - started < 30
    assert out.returncode == 2 and out.stderr.startswith("stembeam: unknown command 'foo'")


def test_quiet_rerun_shows_only_failures_and_summary(two_runs):
    rerun = two_runs["rerun"]
    assert rerun.returncode == 3  # the garbage file fails again; done tracks are skipped
    lines = rerun.stderr.splitlines()
    assert [line for line in lines if " track " in line] == [
        line for line in lines if " WARNING track garbage: failed: " in line
    ]
    assert any("run summary: 0 ok, 2 skipped, 1 failed" in line for line in lines)
    assert not [line for line in lines if "catalog" in line or NOISE.search(line)]


def test_reports_per_run_survive_the_rerun(two_runs):
    first, second = two_runs["runs"]
    (sdr,) = (
        two_runs["db"]
        .execute("SELECT sdr_vocals FROM results WHERE run_id = ? AND track_id = 'song'", (first,))
        .fetchone()
    )
    assert sdr is not None
    reports = os.path.join(two_runs["out"], "reports")
    first_page = open(os.path.join(reports, f"{first}.html"), encoding="utf-8").read()
    assert f"<td>{sdr:.2f}</td>" in first_page  # the medians table of the first run
    assert os.path.isfile(os.path.join(reports, f"{second}.html"))
    index = open(os.path.join(two_runs["out"], "report.html"), encoding="utf-8").read()
    assert index.index(f"reports/{second}.html") < index.index(f"reports/{first}.html")


def test_report_command_options(two_runs):
    first = two_runs["runs"][0]
    target = two_runs["root"] / "site" / "r.html"
    proc = stembeam(
        "report",
        "--results",
        f"sqlite:///{two_runs['out']}/results.sqlite",
        "--run",
        first,
        "--output",
        str(target),
        "--no-local-links",
        "--media-pages",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    page = target.read_text(encoding="utf-8")
    assert first in page
    excerpts = os.listdir(two_runs["root"] / "site" / "r_media")
    # no local links: an excerpt per played file (2 tracks x (mixture + 2 stems))
    assert len([n for n in excerpts if n.endswith(".ogg")]) >= 6
    sources = re.findall(r'<audio[^>]*src="([^"]+)"', page)
    assert sources and all(src.startswith("r_media/") for src in sources)  # no stem links
