"""Memory stays bounded by the batch, not the track: peak RSS of a whole ``stembeam separate``
process on a short and a 10x longer generated file (slow).

Run as a script to print the figures for other lengths:
``python3 tests/test_long_file.py 180 1800`` (seconds of audio each).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def write_long(path: str, seconds: int, rate: int = 44100) -> int:
    """A ``seconds``-long 16-bit stereo WAV written block by block; returns its length."""
    rng = np.random.default_rng(0)
    n = seconds * rate
    with soundfile.SoundFile(path, "w", rate, 2, subtype="PCM_16") as f:
        for start in range(0, n, 10 * rate):
            t = np.arange(start, min(n, start + 10 * rate)) / rate
            block = 0.3 * np.sin(2 * np.pi * np.outer(t, [220.0, 330.0]))
            f.write(block + 0.05 * rng.standard_normal(block.shape))
    return n


def peak_rss_mb(seconds: int, model: str, folder: str) -> tuple[float, int, int]:
    """(peak RSS in MB, input samples, stem samples) of separating one generated file."""
    audio = os.path.join(folder, f"long{seconds}.wav")
    n = write_long(audio, seconds)
    output = os.path.join(folder, f"out{seconds}")
    cmd = [
        sys.executable,
        "-m",
        "stembeam.pipeline",
        "separate",
        "--input",
        audio,
        "--output",
        output,
        "--model",
        model,
        "--report",
        "none",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], cwd=ROOT, check=True, capture_output=True, text=True
    )
    stem = soundfile.info(os.path.join(output, f"long{seconds}", "vocals.wav")).frames
    return int(proc.stdout.strip()) / 1024, n, stem


@pytest.mark.slow
def test_memory_does_not_grow_with_track_length(tmp_path, tiny_model):
    short_mb, n_short, stem_short = peak_rss_mb(60, tiny_model, str(tmp_path))
    long_mb, n_long, stem_long = peak_rss_mb(600, tiny_model, str(tmp_path))
    assert (stem_short, stem_long) == (n_short, n_long)  # never truncated
    # holding the 600 s track in memory would add its 212 MB of float32 input and 424 MB of
    # stems; streaming adds only allocator noise
    assert long_mb < short_mb + 200, (short_mb, long_mb)


_HOLD = (  # holds `mb` MB resident (pages written) for 3 s
    "import sys, time, numpy as np; a = np.ones(int(sys.argv[1]) << 20, np.uint8); time.sleep(3)"
)


def test_long_mode_peak_counts_the_whole_process_tree():
    """bench.e2e's long mode measures a process tree: /usr/bin/time reports the largest process
    (about 200 MB here), the tree sample the sum of two 200 MB children held at the same time."""
    from bench.e2e import timed

    hold = f"import subprocess, sys; cmd = [sys.executable, '-c', {_HOLD!r}, '200']; "
    parent = hold + "ps = [subprocess.Popen(cmd) for _ in range(2)]; [p.wait() for p in ps]"
    tree: list[float] = []
    _, largest = timed([sys.executable, "-c", parent], tree_gb=tree)
    assert len(tree) == 1
    assert 0.2 < largest < 0.3, largest  # 200 MiB = 0.21 GB plus an interpreter
    assert tree[0] > 2 * 0.2, tree  # both children at once


if __name__ == "__main__":
    from tests.conftest import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model(os.path.join(tmp, "tiny"))
        for seconds in map(int, sys.argv[1:] or ["180", "1800"]):
            mb, n, stem = peak_rss_mb(seconds, model, tmp)
            print(f"{seconds} s of audio: peak RSS {mb:.0f} MB, stems {stem} of {n} samples")
            for name in os.listdir(tmp):
                if name.startswith(("long", "out")):
                    subprocess.run(["rm", "-rf", os.path.join(tmp, name)])
