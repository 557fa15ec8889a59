"""GPU throughput of `stembeam separate` on hours of real music, 2stems and 4stems, two precisions.

Catalog: real songs from the Debian game-music packages (``fretsonfire-songs-*``: each song
folder's OGG parts summed; plus the MUSDB18 excerpt of the stempeg wheel), written as 16-bit
FLAC files, copies of them in turn until ``--hours`` (default 3.5) of audio; cached under
``~/.cache/stembeam/bench/gpu-catalog-<seconds>s``.

Models: each preset's released weights when the registry has or can fetch them, else seeded
random weights in the same architecture (the speed does not depend on the values); a model
folder is taken as it is.

For every model and precision: ``stembeam separate`` (default workers and batch size for the
machine) as a fresh process on the catalog and, for its start-up, on a 5 s catalog; throughput
with start-up (audio s / wall s) and without ((audio - 5 s) / (wall - start-up wall)); peak
host memory of the process; GPU utilisation and peak GPU memory from ``nvidia-smi`` sampled
every 0.5 s (where present); thread-seconds in the model load + warm-up and in U-Net batches
(``StemModelHandler``; summed over worker threads), the rest of the work being decode, STFT,
masks, iSTFT, writing and the runner. Then the check: the first ``--check-seconds`` of the
catalog separated again on the CPU (``CUDA_VISIBLE_DEVICES=-1``); per stem file
10 log10(sum cpu^2 / sum (device - cpu)^2) dB, which must be >= 60 dB in float32.

    bash bench/gpu.sh                       # python3 -m bench.gpu with the defaults
    python3 -m bench.gpu --cpu --seconds 5 --models FOLDER   # the CPU path (tests)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 44100
SONG_FOLDERS = "/usr/share/games/fretsonfire/data/songs/*/*"
STARTUP_SECONDS = 5.0
MIN_SNR_DB = 60.0


def bench_dir() -> str:
    from stembeam.model.registry import cache_root

    return os.path.join(cache_root(), "bench")


def real_songs() -> list[tuple[str, np.ndarray]]:
    """(name, (N, 2) float32 mixture at 44.1 kHz) of every real song found."""
    songs = []
    for folder in sorted(glob.glob(SONG_FOLDERS)):
        parts = [sf.read(f, dtype="float32") for f in sorted(glob.glob(f"{folder}/*.ogg"))]
        parts = [(p if p.ndim == 2 else np.stack([p, p], 1)) for p, rate in parts if rate == RATE]
        if parts:
            n = min(len(p) for p in parts)
            mix = sum(p[:n] for p in parts)
            songs.append((os.path.basename(folder), mix / max(1.0, np.abs(mix).max() / 0.99)))
    try:
        import stempeg

        (path,) = glob.glob(os.path.join(os.path.dirname(stempeg.__file__), "data", "*.stem.mp4"))
        stems, rate = stempeg.read_stems(path)
        if rate == RATE:
            songs.append(("musdb_excerpt", stems[0].astype(np.float32)))
    except (ImportError, ValueError):
        pass
    if not songs:
        sys.exit(
            f"no real songs: apt-get install fretsonfire-songs-muldjord (looked in "
            f"{SONG_FOLDERS}) or pip install stempeg"
        )
    return songs


def catalog(seconds: float) -> tuple[str, float]:
    """A folder of FLAC files holding ``seconds`` of real music (songs in turn, the last cut);
    returns (folder, audio seconds)."""
    folder = os.path.join(bench_dir(), f"gpu-catalog-{int(seconds)}s")
    if not os.path.isdir(folder):
        os.makedirs(bench_dir(), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=bench_dir())
        songs, jobs, total = real_songs(), [], 0
        while seconds * RATE - total >= RATE / 10:
            name, mix = songs[len(jobs) % len(songs)]
            piece = mix[: int(seconds * RATE) - total]
            jobs.append((os.path.join(tmp, f"{len(jobs):04d}-{name}.flac"), piece))
            total += len(piece)
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(lambda job: sf.write(job[0], job[1], RATE, subtype="PCM_16"), jobs))
        os.rename(tmp, folder)
    files = glob.glob(os.path.join(folder, "*.flac"))
    return folder, sum(sf.info(f).frames for f in files) / RATE


def seeded_model_folder(preset: str) -> str:
    """A model folder of ``preset`` with seeded random weights: He-scaled kernels, small biases,
    BatchNorm statistics of moderate spread (one generator per preset)."""
    from stembeam.model.checkpoint import write_model_folder
    from stembeam.model.config import spleeter_config
    from stembeam.model.unet import build_unet

    cfg = spleeter_config(preset)
    folder = os.path.join(bench_dir(), f"seeded-{cfg.name}")
    if os.path.exists(os.path.join(folder, "model.json")):
        return folder
    rng = np.random.default_rng(len(cfg.stems))
    model = build_unet(cfg)
    values = []
    for w in model.weights:
        shape, name = tuple(w.shape), w.path.rsplit("/", 1)[-1]
        if name == "kernel":
            fan_in = np.prod(shape[:2]) * (shape[3] if "deconv" in w.path else shape[2])
            values.append(rng.standard_normal(shape) * np.sqrt(2.0 / fan_in))
        elif name == "gamma":
            values.append(rng.uniform(0.5, 1.5, shape))
        elif name == "moving_variance":
            values.append(rng.uniform(0.5, 2.0, shape))
        else:  # bias, beta, moving_mean
            values.append(rng.normal(0.0, 0.1, shape))
    model.set_weights([v.astype("float32") for v in values])
    tmp = tempfile.mkdtemp(dir=bench_dir())
    write_model_folder(model, cfg, tmp, f"seeded random weights for {preset}")
    os.rename(tmp, folder)
    return folder


def model_spec(spec: str) -> tuple[str, str]:
    """(spec to run, weights kind): released weights if reachable, else seeded ones."""
    if not spec.startswith("spleeter:"):
        return spec, "folder"
    from stembeam.model.registry import resolve_model_dir

    try:
        resolve_model_dir(spec)
        return spec, "released"
    except Exception as e:  # no network, no cached checkpoint
        print(
            f"{spec}: released weights unavailable ({type(e).__name__}); seeded weights", flush=True
        )
        return seeded_model_folder(spec), "seeded"


class GpuSampler:
    """``nvidia-smi`` sampled every 0.5 s while running: mean utilisation %, peak memory MiB."""

    def __init__(self) -> None:
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "500",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )

    def stop(self) -> dict[str, float | None]:
        if self._proc is None:
            return {"gpu_util_mean": None, "gpu_mem_peak_mib": None}
        self._proc.terminate()
        out = self._proc.communicate()[0]
        rows = [
            [float(x) for x in line.split(",")[:2]]
            for line in out.splitlines()
            if line.count(",") >= 1 and line.split(",")[0].strip().isdigit()
        ]
        if not rows:
            return {"gpu_util_mean": None, "gpu_mem_peak_mib": None}
        util, mem = zip(*rows, strict=True)
        return {"gpu_util_mean": statistics.mean(util), "gpu_mem_peak_mib": max(mem)}


def run_separate(
    catalog_dir: str, out: str, spec: str, precision: str, cpu: bool, batch_size: int | None
) -> dict:
    """One fresh ``stembeam separate`` process (through ``child``); wall s, peak RSS GB, GPU
    samples and the child's stage timings."""
    stats = os.path.join(out, "bench-stats.json")
    argv = [
        "--input",
        catalog_dir,
        "--output",
        out,
        "--model",
        spec,
        "--precision",
        precision,
        "--force",
        "--results",
        f"sqlite:///{out}/results.db",
        "--report",
        "none",
    ]
    argv += ["--batch_size", str(batch_size)] if batch_size else []
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "STEMBEAM_BENCH_T0": repr(time.time()),
    }
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    sampler = GpuSampler()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.gpu", "child", stats, "--", *argv],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        gpu = sampler.stop()
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(
                f"stembeam separate failed ({proc.returncode}):\n{log.read()[-3000:]}"
            )
    with open(stats) as f:
        child = json.load(f)
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss / 1e6, **gpu, **child}


