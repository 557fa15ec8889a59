"""RunProgress against a real SQLite results table filled while it polls; start-up figures."""

import io
import logging
import os
import subprocess
import sys
import time

from stembeam.pipeline.console import ConsoleHandler, RunProgress, startup_line
from stembeam.transforms.records import Track, result_row
from stembeam.transforms.results import create_engine, create_tables, upsert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(run_id: str, track_id: str, status: str, duration_s: float, error: str = "") -> dict:
    return result_row(
        Track(track_id, f"/in/{track_id}.wav"),
        run_id,
        "tiny",
        "0" * 64,
        status,
        error=error,
        duration_s=duration_s,
        realtime_factor=3.0,
    )


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_poller_prints_each_new_track_of_its_run_while_rows_arrive(tmp_path, caplog):
    url = f"sqlite:///{tmp_path}/results.sqlite"
    engine = create_engine(url)
    results, _ = create_tables(engine)
    started = time.time()
    progress = RunProgress(url, "r1", total=4, started=started, interval=0.05, log_every=0.0)
    caplog.set_level(logging.INFO, logger="stembeam.progress")
    progress.start()
    try:
        with engine.begin() as conn:  # another run's row: never reported
            upsert(conn, results, [_row("r0", "old", "ok", 60.0)])
        with engine.begin() as conn:
            upsert(conn, results, [_row("r1", "a", "ok", 600.0)])
        _wait(lambda: "a" in progress.rows)
        assert "b" not in progress.rows  # polled while the run goes on, not at the end
        with engine.begin() as conn:
            upsert(conn, results, [_row("r1", "b", "failed", 0.0, error="not audio: garbage")])
        _wait(lambda: "b" in progress.rows)
    finally:
        progress.stop()
    engine.dispose()
    tracks = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("track ")
    ]
    assert tracks == [
        ("INFO", "track a: ok, 10.0 min of audio, 3.00x real time"),
        ("WARNING", "track b: failed: not audio: garbage"),
    ]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert lines and lines[-1].startswith("progress: 2/4 tracks (1 failed), 10.0 min of audio")
    # 600 s of audio in 100 s: 6x real time; 2 tracks worked in 100 s, 2 left: 100 s more
    assert progress.line(now=started + 100) == (
        "2/4 tracks (1 failed), 10.0 min of audio, 6.00x real time, ETA 0:01:40"
    )


def test_live_bar_on_a_terminal_redraws_below_log_lines(tmp_path):
    url = f"sqlite:///{tmp_path}/results.sqlite"
    engine = create_engine(url)
    results, _ = create_tables(engine)
    with engine.begin() as conn:
        upsert(conn, results, [_row("r1", "a", "skipped", 30.0)])
    engine.dispose()
    stream = io.StringIO()
    handler = ConsoleHandler(stream)
    logger = logging.getLogger("stembeam.progress")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        progress = RunProgress(url, "r1", total=4, started=time.time(), handler=handler, live=True)
        progress.poll()
        progress.stop()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = stream.getvalue()
    # the track line, then the bar (1/4 of 24 cells) with no newline, then cleared at the end
    assert text.startswith("track a: skipped (already separated)\n")
    assert "\r\033[K[" + "#" * 6 + "." * 18 + "] 1/4 tracks (1 skipped), 0.0 s of audio" in text
    assert text.endswith("\r\033[K")
    assert "\n" not in text[len("track a: skipped (already separated)\n") :]


def test_process_start_is_when_the_interpreter_started():
    code = "from stembeam.pipeline.console import process_started; print(process_started())"
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    after = time.time()
    # /proc counts in clock ticks (10 ms) and /proc/uptime in 10 ms: 30 ms of slack
    assert before - 0.03 <= float(out.stdout) <= after


def test_startup_line_names_the_model_parts_only_when_a_batch_ran():
    assert startup_line(2.04, 4.96, 8.01) == (
        "start-up: imports 2.0 s, model load 5.0 s, first batch at 8.0 s"
    )
    assert startup_line(2.04, None, None) == "start-up: imports 2.0 s"
