"""bfloat16 against float32: SDR cost on real and rendered music, and start-up times.

sdr      the real Spleeter 2stems weights in float32 and in bfloat16 (``build_unet``'s default:
         thin layers float32) on the MUSDB18 excerpt of the stempeg wheel and on rendered
         multitracks (``stembeam make-dataset --output DIR``: every ``DIR/*/*/mixture.wav``
         with its vocals/drums/bass/other; accompaniment = drums + bass + other); overlap
         segmentation, ratio masks; BSSEval v4 (model.evaluation) per song and stem. Prints each
         song's SDR change (bfloat16 - float32, dB) and the median over songs per stem: the
         figure ``model.unet.BF16_SDR_COST_DB`` records (its negative, worst stem).
startup  seconds from the start of a fresh process to its first U-Net batch, split into
         imports (Beam + TensorFlow + stembeam's pipeline modules), model load (resolve the
         folder, build, read the weights) and the first batch (trace + first forward pass),
         the steps ``transforms.inference.StemModelHandler`` runs on its loading thread;
         then ``stembeam separate`` itself on 5 s of real music (bench.gpu's catalog and
         runner): seconds from the command to the end of its first U-Net batch, and to its
         end; ``--runs`` fresh processes of each, medians.

    python3 -m bench.precision sdr [--dataset /tmp/ds] [--max-songs 16]
    python3 -m bench.precision startup [--runs 3] [--precision auto]
    python3 -m bench.precision batch-ab [--seconds 120] [--batch-sizes 2 4] [--runs 3]

batch-ab    ``stembeam separate`` (CPU, default workers) on ``--seconds`` of bench.gpu's catalog at
            each ``--batch-sizes``, interleaved rounds: wall s and U-Net thread-seconds, medians.
(The whole command against Spleeter's and an older checkout's: ``python3 -m bench.e2e startup``.)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

STEMS_2 = ("vocals", "accompaniment")


def songs(dataset: str | None, max_songs: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, (N, 2) mixture, (2, N, 2) vocals/accompaniment references) for each song."""
    import soundfile as sf
    import stempeg

    (path,) = glob.glob(os.path.join(os.path.dirname(stempeg.__file__), "data", "*.stem.mp4"))
    stems, _ = stempeg.read_stems(path)  # mixture, drums, bass, other, vocals
    stems = stems.astype(np.float32)
    out = [
        (
            "musdb:" + os.path.basename(path),
            stems[0],
            np.stack([stems[4], stems[1] + stems[2] + stems[3]]),
        )
    ]
    folders = sorted(glob.glob(os.path.join(dataset, "*", "*", "mixture.wav"))) if dataset else []
    for mixture in folders[:max_songs]:
        folder = os.path.dirname(mixture)
        parts = {
            s: sf.read(os.path.join(folder, f"{s}.wav"), dtype="float32")[0]
            for s in ("mixture", "vocals", "drums", "bass", "other")
        }
        references = np.stack([parts["vocals"], parts["drums"] + parts["bass"] + parts["other"]])
        if np.abs(parts["vocals"]).max() == 0:  # no lead part: SDR undefined for vocals
            continue
        out.append((os.path.basename(folder), parts["mixture"], references))
    return out


