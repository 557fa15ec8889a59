"""The two spectral paths on one batch of real music: host (numpy/scipy around the U-Net) against
graph (``model.fused``: STFT, U-Net, masks, inverse STFT in one TensorFlow function).

A batch of ``--batch`` full segments (T = 512 frames, 11.9 s each) of the bench.e2e catalog's
songs, with the kept frames of a middle overlap segment, ratio masks and the default residual
(share). Rounds interleave the paths; medians of the wall time per batch. The host path is timed
per stage: STFT (``segment_spectrogram``), U-Net, masks + inverse STFT (``reconstruct_segment``).
Also printed: how far apart the two paths' stems are (dB below the stems' energy).

    python3 -m bench.spectral_paths [--batch 4] [--runs 5] [--model spleeter:2stems]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from bench.e2e import read_song, songs
from stembeam.model.fused import fused_separator
from stembeam.model.reconstruct import reconstruct_segment, segment_spectrogram
from stembeam.model.registry import load_model
from stembeam.model.segmentation import SegmentPlan
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default="spleeter:2stems")
    parser.add_argument("--residual", default="share", choices=("none", "last", "share"))
    args = parser.parse_args()
    loaded = load_model(args.model)
    cfg = loaded.config
    size = (cfg.T - 1) * cfg.frame_step + cfg.frame_length
    samples = segments(args.batch, size)
    plan = SegmentPlan(1, 0, cfg.T // 16, cfg.T - cfg.T // 16)  # a middle overlap segment
    predict = batch_predictor(loaded.model)
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

    host(), graph()  # traces, warm-up
    runs: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for path in (host, graph):
            blocks, times = path()
            if len(times) > 1:
                times[f"{path.__name__} total"] = sum(times.values())
            for stage, seconds in times.items():
                runs.setdefault(stage, []).append(seconds)
    audio_s = args.batch * (plan.keep_stop - plan.keep_start) * cfg.frame_step / cfg.sample_rate
    print(
        f"{args.model}, batch {args.batch} x {cfg.T} frames ({audio_s:.1f} s of kept audio), "
        f"residual {args.residual}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    for stage, seconds in runs.items():
        median = statistics.median(seconds)
        print(f"  {stage:14s} {median:6.3f} s  ({audio_s / median:6.1f}x real time)")
    ratio = statistics.median(runs["graph"]) / statistics.median(runs["host total"])
    print(f"  graph / host wall: {ratio:.2f}")
    host_blocks, _ = host()
    graph_blocks, _ = graph()
    worst = min(
        10 * np.log10(np.sum(h.astype(np.float64) ** 2) / np.sum((h - g).astype(np.float64) ** 2))
        for h, g in zip(host_blocks, graph_blocks)
    )
    print(f"  stems: graph within {worst:.1f} dB of host")


if __name__ == "__main__":
    main()
