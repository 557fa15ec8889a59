"""The separate job with its SDK workers in another process: Beam's EXTERNAL environment.

deploy/boot.py serves a worker pool on 127.0.0.1 (its own process); the job runs on the
PortableRunner's embedded job server with ``--environment_type EXTERNAL``, so every bundle is
executed by a worker that deploy/boot.py provisioned (provision service -> environment ->
sdk_worker_main). Stems and rows must equal those of the in-process FnApiRunner run of the same
catalog, computed independently of the worker pool.
"""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from apache_beam.version import __version__ as beam_version

from stembeam.pipeline.separate import run
from tests.audio_files import tone, write
from tests.services import REPO_ROOT, _wait_for_port, free_port

TRACKS = {"a": (2.0, 44100, 1), "b": (1.5, 22050, 2)}  # id: (seconds, rate, seed)


def rows_of(results: str, run_id: str) -> dict[str, dict]:
    """track_id -> {status, duration_s, stem names} of one run in a SQLite results table."""
    with sqlite3.connect(results) as db:
        found = db.execute(
            "SELECT track_id, status, duration_s, stems FROM results WHERE run_id = ?", (run_id,)
        ).fetchall()
    return {
        t: {"status": s, "duration_s": d, "stems": sorted(json.loads(stems))}
        for t, s, d, stems in found
    }


def separate(catalog: str, output: str, model: str, *engine: str) -> dict[str, dict]:
    """Run the job into ``output`` (stems + results.sqlite); returns its rows."""
    out = run(
        ["--input", catalog, "--output", output, "--model", model, "--report", "none", *engine]
    )
    assert out["summary"]["tracks_ok"] == len(TRACKS)
    return rows_of(os.path.join(output, "results.sqlite"), out["run_id"])


@pytest.fixture
def worker_pool(tmp_path):
    """deploy/boot.py --worker_pool on a free 127.0.0.1 port: (process, address, worker dir)."""
    port, workers = free_port(), tmp_path / "workers"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    pool = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "deploy" / "boot.py"),
            "--worker_pool",
            "--service_address",
            f"127.0.0.1:{port}",
            "--semi_persist_dir",
            str(workers),
        ],
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        _wait_for_port(port, pool, timeout_s=60)
        yield pool, f"127.0.0.1:{port}", workers
    finally:
        pool.terminate()
        pool.wait(timeout=30)


@pytest.mark.slow
def test_external_worker_pool_matches_in_process_run(tmp_path, tiny_model, worker_pool):
    pool, address, workers = worker_pool
    for track_id, (seconds, rate, seed) in TRACKS.items():
        write(str(tmp_path / "in" / f"{track_id}.wav"), tone(seconds, rate, seed=seed), rate)
    catalog = str(tmp_path / "in" / "*.wav")

    want = separate(catalog, str(tmp_path / "local"), tiny_model, "--direct_num_workers", "1")
    got = separate(
        catalog,
        str(tmp_path / "external"),
        tiny_model,
        "--runner",
        "PortableRunner",
        "--job_endpoint",
        "embed",
        "--environment_type",
        "EXTERNAL",
        "--environment_config",
        address,
    )

    assert got == want
    assert {t: r["duration_s"] for t, r in got.items()} == pytest.approx(
        {t: seconds for t, (seconds, _, _) in TRACKS.items()}
    )
    for track_id, row in got.items():
        assert row["status"] == "ok" and row["stems"] == ["accompaniment", "vocals"]
        for stem in row["stems"]:
            ours, rate = soundfile.read(str(tmp_path / "external" / track_id / f"{stem}.wav"))
            theirs, rate_in = soundfile.read(str(tmp_path / "local" / track_id / f"{stem}.wav"))
            assert rate == rate_in == TRACKS[track_id][1] and ours.shape == theirs.shape
            assert np.abs(ours - theirs).max() < 1e-5

    records = [json.load(open(p)) for p in glob.glob(str(workers / "*" / "worker.json"))]
    assert records, "no worker was booted by deploy/boot.py"
    for record in records:  # the pool's children, provisioned with this job's options
        assert record["pid"] not in (os.getpid(), pool.pid) and record["ppid"] == pool.pid
        assert record["options"]["beam:option:input:v1"] == [catalog]  # --input: a list
        # the launcher's staged pip freeze, fetched from the artifact service
        staged = workers / record["worker_id"] / "staged" / record["staged"][0]
        text = staged.read_text()
        assert text.startswith(f"Python Path: {sys.executable}")
        assert f"apache-beam=={beam_version}" in text
