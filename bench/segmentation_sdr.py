"""Per-song SDR of the default overlap segmentation against Spleeter's cut.

Songs in MUSDB18-HQ layout with true stems (``stembeam make-dataset``), each longer than two
U-Net segments (T = 512 frames = 11.9 s) and with vocals, are separated one by one by the 2stems
model (real weights) with ``separate_waveform``, the code the pipeline runs, with the pipeline's
defaults (ratio masks, ``--residual share``) and with ``--residual none`` (Spleeter's output);
once with Spleeter's cut and once per overlap context. Vocals and accompaniment (= mixture -
vocals) are scored with BSSEval v4 (``model.evaluation``, museval's 1 s windows): a song's score
per stem is its median SDR over windows, as museval aggregates.

Printed: per song and residual, each segmentation's SDR and its difference to the cut; per
residual and stem, the median over songs of each segmentation's SDR, the median difference and
the worst song's difference (the most negative); and where the differences come from: the mean
per-window difference over windows holding a segment boundary (both segmentations keep the
cut's T-frame grid, so their seams are the same frames) and over all other windows.

    stembeam make-dataset --output ~/.cache/stembeam/midi-musdb-45s-40 --tracks 40 --seed 0 \
        --duration 45
    stembeam make-dataset --output ~/.cache/stembeam/midi-musdb-45s-40-seed1 --tracks 40 \
        --seed 1 --duration 45
    nice -n 10 python3 -m bench.segmentation_sdr --data ~/.cache/stembeam/midi-musdb-45s-40 \
        ~/.cache/stembeam/midi-musdb-45s-40-seed1
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import soundfile as sf

from stembeam.model import evaluation
from stembeam.model.segmentation import DEFAULT_CONTEXT, plan_segments
from stembeam.model.training.train import find_tracks

STEM_NAMES = ("vocals", "accompaniment")
TIE_DB = 0.005  # per-song differences within this are ties
REGIONS = ("seams", "elsewhere")


def read_song(track) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) mixture and (2, N, 2) references (vocals, mixture - vocals), float32, of a
    ``model.training.Track`` holding 'mixture' and 'vocals'."""
    mix = sf.read(track.stems["mixture"][0], dtype="float32")[0]
    vocals = sf.read(track.stems["vocals"][0], dtype="float32")[0]
    return mix, np.stack([vocals, mix - vocals])


def window_sdrs(refs: np.ndarray, stems: np.ndarray) -> np.ndarray:
    """(S, windows) SDR over 1 s windows of (N, C, S) stem estimates against (S, N, C) refs."""
    return evaluation.evaluate(refs, np.moveaxis(stems, 2, 0))["sdr"]