def child(stats: str, argv: list[str]) -> None:
    """Runs ``stembeam separate argv`` here, timing the handler's load thread and its U-Net
    batches; writes {load_s, unet_s, unet_batches, first_batch_s, summary} to ``stats``
    (first_batch_s: from the command's start, ``$STEMBEAM_BENCH_T0``, to the end of the first
    U-Net batch)."""
    from stembeam.pipeline import separate
    from stembeam.transforms import inference

    started = float(os.environ.get("STEMBEAM_BENCH_T0", time.time()))
    times = {"load_s": 0.0, "unet_s": 0.0, "unet_batches": 0, "first_batch_s": None}
    lock = threading.Lock()
    load, run_inference = inference.StemModelHandler._load, inference.StemModelHandler.run_inference

    def timed_load(self, *args):
        t0 = time.perf_counter()
        try:
            return load(self, *args)
        finally:
            with lock:
                times["load_s"] += time.perf_counter() - t0

    def timed_run_inference(self, batch, model, inference_args=None):
        model.get()  # waiting for the load is start-up, not U-Net time
        t0 = time.perf_counter()
        try:
            return run_inference(self, batch, model, inference_args)
        finally:
            with lock:
                times["unet_s"] += time.perf_counter() - t0
                times["unet_batches"] += 1
                if times["first_batch_s"] is None:
                    times["first_batch_s"] = time.time() - started

    inference.StemModelHandler._load = timed_load
    inference.StemModelHandler.run_inference = timed_run_inference
    out = separate.run(argv)
    with open(stats, "w") as f:
        json.dump({**times, "summary": out["summary"]}, f)


def stem_files(out: str) -> dict[str, str]:
    """Relative path -> path of every stem WAV under ``out``."""
    return {
        os.path.relpath(p, out): p
        for p in glob.glob(os.path.join(out, "**", "*.wav"), recursive=True)
    }


