"""Whole runs: the portable runner and the CLI entry (kill-and-rerun: tests/test_streaming.py)."""

import os
import sqlite3
import subprocess
import sys

import pytest
import soundfile
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from stembeam.pipeline.options import parse_options, results_url
from stembeam.pipeline.separate import run
from tests.audio_files import tone, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tracks(folder: str, n: int, seconds: float) -> dict[str, int]:
    """``n`` stereo WAVs; returns track id -> length in samples."""
    lengths = {}
    for i in range(n):
        wave = tone(seconds + 0.37 * i, seed=i)
        write(os.path.join(folder, f"t{i}.wav"), wave)
        lengths[f"t{i}"] = len(wave)
    return lengths


def results(output: str, run_id: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(os.path.join(output, "results.sqlite"))
    return sorted(db.execute("SELECT track_id, status FROM results WHERE run_id = ?", (run_id,)))


def test_portable_runner_loopback(tmp_path, tiny_model):
    make_tracks(str(tmp_path / "in"), 1, 2.0)
    output = str(tmp_path / "out")
    out = run(
        [
            "--input",
            str(tmp_path / "in" / "*.wav"),
            "--output",
            output,
            "--model",
            tiny_model,
            "--runner=PortableRunner",
            "--job_endpoint=embed",
            "--environment_type=LOOPBACK",
            "--report",
            "none",
        ]
    )
    assert results(output, out["run_id"]) == [("t0", "ok")]
    assert soundfile.info(os.path.join(output, "t0", "vocals.wav")).frames == 88200
    assert out["summary"]["tracks_ok"] == 1


def test_cli_entry_point_and_option_checks():
    proc = subprocess.run(
        [sys.executable, "-m", "stembeam.pipeline", "separate", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for flag in (
        "--input",
        "--output",
        "--model",
        "--results",
        "--segmentation",
        "--postprocess",
        "--format",
        "--force",
        "--batch_size",
    ):
        assert flag in proc.stdout
    with pytest.raises(ValueError, match="--input"):
        parse_options(["--output", "x"])
    options = parse_options(["--input", "a", "--output", "/tmp/o"])
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_num_workers == (os.cpu_count() or 1)
    for given in (["--direct_num_workers", "1"], ["--direct_num_workers=1"]):  # kept when given
        options = parse_options(["--input", "a", "--output", "/tmp/o", *given])
        assert options.view_as(DirectOptions).direct_num_workers == 1
    assert results_url(options) == "sqlite:////tmp/o/results.sqlite"
    assert (
        results_url(
            parse_options(
                ["--input", "a", "--output", "gs://b/o", "--results", "postgresql://h/db"]
            )
        )
        == "postgresql://h/db"
    )
    for remote in ("gs://b/o", "s3://b/o"):  # no SQLite file on the launcher for remote runs
        with pytest.raises(ValueError, match="pass --results"):
            results_url(parse_options(["--input", "a", "--output", remote]))
