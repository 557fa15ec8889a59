"""Per-stem SDR of a model next to two references on the same MUSDB18-HQ style songs.

- ``oracle IRM``: the ideal ratio mask (power) computed from the true stems,
  ``|S_i|^2 / sum_j |S_j|^2``, applied to the mixture STFT (Spleeter framing) and inverted: the
  upper bound for any mask-based model with that STFT. With ``--F`` the masks are zero above F
  bins, as a model with ``mask_extension='zeros'`` would have them.
- ``mixture``: the mixture itself as every stem's estimate (the do-nothing baseline).
- ``model`` (with ``--model``): the model, run with ``separate_waveform`` (overlapping segments,
  ratio masks) exactly as the pipeline runs it.

SDR is the global signal-to-distortion ratio in dB (``model.evaluation.global_sdr``);
``--museval`` adds the median BSSEval v4 SDR (museval, 1 s windows), which is much slower.
Each figure is the median over the songs where the stem is not silent.

The 4-stem demo model (weights are not in git; these commands rebuild them, about 45 minutes
on 2 busy CPU cores) and its table:

  stembeam make-dataset --output ~/.cache/stembeam/midi-musdb --tracks 28 --seed 0 --duration 20
  stembeam train --data ~/.cache/stembeam/midi-musdb --config 4stems --frame-length 1024 \
      --frame-step 256 --T 64 --F 128 --batch-size 4 --learning-rate 1e-3 --steps 200 \
      --checkpoint-every 50 --output ~/.cache/stembeam/models/midi-4stems-demo
  python3 -m bench.oracle_baselines --data ~/.cache/stembeam/midi-musdb --split test \
      --frame-length 1024 --frame-step 256 --F 128 --model ~/.cache/stembeam/models/midi-4stems-demo
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from stembeam.model.config import FRAME_LENGTH, FRAME_STEP
from stembeam.model.evaluation import median_global_sdr, stem_global_sdrs
from stembeam.model.spectral import istft, stft
from stembeam.model.training.train import evaluation_excerpt, find_tracks

MUSDB_STEMS = ("vocals", "drums", "bass", "other")


def oracle_irm(
    references: np.ndarray,
    frame_length: int = FRAME_LENGTH,
    frame_step: int = FRAME_STEP,
    F: int | None = None,
) -> np.ndarray:
    """Ideal ratio mask (power) estimates.

    Args:
      references: (N, C, S) float32 true stems; the mixture is their sum.
      F: when given, masks are zero above the lowest F bins.
    Returns:
      (N, C, S) float32 estimates.
    """
    n = references.shape[0]
    spectra = np.stack(
        [stft(references[..., s], frame_length, frame_step) for s in range(references.shape[-1])],
        axis=-1,
    )  # (frames, bins, C, S)
    power = np.abs(spectra) ** 2
    masks = power / np.maximum(power.sum(axis=-1, keepdims=True), 1e-20)
    if F is not None:
        masks[:, F:] = 0.0
    mix = spectra.sum(axis=-1)
    return np.stack(
        [
            istft(mix * masks[..., s], n, frame_length, frame_step)
            for s in range(references.shape[-1])
        ],
        axis=-1,
    )


def museval_median_sdr(
    references: np.ndarray, estimates: np.ndarray, stems: Sequence[str]
) -> dict[str, float]:
    """Median over 1 s windows of museval's BSSEval v4 SDR per stem; silent reference stems
    (which museval rejects) are left out of the evaluation and get NaN."""
    import museval

    audible = [s for s in range(len(stems)) if np.any(references[..., s])]
    sdr, _, _, _ = museval.evaluate(
        np.moveaxis(references[..., audible], -1, 0),
        np.moveaxis(estimates[..., audible], -1, 0),
        win=44100,
        hop=44100,
    )
    result = {stem: float("nan") for stem in stems}
    result.update({stems[s]: float(np.nanmedian(sdr[k])) for k, s in enumerate(audible)})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MUSDB18-HQ style root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", help="model spec to evaluate next to the baselines")
    parser.add_argument(
        "--seconds", type=float, default=600.0, help="evaluate the middle N seconds of each song"
    )
    parser.add_argument("--frame-length", type=int, default=FRAME_LENGTH)
    parser.add_argument("--frame-step", type=int, default=FRAME_STEP)
    parser.add_argument("--F", type=int, help="zero the oracle masks above F bins")
    parser.add_argument("--museval", action="store_true", help="also BSSEval v4 (slow)")
    args = parser.parse_args(argv)

    tracks = find_tracks(args.data, args.split, MUSDB_STEMS)
    methods = {
        "mixture": lambda mix, refs: np.repeat(mix[..., None], refs.shape[-1], -1),
        "oracle IRM": lambda mix, refs: oracle_irm(
            refs, args.frame_length, args.frame_step, args.F
        ),
    }
    if args.model:
        from stembeam.model.reconstruct import separate_waveform
        from stembeam.model.registry import load_model
        from stembeam.model.unet import batch_predictor

        loaded = load_model(args.model)
        if tuple(loaded.config.stems) != MUSDB_STEMS:
            raise SystemExit(f"{args.model} has stems {loaded.config.stems}, not {MUSDB_STEMS}")
        predict = batch_predictor(loaded.model)
        methods["model"] = lambda mix, refs: separate_waveform(mix, predict, loaded.config)
    scores: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    bss: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for track in tracks:
        mixture, references = evaluation_excerpt(track, MUSDB_STEMS, args.seconds)
        for name, method in methods.items():
            estimates = method(mixture, references)
            scores[name].append(stem_global_sdrs(references, estimates, MUSDB_STEMS))
            if args.museval:
                bss[name].append(museval_median_sdr(references, estimates, MUSDB_STEMS))
    present = {s: int(sum(np.isfinite(t[s]) for t in scores["mixture"])) for s in MUSDB_STEMS}
    print(f"{len(tracks)} songs from {args.data}/{args.split}; songs with the stem: {present}")
    header = "| method | metric | " + " | ".join(MUSDB_STEMS) + " |"
    print(header + "\n|" + "---|" * (len(MUSDB_STEMS) + 2))
    for name in methods:
        tables = [("global SDR", scores[name])] + (
            [("BSSEval v4 SDR", bss[name])] if args.museval else []
        )
        for metric, per_track in tables:
            medians = median_global_sdr(per_track, MUSDB_STEMS)
            print(
                f"| {name} | {metric} | "
                + " | ".join(f"{medians[s]:.2f}" for s in MUSDB_STEMS)
                + " |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
