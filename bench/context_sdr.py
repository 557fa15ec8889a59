"""How much context an overlapping segment needs: SDR and U-Net work per segmentation choice.

Songs in MUSDB18-HQ layout with true stems (``stembeam make-dataset``, see
bench/oracle_baselines.py) are concatenated into one long track, so it holds many segment
boundaries. For Spleeter's cut and overlap contexts of 0, 64 and 128 frames the 2stems model
(real weights) separates it with ``separate_waveform``; vocals and accompaniment (= mixture -
vocals) are scored with BSSEval v4 (``model.evaluation``):

- whole track: median SDR over 1 s windows;
- seams: SDR of the 1 s either side of each of Spleeter's segment boundaries (windows where a
  reference is silent are left out), median and mean; this is where a cut can hurt.

U-Net work is the number of frames fed to the U-Net relative to Spleeter's cut.

    stembeam make-dataset --output ~/.cache/stembeam/midi-musdb --tracks 28 --seed 0 --duration 20
    python3 -m bench.context_sdr [--data ~/.cache/stembeam/midi-musdb] [--songs 12]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import soundfile as sf

from stembeam.model import evaluation
from stembeam.model.segmentation import plan_segments
from stembeam.model.training.train import find_tracks

SEAM_HALF_S = 1.0


def read_concatenated(tracks: list) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) mixture and (2, N, 2) references (vocals, mixture - vocals), float32, of
    ``model.training.Track`` s holding 'mixture' and 'vocals'."""

    def cat(stem: str) -> np.ndarray:
        return np.concatenate([sf.read(t.stems[stem][0], dtype="float32")[0] for t in tracks])

    mix, vocals = cat("mixture"), cat("vocals")
    return mix, np.stack([vocals, mix - vocals])


def seam_sdrs(
    refs: np.ndarray, estimates: np.ndarray, boundaries: list[int], half: int
) -> np.ndarray:
    """(n_seams, 2) SDR of the ``2 * half`` samples around each boundary, silent ones skipped."""
    rows = []
    for b in boundaries:
        r, e = refs[:, b - half : b + half], estimates[:, b - half : b + half]
        if np.abs(r).max(axis=(1, 2)).min() < 1e-4:
            continue
        rows.append(evaluation.evaluate(r, e, win=2 * half, hop=2 * half)["sdr"][:, 0])
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.expanduser("~/.cache/stembeam/midi-musdb"))
    parser.add_argument("--songs", type=int, default=12)
    parser.add_argument("--model", default="spleeter:2stems")
    args = parser.parse_args()

    from stembeam.model.reconstruct import separate_waveform
    from stembeam.model.registry import load_model
    from stembeam.model.unet import batch_predictor

    tracks = [
        t
        for split in ("train", "test")
        for t in find_tracks(args.data, split, ("mixture", "vocals"))
    ][: args.songs]
    mix, refs = read_concatenated(tracks)
    loaded = load_model(args.model)
    cfg = loaded.config
    predict = batch_predictor(loaded.model)
    segment = cfg.T * cfg.frame_step
    boundaries = list(range(segment, len(mix) - segment, segment))
    n_frames = len(mix) // cfg.frame_step
    n_cut = sum(p.length(cfg.T) for p in plan_segments(n_frames, cfg.T, "spleeter"))
    print(
        f"{len(tracks)} songs, {len(mix) / cfg.sample_rate:.0f} s, {len(boundaries)} of "
        f"Spleeter's boundaries; load {os.getloadavg()[0]:.2f}"
    )
    print(
        "segmentation      U-Net work  time s  median SDR voc/acc  seams median voc/acc  "
        "seams mean voc/acc"
    )
    choices = [("spleeter cut", "spleeter", 0)] + [
        (f"overlap {c}", "overlap", c) for c in (0, 64, 128)
    ]
    for label, mode, context in choices:
        t0 = time.perf_counter()
        stems = separate_waveform(mix, predict, cfg, segmentation=mode, context=context)
        seconds = time.perf_counter() - t0
        estimates = np.moveaxis(stems, 2, 0)
        whole = np.nanmedian(evaluation.evaluate(refs, estimates)["sdr"], axis=1)
        seams = seam_sdrs(refs, estimates, boundaries, int(SEAM_HALF_S * cfg.sample_rate))
        work = sum(p.length(cfg.T) for p in plan_segments(n_frames, cfg.T, mode, context)) / n_cut
        print(
            f"{label:16s}  {work:9.2f}x  {seconds:6.1f}  {whole[0]:8.2f} / {whole[1]:5.2f}  "
            f"{np.median(seams[:, 0]):10.2f} / {np.median(seams[:, 1]):5.2f}  "
            f"{seams[:, 0].mean():10.2f} / {seams[:, 1].mean():5.2f}  ({len(seams)} seams)",
            flush=True,
        )


if __name__ == "__main__":
    main()