def snr_db(device_out: str, cpu_out: str) -> float:
    """Smallest 10 log10(sum cpu^2 / sum (device - cpu)^2) over the stem files (inf if equal)."""
    device, cpu = stem_files(device_out), stem_files(cpu_out)
    if not cpu or device.keys() != cpu.keys():
        raise RuntimeError(f"stem files differ: {sorted(device)} vs {sorted(cpu)}")
    worst = float("inf")
    for name, path in cpu.items():
        a = sf.read(device[name], dtype="float64")[0]
        b = sf.read(path, dtype="float64")[0]
        error = float(np.sum((a - b) ** 2))
        if error > 0:
            worst = min(worst, 10 * np.log10(np.sum(b**2) / error))
    return worst


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child(argv[1], argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.5)
    parser.add_argument("--seconds", type=float, default=None, help="overrides --hours")
    parser.add_argument("--models", nargs="+", default=["spleeter:2stems", "spleeter:4stems"])
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=("float32", "bfloat16", "auto"),
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: stembeam's for the machine"
    )
    parser.add_argument("--check-seconds", type=float, default=60)
    parser.add_argument("--cpu", action="store_true", help="hide any GPU (CI)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--keep", default=None, help="keep the stems under this folder")
    args = parser.parse_args(argv)

    seconds = args.seconds if args.seconds is not None else args.hours * 3600
    folder, audio_s = catalog(seconds)
    check_folder, check_s = catalog(min(args.check_seconds, seconds))
    startup_folder, startup_s = catalog(STARTUP_SECONDS)
    work = args.keep or tempfile.mkdtemp(dir=bench_dir())
    print(
        f"catalog {folder}: {len(glob.glob(folder + '/*.flac'))} files, {audio_s / 3600:.2f} h;"
        f" {'CPU only' if args.cpu else 'GPU if visible'}; {os.cpu_count()} cores",
        flush=True,
    )
    rows = []
    for spec_in in args.models:
        spec, weights = model_spec(spec_in)
        for precision in args.precisions:
            tag = f"{os.path.basename(spec.rstrip('/')).replace(':', '-')}-{precision}"
            out = os.path.join(work, tag)
            main_run = run_separate(folder, out, spec, precision, args.cpu, args.batch_size)
            row = {
                "model": spec_in,
                "weights": weights,
                "precision": precision,
                "audio_s": audio_s,
                **main_run,
            }
            row["rtf"] = audio_s / main_run["wall_s"]
            if audio_s > 2 * STARTUP_SECONDS:
                startup = run_separate(
                    startup_folder, out + "-startup", spec, precision, args.cpu, args.batch_size
                )
                row["startup_wall_s"] = startup["wall_s"]
                row["rtf_steady"] = (audio_s - startup_s) / (main_run["wall_s"] - startup["wall_s"])
            else:
                row["startup_wall_s"] = row["rtf_steady"] = None
            check_out = out if check_folder == folder else os.path.join(work, tag + "-check")
            if check_out != out:
                run_separate(check_folder, check_out, spec, precision, args.cpu, args.batch_size)
            cpu = run_separate(
                check_folder,
                os.path.join(work, tag + "-cpu"),
                spec,
                precision,
                True,
                args.batch_size,
            )
            row["check_s"] = check_s
            row["snr_vs_cpu_db"] = snr_db(check_out, os.path.join(work, tag + "-cpu"))
            row["snr_ok"] = precision != "float32" or row["snr_vs_cpu_db"] >= MIN_SNR_DB
            row["cpu_check_wall_s"] = cpu["wall_s"]
            rows.append(row)
            gpu = (
                f"GPU {row['gpu_util_mean']:.0f}% mean, {row['gpu_mem_peak_mib']:.0f} MiB peak"
                if row["gpu_util_mean"] is not None
                else "no nvidia-smi"
            )
            steady = f"{row['rtf_steady']:.1f}x" if row["rtf_steady"] else "n/a"
            startup = (
                f"{row['startup_wall_s']:.1f} s" if row["startup_wall_s"] else "n/a"
            ) + f" (first U-Net batch done after {row['first_batch_s']:.1f} s)"
            print(
                f"{spec_in} ({weights}) {precision}: {audio_s:.0f} s of audio in "
                f"{row['wall_s']:.1f} s = {row['rtf']:.1f}x real time with start-up, "
                f"{steady} without; start-up {startup}; host peak {row['peak_rss_gb']:.2f} GB; "
                f"{gpu}; load+warm-up {row['load_s']:.1f} s, U-Net {row['unet_s']:.1f} "
                f"thread-s in {row['unet_batches']} batches; stems vs CPU "
                f"{row['snr_vs_cpu_db']:.1f} dB ({'ok' if row['snr_ok'] else 'BELOW 60 dB'})",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if not all(r["snr_ok"] for r in rows):
        sys.exit("float32 stems differ from the CPU's by more than -60 dB")


if __name__ == "__main__":
    main()
