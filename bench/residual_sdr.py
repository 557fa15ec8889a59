"""What the residual options cost or gain: median SDR per stem, ``residual`` none / last / share.

``none`` drops what the stems miss of the mixture (with the released models' 'zeros' mask
extension: everything above F=1024 bins, about 11 kHz); ``last`` adds it to the last stem
(accompaniment / other); ``share`` shares it out by the ratio masks (above F: each frame's mean
mask). Tracks: the MUSDB18 excerpt shipped in the stempeg wheel, plus, with ``--data``, the test
songs of a MUSDB18-HQ style folder (``stembeam make-dataset``). Model: the real 2stems weights,
default segmentation (overlap). References are vocals and the mixture minus vocals; BSSEval v4
(``model.evaluation``), median over 1 s windows.

    python3 -m bench.residual_sdr [--data DIR] [--split test] [--songs 4]
                                  [--postprocess ratio wiener]
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import soundfile as sf

from stembeam.model import evaluation
from stembeam.model.masks import RESIDUAL_MODES
from stembeam.model.reconstruct import separate_waveform
from stembeam.model.training.train import find_tracks


def stempeg_excerpt() -> tuple[str, np.ndarray, np.ndarray]:
    """('musdb-excerpt', (N, 2) mixture, (2, N, 2) references vocals / rest), float32."""
    import stempeg

    (path,) = glob.glob(os.path.join(os.path.dirname(stempeg.__file__), "data", "*.stem.mp4"))
    stems, _ = stempeg.read_stems(path)  # mixture, drums, bass, other, vocals
    stems = stems.astype(np.float32)
    return "musdb-excerpt", stems[0], np.stack([stems[4], stems[0] - stems[4]])


def dataset_songs(root: str, split: str, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The first ``count`` songs with vocals of a MUSDB18-HQ style folder's ``split``, as
    ``stempeg_excerpt``."""
    songs = []
    for track in find_tracks(root, split, ("mixture", "vocals")):
        if len(songs) == count:
            break
        mix = sf.read(track.stems["mixture"][0], dtype="float32")[0]
        vocals = sf.read(track.stems["vocals"][0], dtype="float32")[0]
        if not np.any(vocals):  # instrumental: BSSEval is undefined for a silent reference
            continue
        songs.append((track.name, mix, np.stack([vocals, mix - vocals])))
    return songs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="MUSDB18-HQ style folder (make-dataset)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--songs", type=int, default=4)
    parser.add_argument("--postprocess", nargs="+", default=["ratio", "wiener"])
    args = parser.parse_args()
    from stembeam.model.registry import load_model
    from stembeam.model.unet import batch_predictor

    loaded = load_model("spleeter:2stems")
    predict = batch_predictor(loaded.model)
    cfg = loaded.config
    songs = [stempeg_excerpt()] + (
        dataset_songs(args.data, args.split, args.songs) if args.data else []
    )
    print(
        f"{'track':<24} {'post':<7} {'residual':<8} "
        + " ".join(f"{s:>14}" for s in cfg.stems)
        + "  (median SDR, dB)"
    )
    for name, mix, refs in songs:
        for post in args.postprocess:
            base = None
            for mode in RESIDUAL_MODES:
                stems = separate_waveform(mix, predict, cfg, postprocess=post, residual=mode)
                sdr = evaluation.median_metrics(
                    evaluation.evaluate(refs, np.moveaxis(stems, -1, 0))
                )["sdr"]
                base = sdr if base is None else base
                cells = " ".join(f"{v:7.2f} ({v - b:+.2f})" for v, b in zip(sdr, base))
                print(f"{name[:24]:<24} {post:<7} {mode:<8} {cells}", flush=True)


if __name__ == "__main__":
    main()
