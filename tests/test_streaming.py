"""Catalog-scale behaviour of `stembeam separate`, observed from outside the job.

Each test runs the real command in a subprocess (FnApiRunner, tiny seeded model) and watches the
output folder while it runs: when each track's stems appear (renamed into place, so present means
complete), how many bytes the run keeps in temporary files, and what a kill -9 leaves behind.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import soundfile

from tests.audio_files import tone, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEMS = ("vocals", "accompaniment")


def make_catalog(folder: str, n: int, seconds: float) -> dict[str, int]:
    """``n`` 16-bit stereo WAVs ``t00.wav``...; returns track id -> length in samples."""
    lengths = {}
    for i in range(n):
        wave = tone(seconds, seed=i)
        write(os.path.join(folder, f"t{i:02d}.wav"), wave, subtype="PCM_16")
        lengths[f"t{i:02d}"] = len(wave)
    return lengths


def command(catalog: str, output: str, model: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stembeam.pipeline",
        "separate",
        "--input",
        os.path.join(catalog, "*.wav"),
        "--output",
        output,
        "--model",
        model,
        "--direct_num_workers",
        "1",
        "--report",
        "none",
        *extra,
    ]


def start(argv: list[str], log_path: str) -> subprocess.Popen:
    """The command in its own process group (so a kill reaches every process it started)."""
    log = open(log_path, "ab")
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def complete(output: str, track_id: str) -> bool:
    return all(os.path.exists(os.path.join(output, track_id, f"{s}.wav")) for s in STEMS)


def temp_bytes(output: str) -> int:
    """Bytes of every file under the output's temporary folder."""
    total = 0
    for folder, _, files in os.walk(os.path.join(output, ".stembeam", "tmp")):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except FileNotFoundError:
                pass
    return total


class Watcher(threading.Thread):
    """Polls the output folder every 10 ms: completion time per track, peak temporary bytes."""

    def __init__(self, output: str, track_ids):
        super().__init__(daemon=True)
        self.output, self.pending = output, set(track_ids)
        self.completed: dict[str, float] = {}
        self.peak_temp = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak_temp = max(self.peak_temp, temp_bytes(self.output))
            for track_id in sorted(self.pending):
                if complete(self.output, track_id):
                    self.completed[track_id] = time.time()
                    self.pending.discard(track_id)
            time.sleep(0.01)


def markers(done_dir: str) -> list[str]:
    """The done-markers written (published) so far."""
    if not os.path.isdir(done_dir):
        return []
    return [n for n in os.listdir(done_dir) if n.endswith(".json") and not n.startswith(".")]


def rows(output: str) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(os.path.join(output, "results.sqlite"))
    return sorted(db.execute("SELECT run_id, track_id, status FROM results"))


def leftovers(output: str) -> list[str]:
    """Temporary files anywhere under the output."""
    found = [os.path.join(r, f) for r, _, fs in os.walk(output) for f in fs if ".partial" in f]
    tmp = os.path.join(output, ".stembeam", "tmp")
    found += [os.path.join(r, f) for r, _, fs in os.walk(tmp) for f in fs]
    return found


def run_watched(
    argv: list[str], output: str, track_ids, log_path: str, timeout: float = 600
) -> tuple[Watcher, float, float]:
    """Runs to the end while watching; returns the watcher, start time and wall seconds."""
    watcher = Watcher(output, track_ids)
    watcher.start()
    started = time.time()
    proc = start(argv, log_path)
    try:
        assert proc.wait(timeout=timeout) == 0, open(log_path).read()[-3000:]
    finally:
        wall = time.time() - started
        time.sleep(0.05)
        watcher.stop.set()
        watcher.join()
    return watcher, started, wall


