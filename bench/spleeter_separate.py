"""Separates a waveform with Spleeter 2.4.2 itself; runs INSIDE the Spleeter venv.

    MODEL_PATH=DIR ~/.cache/stembeam/spleeter-venv/bin/python bench/spleeter_separate.py \
        spleeter:2stems IN.npy OUT.npz [--mwf]
IN.npy: (N, 2) float32 at 44.1 kHz. OUT.npz: one (N, 2) float32 array per stem.
"""

import argparse

import numpy as np
from spleeter.separator import Separator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--mwf", action="store_true", help="Spleeter's Wiener filtering")
    args = parser.parse_args()
    waveform = np.load(args.input)
    stems = Separator(args.model, MWF=args.mwf, multiprocess=False).separate(waveform)
    np.savez(args.output, **{k: np.asarray(v, np.float32) for k, v in stems.items()})


if __name__ == "__main__":
    main()
