"""Parity with Spleeter 2.4.2, and SDR on the MUSDB18 excerpt shipped in the stempeg wheel.

Runs Spleeter in its own venv (bench/spleeter_venv.sh) and stembeam here on the same real audio:

1. parity: ``segmentation='spleeter'`` with ratio masks; for each stem prints how far below the
   stem's energy the energy of the difference lies (dB; target >= 60), for 2stems with the real
   weights and for 4stems / 5stems with seeded random checkpoints in Spleeter's format
   (bench/spleeter_random_checkpoint.py);
2. SDR (museval BSSEval v4, median over 1 s frames) of the real 2stems model: Spleeter (ratio,
   Wiener) and stembeam (ratio / Wiener x overlap / spleeter segmentation, float32 and bfloat16).

    python3 bench/parity.py [--skip-sdr] [--skip-parity]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.e2e import prepare_spleeter  # noqa: E402
from stembeam.model.checkpoint import SPLEETER_INSTRUMENT_ORDER, import_spleeter_checkpoint  # noqa: E402
from stembeam.model.config import spleeter_config  # noqa: E402
from stembeam.model.fused import fused_separator  # noqa: E402
from stembeam.model.reconstruct import separate_waveform  # noqa: E402
from stembeam.model.registry import cache_root, load_model  # noqa: E402
from stembeam.model.unet import build_unet  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
VENV_PYTHON = os.path.join(cache_root(), "spleeter-venv", "bin", "python")
RANDOM_MODELS = os.path.join(cache_root(), "spleeter-random-models")


def excerpt() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The stempeg test track: mixture (N, 2) float32 and reference stems at 44.1 kHz."""
    import stempeg

    path = glob.glob(os.path.join(os.path.dirname(stempeg.__file__), "data", "*.stem.mp4"))[0]
    stems, rate = stempeg.read_stems(path)
    assert rate == 44100, rate
    stems = stems.astype(np.float32)  # MUSDB order: mixture, drums, bass, other, vocals
    refs = {"vocals": stems[4], "accompaniment": stems[1] + stems[2] + stems[3]}
    return stems[0], refs


def spleeter_separate(
    model: str, waveform: np.ndarray, model_path: str, mwf: bool = False
) -> dict[str, np.ndarray]:
    """Runs Spleeter 2.4.2 (in its venv) on ``waveform``; returns its stems, (N, 2) each."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npy"), os.path.join(tmp, "out.npz")
        np.save(src, waveform)
        cmd = [VENV_PYTHON, os.path.join(BENCH, "spleeter_separate.py"), model, src, dst]
        env = {**os.environ, "MODEL_PATH": model_path, "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run(
            cmd + (["--mwf"] if mwf else []), env=env, capture_output=True, text=True
        )
        if proc.returncode:
            raise RuntimeError(f"Spleeter failed:\n{proc.stderr[-3000:]}")
        with np.load(dst) as out:
            return {k: out[k] for k in out.files}


def stembeam_separate(
    model, cfg, waveform: np.ndarray, segmentation: str, postprocess: str, path: str = "host"
) -> dict[str, np.ndarray]:
    """stembeam's stems of ``waveform`` (N, 2), by name; ``path`` 'host' (numpy around the
    U-Net) or 'graph' (``model.fused``: the whole spectral path in TensorFlow)."""
    stems = separate_waveform(
        waveform,
        lambda x: model(x, training=False).numpy(),
        cfg,
        segmentation=segmentation,
        postprocess=postprocess,
        fused=fused_separator(model, cfg, cfg.mask_extension) if path == "graph" else None,
    )
    return {name: stems[..., i] for i, name in enumerate(cfg.stems)}


def difference_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10 log10(energy of reference / energy of reference - estimate), in dB."""
    err = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(err, 1e-30)))


def parity(waveform: np.ndarray) -> None:
    print("== parity: stembeam (segmentation='spleeter', ratio masks) vs Spleeter 2.4.2")
    print("   dB = energy of the stem / energy of the difference (target >= 60)")
    spleeter_models = prepare_spleeter(RANDOM_MODELS)
    for name in ("2stems", "4stems", "5stems"):
        cfg = spleeter_config(name)
        if name == "2stems":
            model_path, weights = spleeter_models, "real weights"
            model = load_model("spleeter:2stems").model
        else:
            model_path, weights = RANDOM_MODELS, "seeded random checkpoint"
            model = import_spleeter_checkpoint(
                os.path.join(RANDOM_MODELS, name, "model"), cfg, SPLEETER_INSTRUMENT_ORDER[name]
            )
        theirs = spleeter_separate(f"spleeter:{name}", waveform, model_path)
        ours = {
            path: stembeam_separate(model, cfg, waveform, "spleeter", "ratio", path)
            for path in ("host", "graph")
        }
        mix_energy = np.sum(waveform.astype(np.float64) ** 2)
        print(f"-- {name} ({weights}); host path, graph path (model.fused)")
        for stem in cfg.stems:
            share = np.sum(theirs[stem].astype(np.float64) ** 2) / mix_energy
            print(
                f"   {stem:14s} {difference_db(theirs[stem], ours['host'][stem]):6.1f} dB  "
                f"{difference_db(theirs[stem], ours['graph'][stem]):6.1f} dB   "
                f"(stem energy {10 * np.log10(share):6.1f} dB re mixture)"
            )


def median_sdr(refs: dict[str, np.ndarray], stems: dict[str, np.ndarray]) -> dict[str, float]:
    """museval BSSEval v4 SDR, median over 1 s frames, per stem."""
    import museval

    names = list(refs)
    sdr, _, _, _ = museval.evaluate(
        np.stack([refs[n] for n in names]), np.stack([stems[n] for n in names])
    )
    return {n: float(np.nanmedian(sdr[i])) for i, n in enumerate(names)}


def sdr_table(waveform: np.ndarray, refs: dict[str, np.ndarray]) -> None:
    print("== SDR on the stempeg MUSDB18 excerpt (museval median, dB), real 2stems weights")
    spleeter_models = prepare_spleeter()
    rows = []
    for mwf in (False, True):
        stems = spleeter_separate("spleeter:2stems", waveform, spleeter_models, mwf=mwf)
        rows.append((f"Spleeter 2.4.2 {'wiener' if mwf else 'ratio'}", median_sdr(refs, stems)))
    loaded = load_model("spleeter:2stems")
    bf16 = build_unet(loaded.config, "bfloat16")
    bf16.set_weights(loaded.model.get_weights())
    for precision, model in (("float32", loaded.model), ("bfloat16", bf16)):
        for segmentation in ("spleeter", "overlap"):
            for postprocess in ("ratio", "wiener"):
                t0 = time.perf_counter()
                stems = stembeam_separate(model, loaded.config, waveform, segmentation, postprocess)
                label = f"stembeam {precision} {segmentation} {postprocess}"
                rows.append((label, median_sdr(refs, stems)))
                print(f"   ({label}: separated in {time.perf_counter() - t0:.1f} s)")
    print(f"   {'':36s} {'vocals':>8s} {'accomp.':>8s}")
    for label, sdr in rows:
        print(f"   {label:36s} {sdr['vocals']:8.2f} {sdr['accompaniment']:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-sdr", action="store_true")
    args = parser.parse_args()
    waveform, refs = excerpt()
    print(f"audio: stempeg excerpt, {waveform.shape[0] / 44100:.2f} s stereo")
    if not args.skip_parity:
        parity(waveform)
    if not args.skip_sdr:
        sdr_table(waveform, refs)


if __name__ == "__main__":
    main()