def seam_windows(n_windows: int, n_frames: int, cfg) -> np.ndarray:
    """(windows,) bool: the 1 s windows holding a boundary between two segments' kept frames."""
    out = np.zeros(n_windows, bool)
    for plan in plan_segments(n_frames, cfg.T, "spleeter")[1:]:
        out[min(n_windows - 1, plan.keep_start * cfg.frame_step // cfg.sample_rate)] = True
    return out


def summarise(label: str, cut: np.ndarray, overlap: np.ndarray) -> None:
    """Prints medians of (songs, S) SDRs of the cut and one overlap choice, their median
    difference and the worst song's difference."""
    diff = overlap - cut
    for s, name in enumerate(STEM_NAMES):
        worst = int(np.argmin(diff[:, s]))
        print(
            f"  {label:28s} {name:13s} cut {np.median(cut[:, s]):7.3f}  overlap "
            f"{np.median(overlap[:, s]):7.3f}  median diff {np.median(diff[:, s]):+6.3f}  "
            f"mean diff {diff[:, s].mean():+6.2f}  worst {diff[worst, s]:+6.2f} (song {worst})  "
            f"overlap better / worse by > {TIE_DB} dB on {int((diff[:, s] > TIE_DB).sum())} / "
            f"{int((diff[:, s] < -TIE_DB).sum())} of {len(diff)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", nargs="+", default=[os.path.expanduser("~/.cache/stembeam/midi-musdb-45s-40")]
    )
    parser.add_argument("--songs", type=int, default=28, help="at most this many songs")
    parser.add_argument("--model", default="spleeter:2stems")
    parser.add_argument("--residuals", nargs="+", default=["share", "none"])
    parser.add_argument(
        "--contexts",
        nargs="+",
        type=int,
        default=None,
        help="overlap contexts, frames, multiples of 64 (default: model.segmentation."
        "DEFAULT_CONTEXT)",
    )
    args = parser.parse_args()

    from stembeam.model.reconstruct import separate_waveform
    from stembeam.model.registry import load_model
    from stembeam.model.spectral import frame_count
    from stembeam.model.unet import batch_predictor

    loaded = load_model(args.model)
    cfg = loaded.config
    predict = batch_predictor(loaded.model)
    contexts = args.contexts or [DEFAULT_CONTEXT]
    min_samples = 2 * cfg.T * cfg.frame_step
    songs = []
    for track in [
        t
        for data in args.data
        for split in ("train", "test")
        for t in find_tracks(data, split, ("mixture", "vocals"))
    ]:
        mix, refs = read_song(track)
        if len(mix) > min_samples and np.abs(refs).max(axis=(1, 2)).min() > 0:
            songs.append((track.name, mix, refs))
    songs = songs[: args.songs]
    choices = [("spleeter", 0)] + [("overlap", c) for c in contexts]
    print(
        f"{len(songs)} songs of {min(len(m) for _, m, _ in songs) / cfg.sample_rate:.0f}-"
        f"{max(len(m) for _, m, _ in songs) / cfg.sample_rate:.0f} s (> 2 segments = "
        f"{min_samples / cfg.sample_rate:.1f} s, vocals present); overlap contexts {contexts} "
        f"frames; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    # scores[residual][choice] -> (songs, S); regions[residual][context][region] -> (windows, S)
    scores = {r: {c: [] for c in choices} for r in args.residuals}
    regions = {r: {c: {k: [] for k in REGIONS} for c in contexts} for r in args.residuals}
    t0 = time.perf_counter()
    for i, (name, mix, refs) in enumerate(songs):
        for residual in args.residuals:
            row, windows = [], []
            for mode, context in choices:
                stems = separate_waveform(
                    mix, predict, cfg, segmentation=mode, context=context, residual=residual
                )
                windows.append(window_sdrs(refs, stems))
                row.append(np.nanmedian(windows[-1], axis=1))
                scores[residual][(mode, context)].append(row[-1])
            n_windows, n_frames = windows[0].shape[1], frame_count(len(mix))
            seams = seam_windows(n_windows, n_frames, cfg)
            for context, sdr in zip(contexts, windows[1:]):
                diff = (sdr - windows[0]).T
                for region, mask in zip(REGIONS, (seams, ~seams)):
                    regions[residual][context][region].extend(diff[mask])
            cells = "  ".join(
                f"ctx {c:3d} {r[0] - row[0][0]:+6.3f} / {r[1] - row[0][1]:+6.3f}"
                for (_, c), r in zip(choices[1:], row[1:])
            )
            print(
                f"{i:2d} {name[:28]:28s} {len(mix) / cfg.sample_rate:4.0f} s  residual "
                f"{residual:5s}  cut {row[0][0]:7.3f} / {row[0][1]:6.3f}  overlap - cut "
                f"voc/acc: {cells}",
                flush=True,
            )
    print(f"{time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.2f}")
    fed = {
        c: sum(
            p.length(cfg.T)
            for _, mix, _ in songs
            for p in plan_segments(frame_count(len(mix)), cfg.T, *c)
        )
        for c in choices
    }
    for mode, context in choices[1:]:
        work = fed[(mode, context)] / fed[choices[0]]
        print(f"overlap context {context}: U-Net work {work:.3f}x the cut's on these songs")
    for residual in args.residuals:
        print(f"residual {residual}: median over {len(songs)} songs (dB)")
        cut = np.array(scores[residual][choices[0]])
        for mode, context in choices[1:]:
            summarise(
                f"overlap context {context}", cut, np.array(scores[residual][(mode, context)])
            )
            for region, diffs in regions[residual][context].items():
                d = np.array(diffs)
                print(
                    f"    windows {region + ':':16s} {len(d):4d}, mean overlap - cut "
                    f"{np.nanmean(d[:, 0]):+6.2f} / {np.nanmean(d[:, 1]):+6.2f} dB voc/acc"
                )


if __name__ == "__main__":
    main()