def sdr(args: argparse.Namespace) -> None:
    from stembeam.model import evaluation
    from stembeam.model.reconstruct import separate_waveform
    from stembeam.model.registry import load_model
    from stembeam.model.unet import batch_predictor

    predictors = {}
    for precision in ("float32", "bfloat16"):
        loaded = load_model("spleeter:2stems", precision=precision)
        predictors[precision] = batch_predictor(loaded.model)
    cfg = loaded.config
    rows = []
    print(f"song{' ' * 28} " + "  ".join(f"{s} f32 / bf16 / diff" for s in STEMS_2))
    for name, mixture, references in songs(args.dataset, args.max_songs):
        medians = {}
        for precision, predict in predictors.items():
            stems = separate_waveform(mixture, predict, cfg)
            metrics = evaluation.evaluate(references, np.moveaxis(stems, -1, 0))
            medians[precision] = evaluation.median_metrics(metrics)["sdr"]
        diff = medians["bfloat16"] - medians["float32"]
        rows.append(
            dict(
                song=name,
                float32=medians["float32"].tolist(),
                bfloat16=medians["bfloat16"].tolist(),
                diff=diff.tolist(),
            )
        )
        print(
            f"{name[:32]:32s} "
            + "  ".join(
                f"{medians['float32'][i]:6.2f} / {medians['bfloat16'][i]:6.2f} / {diff[i]:+.3f}"
                for i in range(len(STEMS_2))
            ),
            flush=True,
        )
    diffs = np.array([r["diff"] for r in rows])
    median = np.median(diffs, axis=0)
    print(
        f"median over {len(rows)} songs, bfloat16 - float32 SDR (dB): "
        + ", ".join(f"{s} {m:+.3f}" for s, m in zip(STEMS_2, median, strict=True))
        + f"; worst song/stem {diffs.min():+.3f}; cost (worst stem's median) "
        f"{max(0, -median.min()):.3f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


STARTUP_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import apache_beam
import tensorflow
import stembeam.pipeline.separate
t1 = time.perf_counter()
from stembeam.model.registry import load_model
from stembeam.model.unet import batch_predictor
loaded = load_model("spleeter:2stems", precision=sys.argv[1])
t2 = time.perf_counter()
cfg = loaded.config
x = np.random.default_rng(0).uniform(0, 1, (1, cfg.T, cfg.F, cfg.channels)).astype("float32")
batch_predictor(loaded.model)(x)
t3 = time.perf_counter()
print(json.dumps(dict(imports=t1 - t0, load=t2 - t1, first_batch=t3 - t2)))
"""


def startup(args: argparse.Namespace) -> None:
    """Imports / model load / first batch of fresh processes (see the module docstring)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "2"}
    times: dict[str, list[float]] = {}
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", STARTUP_CHILD, args.precision],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        total = time.perf_counter() - t0
        for key, value in {
            **json.loads(out.strip().splitlines()[-1]),
            "process total": total,
        }.items():
            times.setdefault(key, []).append(value)
    from bench import gpu

    folder, _ = gpu.catalog(gpu.STARTUP_SECONDS)
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            row = gpu.run_separate(
                folder, out, "spleeter:2stems", args.precision, "auto", True, None
            )
        times.setdefault("separate: first batch", []).append(row["first_batch_s"])
        times.setdefault("separate: whole 5 s run", []).append(row["wall_s"])
    print(
        f"start-up, {args.runs} fresh processes, precision {args.precision}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for key, values in times.items():
        print(
            f"  {key:24s} {statistics.median(values):6.2f} s  "
            f"({', '.join(f'{v:.2f}' for v in values)})"
        )


def batch_ab(args: argparse.Namespace) -> None:
    """Interleaved ``stembeam separate`` runs at each batch size (module docstring)."""
    from bench import gpu

    folder, audio_s = gpu.catalog(args.seconds)
    rows: dict[int, list[dict]] = {b: [] for b in args.batch_sizes}
    for _ in range(args.runs):
        for batch in args.batch_sizes:
            with tempfile.TemporaryDirectory() as out:
                rows[batch].append(
                    gpu.run_separate(folder, out, "spleeter:2stems", "auto", "auto", True, batch)
                )
    print(
        f"stembeam separate, {audio_s:.0f} s of audio, {args.runs} interleaved rounds, load "
        f"{os.getloadavg()[0]:.2f}"
    )
    for batch, runs in rows.items():
        walls = [r["wall_s"] for r in runs]
        wall, unet = statistics.median(walls), statistics.median(r["unet_s"] for r in runs)
        print(
            f"  batch {batch:2d}: wall {wall:6.1f} s ({', '.join(f'{w:.1f}' for w in walls)})"
            f" = {audio_s / wall:.1f}x real time; U-Net {unet:.1f} thread-s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sdr")
    s.add_argument("--dataset", default=None, help="a `stembeam make-dataset` output folder")
    s.add_argument("--max-songs", type=int, default=16)
    s.add_argument("--json", default=None, help="also write the per-song rows here")
    u = sub.add_parser("startup")
    u.add_argument("--runs", type=int, default=3)
    u.add_argument("--precision", default="auto")
    b = sub.add_parser("batch-ab")
    b.add_argument("--seconds", type=float, default=120)
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4])
    b.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    commands = {"batch-ab": batch_ab, "sdr": sdr, "startup": startup}
    commands[args.command](args)


if __name__ == "__main__":
    main()
