"""What a done-marker vouches for, and two runs on one output folder.

Reruns with another model, another format or a changed source must never report `skipped` over
stems that are not what the row says; two runs at once must never leave an `ok` row pointing at
the other run's samples; dead runs' temporary files are cleaned by the next run. Stems are
checked against a clean run of the row's model into an empty folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from stembeam.pipeline.separate import run
from stembeam.transforms.output_state import STALE_AFTER_S, RunConflict, RunLock, clean_dead_runs
from tests.audio_files import tone, write
from tests.conftest import save_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    """A second tiny model: same architecture, other weights."""
    return save_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny-seed1"), seed=1)


def argv(source: str, output: str, model: str, *extra: str) -> list[str]:
    return [
        "--input",
        source,
        "--output",
        output,
        "--model",
        model,
        "--report",
        "none",
        "--direct_num_workers",
        "1",
        *extra,
    ]


def rows(output: str, run_id: str) -> dict[str, tuple[str, str, dict]]:
    db = sqlite3.connect(os.path.join(output, "results.sqlite"))
    return {
        t: (s, e, json.loads(st))
        for t, s, e, st in db.execute(
            "SELECT track_id, status, error, stems FROM results WHERE run_id = ?", (run_id,)
        )
    }


def stems_of(output: str, track: str, ext: str = "wav") -> dict[str, np.ndarray]:
    return {
        s: soundfile.read(os.path.join(output, track, f"{s}.{ext}"), dtype="float32")[0]
        for s in ("vocals", "accompaniment")
    }


def assert_same_stems(got: dict, want: dict, atol: float = 1e-5) -> None:
    for stem in want:
        np.testing.assert_allclose(got[stem], want[stem], atol=atol)


def test_another_model_is_refused_per_track_until_forced(tmp_path, tiny_model, other_model):
    write(str(tmp_path / "in" / "a.wav"), tone(2.0, seed=1))
    source, out = str(tmp_path / "in" / "*.wav"), str(tmp_path / "out")
    run(argv(source, out, tiny_model))
    first = stems_of(out, "a")
    second = run(argv(source, out, other_model))
    status, error, _ = rows(out, second["run_id"])["a"]
    assert status == "failed" and "--force" in error and "model" in error
    assert_same_stems(stems_of(out, "a"), first, atol=0)  # untouched
    assert second["summary"]["tracks_failed"] == 1

    forced = run(argv(source, out, other_model, "--force"))
    assert rows(out, forced["run_id"])["a"][0] == "ok"
    clean = str(tmp_path / "clean")
    run(argv(source, clean, other_model))
    assert_same_stems(stems_of(out, "a"), stems_of(clean, "a"))
    # and the rerun of the forced model now skips
    again = run(argv(source, out, other_model))
    assert rows(out, again["run_id"])["a"][0] == "skipped"


def test_another_format_is_not_skipped_over_the_old_files(tmp_path, tiny_model):
    write(str(tmp_path / "in" / "a.wav"), tone(2.0, seed=2))
    source, out = str(tmp_path / "in" / "*.wav"), str(tmp_path / "out")
    run(argv(source, out, tiny_model))
    flac = run(argv(source, out, tiny_model, "--format", "flac"))
    status, error, _ = rows(out, flac["run_id"])["a"]
    assert status == "failed" and "format wav-f32 -> flac-24" in error
    forced = run(argv(source, out, tiny_model, "--format", "flac", "--force"))
    status, _, stems = rows(out, forced["run_id"])["a"]
    assert status == "ok" and all(
        uri.endswith(".flac") and os.path.exists(uri) for uri in stems.values()
    )


def test_changed_source_is_separated_again(tmp_path, tiny_model):
    path = str(tmp_path / "in" / "a.wav")
    write(path, tone(2.0, seed=3))
    source, out = str(tmp_path / "in" / "*.wav"), str(tmp_path / "out")
    run(argv(source, out, tiny_model))
    write(path, tone(2.5, seed=4))  # a new master under the same name
    rerun = run(argv(source, out, tiny_model))
    assert rows(out, rerun["run_id"])["a"][0] == "ok"
    assert soundfile.info(os.path.join(out, "a", "vocals.wav")).frames == 2.5 * 44100


def test_a_new_file_taking_an_id_is_not_skipped_with_anothers_stems(tmp_path, tiny_model):
    folder = tmp_path / "in"
    write(str(folder / "a.wav"), tone(2.0, seed=5))
    write(str(folder / "a.flac"), tone(1.0, seed=6))
    source, out = str(folder / "a.*"), str(tmp_path / "out")
    run(argv(source, out, tiny_model))
    write(str(folder / "a.aiff"), tone(1.5, seed=7))  # sorts first: takes id "a" from a.flac
    rerun = run(argv(source, out, tiny_model))
    got = rows(out, rerun["run_id"])
    lengths = {"a.aiff": 1.5, "a.flac": 1.0, "a.wav": 2.0}
    for track, (status, _, stems) in got.items():
        db = sqlite3.connect(os.path.join(out, "results.sqlite"))
        uri = db.execute(
            "SELECT source_uri FROM results WHERE run_id = ? AND track_id = ?",
            (rerun["run_id"], track),
        ).fetchone()[0]
        frames = soundfile.info(stems["vocals"]).frames
        assert frames == lengths[os.path.basename(uri)] * 44100, (track, status, uri)


def start(args: list[str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "stembeam.pipeline", "separate", *args],
        cwd=ROOT,
        stdout=log,
        stderr=log,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def catalog(folder: str, n: int = 4, seconds: float = 12.0) -> str:
    for i in range(n):
        write(os.path.join(folder, f"t{i}.wav"), tone(seconds, seed=10 + i), subtype="PCM_16")
    return os.path.join(folder, "*.wav")


@pytest.mark.slow
def test_a_second_model_on_a_busy_output_refuses_to_start(tmp_path, tiny_model, other_model):
    source, out = catalog(str(tmp_path / "in")), str(tmp_path / "out")
    first = start(argv(source, out, tiny_model), str(tmp_path / "log"))
    locks = os.path.join(out, ".stembeam", "runs")
    deadline = time.time() + 120
    while not (os.path.isdir(locks) and os.listdir(locks)) and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(RunConflict, match="another run .* is writing to .* other settings"):
        run(argv(source, out, other_model))
    cli = subprocess.run(
        [sys.executable, "-m", "stembeam.pipeline", "separate", *argv(source, out, other_model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=300,
    )
    assert cli.returncode == 2 and "another run" in cli.stderr
    assert first.wait(timeout=600) == 0
    clean = str(tmp_path / "clean")
    run(argv(source, clean, tiny_model))
    for track in ("t0", "t1", "t2", "t3"):
        assert_same_stems(stems_of(out, track), stems_of(clean, track))


@pytest.mark.slow
@pytest.mark.parametrize("same_model", [False, True])
def test_two_runs_started_together_never_mix_models(tmp_path, tiny_model, other_model, same_model):
    source, out = catalog(str(tmp_path / "in")), str(tmp_path / "out")
    models = [tiny_model, tiny_model if same_model else other_model]
    procs = [
        start(argv(source, out, m, "--run_id", f"r{i}"), str(tmp_path / f"log{i}"))
        for i, m in enumerate(models)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    if same_model:
        assert codes == [0, 0]  # the same signature: both may work, on disjoint staging files
    else:
        assert codes.count(0) <= 1 and set(codes) <= {0, 2}
    cleans = {}
    for model in set(models):
        cleans[model] = str(tmp_path / f"clean-{len(cleans)}")
        run(argv(source, cleans[model], model))
    ok_rows = 0
    for i, model in enumerate(models):
        if codes[i] != 0:
            continue
        for track, (status, _, _) in rows(out, f"r{i}").items():
            if status == "ok":
                ok_rows += 1
                assert_same_stems(stems_of(out, track), stems_of(cleans[model], track))
    assert ok_rows >= 4
    assert not os.listdir(os.path.join(out, ".stembeam", "runs"))


def test_dead_runs_temporary_files_are_deleted_by_the_next_run(tmp_path, tiny_model):
    write(str(tmp_path / "in" / "a.wav"), tone(1.0, seed=8))
    out = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    staged = out / ".stembeam" / "tmp" / "killed-run" / "b" / "vocals.wav"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"half a stem")
    lock = out / ".stembeam" / "runs" / "killed-run.json"
    lock.parent.mkdir(parents=True)
    import socket

    lock.write_text(
        json.dumps(
            {
                "run_id": "killed-run",
                "signature": "x",
                "host": socket.gethostname(),
                "pid": int(dead),
                "heartbeat": time.time(),
            }
        )
    )
    run(argv(str(tmp_path / "in" / "*.wav"), str(out), tiny_model))
    assert not staged.exists() and not lock.exists()
    assert not (out / ".stembeam" / "tmp").exists()


def test_a_failed_commit_leaves_no_done_marker_and_the_rerun_separates(tmp_path, tiny_model):
    """Done means stems and row: when the results table refuses the rows (here a table of
    another schema behind the launcher's back), no track is marked done."""
    from apache_beam.testing.test_pipeline import TestPipeline

    from stembeam.model.registry import describe_model
    from stembeam.pipeline.options import SeparateOptions
    from stembeam.pipeline.separate import build

    write(str(tmp_path / "in" / "a.wav"), tone(1.0, seed=9))
    out = tmp_path / "out"
    out.mkdir()
    broken = f"sqlite:///{tmp_path / 'broken.sqlite'}"
    sqlite3.connect(tmp_path / "broken.sqlite").execute("CREATE TABLE results (x INTEGER)")
    options = SeparateOptions(argv(str(tmp_path / "in" / "*.wav"), str(out), tiny_model))
    with pytest.raises(Exception, match="results"):
        with TestPipeline(runner="FnApiRunner", options=options) as p:
            build(p, options, describe_model(tiny_model), "broken", broken, time.time())
    assert (out / "a" / "vocals.wav").exists()  # the stems were written...
    assert not (out / ".stembeam" / "done").exists()  # ...but the track is not done
    rerun = run(argv(str(tmp_path / "in" / "*.wav"), str(out), tiny_model))
    assert rows(str(out), rerun["run_id"])["a"][0] == "ok"


def test_cleaning_spares_a_run_that_is_starting(tmp_path):
    """A staging folder without a lock file is a run that is starting (its first lock is staged
    there) until it has not changed for STALE_AFTER_S; a dead run's folder goes at once."""
    out = str(tmp_path)
    tmp = tmp_path / ".stembeam" / "tmp"
    starting, abandoned, dead = tmp / "starting", tmp / "abandoned", tmp / "dead"
    for folder in (starting, abandoned, dead):
        (folder / "t").mkdir(parents=True)
        (folder / "t" / ".lock.partial").write_bytes(b"x")
    old = time.time() - STALE_AFTER_S - 60
    for path in (abandoned / "t" / ".lock.partial", abandoned / "t", abandoned):
        os.utime(path, (old, old))
    # a dead run: its lock names a process of this host that no longer exists
    lock = RunLock(out, "dead", "sig", {})
    lock._write()
    body = json.loads(open(lock.uri).read())
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(lock.uri, "w") as f:
        json.dump({**body, "pid": int(dead_pid)}, f)
    assert clean_dead_runs(out, "me") == 2
    assert sorted(os.listdir(tmp)) == ["starting"]
    assert (starting / "t" / ".lock.partial").read_bytes() == b"x"
