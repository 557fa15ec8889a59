"""The two spectral paths on one batch of real music: host (numpy/scipy around the U-Net) against
graph (``model.fused``: STFT, U-Net, masks, inverse STFT in one TensorFlow function).

A batch of ``--batch`` middle segments of the default segmentation (576 frames fed, 512 kept,
11.9 s of audio each) of the bench.e2e catalog's songs, ratio masks and the default residual
(share). Each path runs in its own fresh process (in one process the two paths' allocations
slow each other down), rounds interleave them; medians of the wall time per batch. The host
path is timed per stage: STFT (``segment_spectrogram``), U-Net, masks + inverse STFT
(``reconstruct_segment``).
Also printed: how far apart the two paths' stems are (dB below the stems' energy).

    python3 -m bench.spectral_paths [--batch 4] [--runs 3] [--repeats 3] [--model spleeter:2stems]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.e2e import read_song, songs
from stembeam.model.fused import fused_separator
from stembeam.model.reconstruct import reconstruct_segment, segment_spectrogram
from stembeam.model.registry import load_model
from stembeam.model.segmentation import plan_segments, segment_sample_range
from stembeam.model.unet import batch_predictor


def segments(batch: int, size: int) -> np.ndarray:
    """(batch, size, 2) float32: consecutive pieces of bench.e2e's real songs."""
    pieces, total = [], 0
    for folder in songs():
        pieces.append(read_song(folder)[0])
        total += len(pieces[-1])
        if total >= batch * size:
            break
    audio = np.concatenate(pieces)
    return np.stack([audio[i * size : (i + 1) * size] for i in range(batch)])


def child(path: str, args: argparse.Namespace) -> None:
    """Times ``path`` here (after a warm-up call) ``--repeats`` times; prints the median seconds
    per stage as JSON, and saves the stems of the last call to ``--stems`` (.npy)."""
    loaded = load_model(args.model)
    cfg = loaded.config
    plan = plan_segments(3 * cfg.T, cfg.T)[1]  # a middle segment of the default segmentation
    start, stop = segment_sample_range(plan, cfg.T, cfg.frame_length, cfg.frame_step)
    samples = segments(args.batch, stop - start)
    if path == "host":
        predict = batch_predictor(loaded.model)
    else:
        fused = fused_separator(loaded.model, cfg, cfg.mask_extension, args.residual)

    def host() -> tuple[list[np.ndarray], dict[str, float]]:
        times, t0 = {}, time.perf_counter()
        spectra = [segment_spectrogram(s, cfg) for s in samples]
        times["STFT"], t0 = time.perf_counter() - t0, time.perf_counter()
        estimates = predict(np.stack([magnitude for _, magnitude in spectra]))
        times["U-Net"], t0 = time.perf_counter() - t0, time.perf_counter()
        blocks = [
            reconstruct_segment(mix, est, plan, cfg, "ratio", args.residual, s)[1]
            for (mix, _), est, s in zip(spectra, estimates, samples)
        ]
        times["masks+iSTFT"] = time.perf_counter() - t0
        return blocks, times

    def graph() -> tuple[list[np.ndarray], dict[str, float]]:
        t0 = time.perf_counter()
        blocks = [block for _, block in fused(samples, [plan] * len(samples))]
        return blocks, {"graph": time.perf_counter() - t0}

    run = host if path == "host" else graph
    run()  # trace, warm-up
    calls = [run() for _ in range(args.repeats)]
    stages = {k: statistics.median(times[k] for _, times in calls) for k in calls[0][1]}
    np.save(args.stems, np.stack(calls[-1][0]))
    kept_s = args.batch * (plan.keep_stop - plan.keep_start) * cfg.frame_step / cfg.sample_rate
    print(json.dumps({"stages": stages, "kept_s": kept_s, "frames": plan.length(cfg.T)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="rounds of fresh processes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument("--model", default="spleeter:2stems")
    parser.add_argument("--residual", default="share", choices=("none", "last", "share"))
    parser.add_argument("--child", choices=("host", "graph"), help=argparse.SUPPRESS)
    parser.add_argument("--stems", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs: dict[str, list[float]] = {}
    stems: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for path in ("host", "graph"):
                out = os.path.join(tmp, f"{path}.npy")
                argv = [sys.executable, "-m", "bench.spectral_paths", "--child", path]
                argv += ["--stems", out, "--batch", str(args.batch), "--model", args.model]
                argv += ["--repeats", str(args.repeats), "--residual", args.residual]
                proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                stages = result["stages"]
                if len(stages) > 1:
                    stages[f"{path} total"] = sum(stages.values())
                for stage, seconds in stages.items():
                    runs.setdefault(stage, []).append(seconds)
                stems[path] = np.load(out)
    audio_s = result["kept_s"]
    print(
        f"{args.model}, batch {args.batch} x {result['frames']} frames ({audio_s:.1f} s of kept "
        "audio), "
        f"residual {args.residual}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
        f"each path in its own process, {args.runs} rounds x {args.repeats} calls"
    )
    for stage, seconds in runs.items():
        median = statistics.median(seconds)
        print(f"  {stage:14s} {median:6.3f} s  ({audio_s / median:6.1f}x real time)")
    ratio = statistics.median(runs["graph"]) / statistics.median(runs["host total"])
    print(f"  graph / host wall: {ratio:.2f}")
    host, graph = stems["host"].astype(np.float64), stems["graph"].astype(np.float64)
    worst = min(10 * np.log10(np.sum(h**2) / np.sum((h - g) ** 2)) for h, g in zip(host, graph))
    print(f"  stems: graph within {worst:.1f} dB of host")


if __name__ == "__main__":
    main()
