"""Speed of model.evaluation against museval.evaluate: 4 stems x 30 s of real music, v4,
1 s windows.

The references are the four stems of the MUSDB18 excerpt shipped in the stempeg wheel, looped to
the requested length; the estimates are references with mixture leakage, filtering and noise.
Prints the median wall time of each implementation (runs interleaved, same process) and the
largest difference between their figures.

    python3 bench/bsseval_speed.py [--seconds 30] [--runs 5] [--museval-runs 3]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import numpy as np
from scipy.signal import lfilter

from stembeam.model import evaluation


def musdb_excerpt(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(4, N, 2) references (drums, bass, other, vocals) and estimates, float32, 44.1 kHz."""
    import stempeg

    path = glob.glob(os.path.join(os.path.dirname(stempeg.__file__), "data", "*.stem.mp4"))[0]
    stems, _ = stempeg.read_stems(path)
    n = int(seconds * 44100)
    reps = -(-n // stems.shape[1])
    stems = np.tile(stems, (1, reps, 1))[:, :n]
    refs = stems[1:5]
    rng = np.random.default_rng(0)
    ests = 0.85 * refs + 0.1 * stems[0] + 0.01 * rng.standard_normal(refs.shape)
    ests = lfilter([0.7, 0.2, 0.1], [1.0], ests, axis=1)
    return refs.astype(np.float32), ests.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=5, help="runs of model.evaluation")
    parser.add_argument("--museval-runs", type=int, default=3)
    args = parser.parse_args()

    import museval

    refs, ests = musdb_excerpt(args.seconds)
    ours_t, theirs_t = [], []
    for i in range(max(args.runs, args.museval_runs)):
        if i < args.runs:
            t0 = time.perf_counter()
            ours = evaluation.evaluate(refs, ests)
            ours_t.append(time.perf_counter() - t0)
        if i < args.museval_runs:
            t0 = time.perf_counter()
            theirs = museval.evaluate(refs, ests)
            theirs_t.append(time.perf_counter() - t0)
    diff = max(np.nanmax(np.abs(ours[m] - t)) for m, t in zip(evaluation.METRICS, theirs))
    fast, slow = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"4 stems x {args.seconds:.0f} s, win=hop=1 s, v4")
    for name, median, times in (("model.evaluation", fast, ours_t), ("museval", slow, theirs_t)):
        print(
            f"{name:15s} median {median:7.2f} s over {len(times)} runs  "
            f"{[round(t, 2) for t in times]}"
        )
    print(
        f"speed-up {slow / fast:.1f}x; real-time factor {args.seconds / fast:.0f}x (ours), "
        f"{args.seconds / slow:.1f}x (museval)"
    )
    print(f"largest |difference| over SDR/ISR/SIR/SAR windows: {diff:.2e} dB")


if __name__ == "__main__":
    main()