@pytest.mark.slow
def test_tracks_finish_one_after_another_with_no_catalog_barrier(tmp_path, tiny_model):
    lengths = make_catalog(str(tmp_path / "in"), 12, 40.0)
    output = str(tmp_path / "out")
    watcher, started, wall = run_watched(
        command(str(tmp_path / "in"), output, tiny_model), output, lengths, str(tmp_path / "log")
    )
    times = sorted((t - started, track) for track, t in watcher.completed.items())
    completions = ", ".join(f"{track} {t:.1f} s" for t, track in times)
    print(f"\nwall {wall:.1f} s; stems complete at: {completions}")
    assert len(times) == 12
    # the first track's stems come in the first half of the separating time (from the first
    # batch the run reports on its start-up line to the end), not with the catalog's last ones
    log = open(tmp_path / "log").read()
    first_batch = float(re.search(r"start-up: .*first batch at ([\d.]+) s", log).group(1))
    assert times[0][0] - first_batch < (wall - first_batch) / 2, "the first track waited"
    # one after another: the completions spread over the run instead of landing together
    gaps = [b[0] - a[0] for a, b in zip(times, times[1:])]
    assert sum(g > 0.05 for g in gaps) >= 9, gaps
    assert times[-1][0] - times[0][0] > wall / 4
    for track_id, length in lengths.items():
        for stem in STEMS:
            info = soundfile.info(os.path.join(output, track_id, f"{stem}.wav"))
            assert (info.frames, info.samplerate, info.channels) == (length, 44100, 2)
    assert leftovers(output) == []


@pytest.mark.slow
def test_kill_9_keeps_finished_tracks_and_the_rerun_does_only_the_rest(tmp_path, tiny_model):
    # rows (and done-markers) are committed every 5 s (CommitRows' max_delay_s): the catalog
    # takes several times that to separate, so a kill can fall between two commits
    lengths = make_catalog(str(tmp_path / "in"), 12, 120.0)
    output = str(tmp_path / "out")
    argv = command(str(tmp_path / "in"), output, tiny_model)
    proc = start(argv, str(tmp_path / "log"))
    done_dir = os.path.join(output, ".stembeam", "done")
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if len(markers(done_dir)) >= 4:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_at_kill = len(markers(done_dir))
    first = rows(output)
    assert 4 <= done_at_kill < 12
    # durable: every track marked done before the kill has its committed row
    assert len([r for r in first if r[2] == "ok"]) >= done_at_kill

    rerun = start(argv, str(tmp_path / "log"))
    assert rerun.wait(timeout=600) == 0, open(tmp_path / "log").read()[-3000:]
    second_run = sorted({r[0] for r in rows(output)} - {r[0] for r in first})
    assert len(second_run) == 1
    second = {track: status for run, track, status in rows(output) if run == second_run[0]}
    assert sorted(second) == sorted(lengths)  # one row per track (primary key: run, track)
    separated = [t for t, s in second.items() if s == "ok"]
    skipped = [t for t, s in second.items() if s == "skipped"]
    print(
        f"\n{done_at_kill} tracks done at the kill; the rerun separated {len(separated)}, "
        f"skipped {len(skipped)}"
    )
    assert len(skipped) >= done_at_kill and len(separated) <= 12 - done_at_kill + 1
    assert len(separated) + len(skipped) == 12
    for track_id, length in lengths.items():
        for stem in STEMS:
            info = soundfile.info(os.path.join(output, track_id, f"{stem}.wav"))
            assert (info.frames, info.samplerate) == (length, 44100)
    assert leftovers(output) == []


@pytest.mark.slow
def test_temporary_storage_is_bounded_by_tracks_in_flight(tmp_path, tiny_model):
    peaks, stem_bytes = {}, {}
    for n in (10, 40):
        catalog, output = str(tmp_path / f"in{n}"), str(tmp_path / f"out{n}")
        lengths = make_catalog(catalog, n, 5.0)
        watcher, _, _ = run_watched(
            command(catalog, output, tiny_model), output, lengths, str(tmp_path / "log")
        )
        peaks[n] = watcher.peak_temp
        stem_bytes[n] = sum(
            os.path.getsize(os.path.join(output, t, f"{s}.wav")) for t in lengths for s in STEMS
        )
    print(
        f"\npeak temporary bytes: 10 tracks {peaks[10]}, 40 tracks {peaks[40]}; "
        f"stems written: {stem_bytes[10]}, {stem_bytes[40]}"
    )
    assert 0 < peaks[10] and 0 < peaks[40]
    assert peaks[40] < 3 * peaks[10], "temporary storage grows with the catalog"
    assert peaks[40] < stem_bytes[40] / 8
