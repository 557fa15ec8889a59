"""End-to-end speed: `stembeam separate` against `spleeter separate`, stage profile, long files.

Catalog: the songs of the Debian package ``fretsonfire-songs-muldjord`` (real rock music, OGG,
44.1 kHz stereo; each song ships as ``song.ogg`` + ``guitar.ogg``, which are also reference stems).
Their sums are written as OGG mixtures under ~/.cache/stembeam/bench/catalog (``--seconds`` of
audio in all, default 600). Long files loop those mixtures.

    apt-get install -y fretsonfire-songs-muldjord
    python3 -m bench.e2e profile [--seconds 60] [--model spleeter:2stems] [--postprocess ratio]
    python3 -m bench.e2e pipeline-profile [--seconds 180] [--model spleeter:2stems]
    python3 -m bench.e2e compare [--seconds 600] [--runs 3] [--models spleeter:2stems ...]
    python3 -m bench.e2e long [--minutes 20 120] [--tools stembeam spleeter spleeter-d600]
    python3 -m bench.e2e short-tracks [--seconds 180] [--track-seconds 3] [--runs 3]
    python3 -m bench.e2e startup [--runs 5] [--long-seconds 30] [--baseline CHECKOUT]

profile  one track through the model-level path (model.reconstruct.separate_waveform), each stage
         timed: decode, STFT, U-Net, masks/Wiener, iSTFT, WAV write, BSSEval v4 (model.evaluation)
         against the song/guitar references.
pipeline-profile
         `stembeam separate` itself (in this process, 1 worker) on ``--seconds`` of the catalog,
         each stage timed inside the running pipeline: decode, waiting for the model load,
         STFT, U-Net, masks+iSTFT, overlap-add + resample + stem writing, publishing, marker
         writes; "other" is the rest of the run's wall time (runner, catalog, results, report).
         The model load (and warm-up) runs on its own thread beside them: printed apart.
compare  wall time of `stembeam separate` and `spleeter separate -d 20000` (its own venv, same
         checkpoint, same files) mode for mode: ratio masks vs Spleeter's default, Wiener vs --mwf;
         with start-up (whole command) and without (minus the same command on a 5 s file);
         stembeam with --direct_num_workers 1 and 2. Real-time factor = audio s / wall s.
         Every configuration runs once per round (medians over --runs rounds), and each round
         also times the U-Net alone (Spleeter's cut, batch 4): the ceiling for any tool doing
         the same arithmetic here, printed as a multiple of Spleeter's steady figure.
compare, startup and long make the Spleeter venv (bench/spleeter_venv.sh) and the seeded random
Spleeter-format 4stems/5stems checkpoints (bench/spleeter_random_checkpoint.py, in
~/.cache/stembeam/spleeter-random-models) the first time they need them.
short-tracks
         the per-track overhead: wall time of the ``--seconds`` catalog as it is (few long
         tracks) and cut into ``--track-seconds`` tracks, interleaved, in this process.
startup  start-up of both tools, interleaved round by round: the whole command (defaults, 2stems)
         on a 5 s file and on a ``--long-seconds`` file; the fixed cost of each tool is the
         5 s wall minus 5 s of audio at the per-second cost the two lengths give
         (wall(d) = fixed + d * cost). For stembeam also its own start-up line (imports, model
         load, first batch into the U-Net, from the process's start); Spleeter has no comparable
         in-process point, its fixed cost (which also holds its teardown) stands for it.
         ``--baseline``: another checkout of stembeam, run the same way (before/after).
long     peak RSS (the whole process tree) and output length of both tools on a 20-minute and a
         2-hour file (stembeam with default options; Spleeter with -d 20000 and with its default
         600 s); Spleeter is killed past
         --spleeter-timeout s or --spleeter-max-gb GB resident, so it cannot take the machine down.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf

RATE = 44100
SONGS = "/usr/share/games/fretsonfire/data/songs/muldjord"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "stembeam")
BENCH = os.path.join(CACHE, "bench")
SPLEETER = os.path.join(CACHE, "spleeter-venv", "bin", "spleeter")
SPLEETER_MODELS = {  # MODEL_PATH per preset: real 2stems weights, seeded random 4stems
    "spleeter:2stems": os.path.join(CACHE, "spleeter-models"),
    "spleeter:4stems": os.path.join(CACHE, "spleeter-random-models"),
}


def prepare_spleeter(random_models: str | None = None) -> str:
    """Makes, where missing, the Spleeter venv with the real 2stems checkpoint and (into
    ``random_models``, when given) the seeded random 4stems/5stems checkpoints; both steps are
    idempotent. Returns the folder holding the real 2stems checkpoint (Spleeter's MODEL_PATH)."""
    here = os.path.dirname(os.path.abspath(__file__))
    models = subprocess.run(
        ["bash", os.path.join(here, "spleeter_venv.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    if random_models and not os.path.exists(os.path.join(random_models, "5stems", ".probe")):
        python = os.path.join(os.path.dirname(SPLEETER), "python")
        script = os.path.join(here, "spleeter_random_checkpoint.py")
        subprocess.run([python, script, random_models], check=True, stdout=subprocess.DEVNULL)
    return models


def songs() -> list[str]:
    folders = sorted(glob.glob(os.path.join(SONGS, "*", "song.ogg")))
    if not folders:
        sys.exit(f"no songs in {SONGS}: apt-get install -y fretsonfire-songs-muldjord")
    return [os.path.dirname(f) for f in folders]


def read_song(folder: str, frames: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) float32 mixture and (2, N, 2) references (guitar, song); N <= frames if given."""
    guitar, rate = sf.read(os.path.join(folder, "guitar.ogg"), frames, dtype="float32")
    rest, _ = sf.read(os.path.join(folder, "song.ogg"), frames, dtype="float32")
    assert rate == RATE
    n = min(len(guitar), len(rest))
    refs = np.stack([guitar[:n], rest[:n]])
    return refs.sum(axis=0), refs


def catalog(seconds: float) -> tuple[str, float]:
    """A folder of OGG mixtures holding about ``seconds`` of audio (whole songs, the last cut)."""
    folder = os.path.join(BENCH, f"catalog-{int(seconds)}s")
    if not os.path.isdir(folder):
        total = 0.0
        tmp = tempfile.mkdtemp(dir=BENCH)
        for song in songs():
            if seconds - total < 1:  # float sums fall short of whole seconds: no 1-sample tracks
                break
            mix, _ = read_song(song)
            mix = mix[: int((seconds - total) * RATE)]
            # libsndfile's Vorbis encoder crashes on long single writes: write in blocks
            with sf.SoundFile(
                os.path.join(tmp, os.path.basename(song) + ".ogg"),
                "w",
                RATE,
                2,
                format="OGG",
                subtype="VORBIS",
            ) as out:
                for start in range(0, len(mix), 1 << 16):
                    out.write(mix[start : start + (1 << 16)])
            total += len(mix) / RATE
        os.rename(tmp, folder)
    total = sum(sf.info(f).duration for f in glob.glob(os.path.join(folder, "*.ogg")))
    return folder, total


def long_file(minutes: float) -> str:
    """A WAV of ``minutes`` minutes looping the catalog's mixtures."""
    path = os.path.join(BENCH, f"long-{int(minutes)}min.wav")
    if not os.path.exists(path):
        n = int(minutes * 60 * RATE)
        mixes = [read_song(s)[0] for s in songs()]
        with sf.SoundFile(path + ".tmp", "w", RATE, 2, format="WAV", subtype="FLOAT") as out:
            written = 0
            while written < n:
                for mix in mixes:
                    piece = mix[: n - written]
                    out.write(piece)
                    written += len(piece)
        os.rename(path + ".tmp", path)
    return path


def _tree_rss_gb(root: int) -> float:
    """Resident memory of process ``root`` and all its descendants, GB (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total_kb, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                total_kb += next(
                    (int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0
                )
        except OSError:
            pass
    return total_kb / 1e6


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 1e6


class Stopped(RuntimeError):
    """A command killed by ``timed`` for running past its time or memory limit."""


def timed(
    cmd: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    max_rss_gb: float | None = None,
    min_available_gb: float = 1.5,
    tree_gb: list[float] | None = None,
    cpu_s: list[float] | None = None,
) -> tuple[float, float]:
    """Runs ``cmd`` under /usr/bin/time; returns (wall s, peak RSS GB of its largest process);
    raises on failure.

    The command (its whole process group) is killed, raising ``Stopped``, when it runs longer
    than ``timeout_s``, when its process tree holds more than ``max_rss_gb`` resident, or when
    the machine's available memory falls below ``min_available_gb`` while ``max_rss_gb`` is set.
    With ``tree_gb`` (a list), the peak resident memory of the whole process tree, sampled every
    0.5 s, is appended to it; with ``cpu_s``, the CPU seconds (user + system) the command used.
    """
    with (
        tempfile.NamedTemporaryFile("r", suffix=".time") as report,
        tempfile.TemporaryFile("w+") as stderr,
    ):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", report.name, *cmd],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        seen_gb, reason = 0.0, ""
        while True:
            try:
                proc.wait(timeout=0.5)  # returns as soon as the command ends
                break
            except subprocess.TimeoutExpired:
                pass
            wall = time.perf_counter() - t0
            if max_rss_gb is not None or tree_gb is not None:
                seen_gb = max(seen_gb, _tree_rss_gb(proc.pid))
            if max_rss_gb is not None:
                if seen_gb > max_rss_gb:
                    reason = f"resident memory above {max_rss_gb:g} GB"
                elif _available_gb() < min_available_gb:
                    reason = f"machine's available memory below {min_available_gb} GB"
            if timeout_s is not None and wall > timeout_s:
                reason = f"still running after {timeout_s:.0f} s"
            if reason:
                os.killpg(proc.pid, 9)
                proc.wait()
                raise Stopped(f"stopped after {wall:.0f} s at {seen_gb:.2f} GB resident: {reason}")
        wall = time.perf_counter() - t0
        if proc.returncode:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr.read()[-3000:]}")
        peak_kb, user_s, system_s = map(float, report.read().strip().splitlines()[-1].split())
    if tree_gb is not None:
        tree_gb.append(seen_gb)
    if cpu_s is not None:
        cpu_s.append(user_s + system_s)
    return wall, peak_kb / 1e6


def stembeam_model(preset: str) -> str:
    """stembeam's model spec for a preset: the registry name for the real 2stems weights, a model
    folder imported from the seeded random Spleeter checkpoint for the others (no real weights
    are reachable here)."""
    if preset == "spleeter:2stems":
        return preset
    from stembeam.model.checkpoint import (
        SPLEETER_INSTRUMENT_ORDER,
        import_spleeter_checkpoint,
        write_model_folder,
    )
    from stembeam.model.config import spleeter_config

    name = preset.split(":")[1]
    folder = os.path.join(BENCH, f"random-{name}")
    if not os.path.exists(os.path.join(folder, "model.json")):
        cfg = spleeter_config(preset)
        ckpt = os.path.join(SPLEETER_MODELS[preset], name)
        model = import_spleeter_checkpoint(ckpt, cfg, SPLEETER_INSTRUMENT_ORDER[name])
        write_model_folder(model, cfg, folder, f"seeded random Spleeter checkpoint {ckpt}")
    return folder


def stembeam_cmd(inputs: str, out: str, model: str, postprocess: str, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stembeam.pipeline",
        "separate",
        "--input",
        inputs,
        "--output",
        out,
        "--model",
        model,
        "--postprocess",
        postprocess,
        "--force",
        "--direct_num_workers",
        str(workers),
        "--results",
        f"sqlite:///{out}/results.db",
    ]


def spleeter_cmd(files: list[str], out: str, model: str, wiener: bool) -> list[str]:
    # -d must stay below 2^31 / 44100 s: with -d 100000 Spleeter 2.4.2 writes empty stems
    cmd = [SPLEETER, "separate", "-p", model, "-o", out, "-d", "20000", *files]
    return cmd + ["--mwf"] if wiener else cmd


def stem_seconds(out: str) -> list[float]:
    """Durations of the stems written under ``out``, seconds."""
    stems = glob.glob(os.path.join(out, "**", "*.wav"), recursive=True)
    return [sf.info(f).duration for f in stems]


def output_seconds(out: str) -> float:
    """Longest stem written under ``out``, seconds."""
    return max(stem_seconds(out), default=0.0)


def shortest_stem_seconds(out: str) -> float:
    """Shortest stem written under ``out``, seconds (0 when none): catches empty outputs."""
    return min(stem_seconds(out), default=0.0)


def cpu_summary(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, core count and the flags that decide its precision and kernels."""
    try:
        with open(cpuinfo) as f:
            lines = f.readlines()
    except OSError:
        return "unknown CPU"
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    flags = set(fields.get("flags", "").split())
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    return (
        f"{fields.get('model name', '?')} ({fields.get('vendor_id', '?')}), "
        f"{os.cpu_count()} cores, flags {' '.join(shown) or 'none of note'}"
    )


def unet_audio_rate(model: str, batch: int = 4, runs: int = 3) -> float:
    """Seconds of audio per wall second of the U-Net alone on random segments at ``batch``
    (median of ``runs`` calls after a warm-up): Spleeter's cut, no decode, STFT, masks, iSTFT or
    writing. No tool running these weights with the same arithmetic can be faster. In the
    precision ``--precision auto`` gives stembeam on this machine."""
    from stembeam.model.registry import load_model
    from stembeam.model.unet import batch_predictor

    loaded = load_model(stembeam_model(model), precision="auto")
    cfg = loaded.config
    predict = batch_predictor(loaded.model)
    x = np.random.default_rng(0).uniform(0, 1, (batch, cfg.T, cfg.F, cfg.channels))
    predict(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return batch * cfg.T * cfg.frame_step / cfg.sample_rate / statistics.median(times)


def compare(args: argparse.Namespace) -> None:
    """Every configuration once per round, ``--runs`` rounds (so load drift hits all alike);
    medians over the rounds; the U-Net-alone rate is measured in every round too."""
    prepare_spleeter(SPLEETER_MODELS["spleeter:4stems"])
    folder, audio_s = catalog(args.seconds)
    short, short_s = catalog(5)
    files = sorted(glob.glob(os.path.join(folder, "*.ogg")))
    short_files = sorted(glob.glob(os.path.join(short, "*.ogg")))
    from stembeam.model.unet import resolve_precision

    print(
        f"catalog: {len(files)} OGG files, {audio_s:.0f} s of audio; load {os.getloadavg()[0]:.2f}"
    )
    print(f"CPU: {cpu_summary()}; --precision auto gives {resolve_precision('auto')}")
    configs = [
        (model, postprocess, tool, workers)
        for model in args.models
        for postprocess in args.modes
        for tool, workers in [("spleeter", 1)] + [("stembeam", w) for w in args.workers]
    ]

    def run(config: tuple, inputs: list[str], src: str) -> tuple[float, float, float]:
        """(wall s, peak GB, shortest stem written s) of one command."""
        model, postprocess, tool, workers = config
        with tempfile.TemporaryDirectory(dir=BENCH) as out:
            if tool == "spleeter":
                wall, peak = timed(
                    spleeter_cmd(inputs, out, model, postprocess == "wiener"),
                    {"MODEL_PATH": SPLEETER_MODELS[model]},
                )
            else:
                wall, peak = timed(
                    stembeam_cmd(src, out, stembeam_model(model), postprocess, workers)
                )
            return wall, peak, shortest_stem_seconds(out)

    measured: dict[tuple, list[tuple]] = {c: [] for c in configs}
    unet_rates: dict[str, list[float]] = {m: [] for m in args.models}
    for round_ in range(1, args.runs + 1):
        for config in configs:
            startup = run(config, short_files, short)[0]
            measured[config].append((startup, *run(config, files, folder)))
            print(
                f"round {round_}: {' '.join(map(str, config))}: start-up {startup:.1f} s, "
                f"wall {measured[config][-1][1]:.1f} s; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        for model in args.models:
            unet_rates[model].append(unet_audio_rate(model))

    print(
        "tool      model            mode    workers  wall s  start-up s  RTF(with)  "
        "RTF(steady)  peak GB  shortest stem s"
    )
    rows = []
    for config, results in measured.items():
        model, postprocess, tool, workers = config
        startups, walls, peaks, shortest = zip(*results)
        startup, wall = statistics.median(startups), statistics.median(walls)
        # wall = start-up + audio / steady-RTF, and the 5 s run gives start-up + 5 s / RTF
        # (noise swamps it when start-up dominates the run: then it is not reported)
        steady = (
            (audio_s - short_s) / (wall - startup) if wall - startup > 0.2 * wall else float("nan")
        )
        row = dict(
            tool=tool,
            model=model,
            mode=postprocess,
            workers=workers,
            wall=wall,
            walls=walls,
            startup=startup,
            startups=startups,
            rtf=audio_s / wall,
            rtf_steady=steady,
            peak=max(peaks),
            shortest_stem=min(shortest),
        )
        rows.append(row)
        print(
            f"{tool:9s} {model:16s} {postprocess:7s} {workers:7d}  {wall:6.1f}  "
            f"{startup:10.1f}  {row['rtf']:9.1f}  {steady:11.1f}  {max(peaks):7.2f}  "
            f"{min(shortest):9.1f}"
        )
    for model in args.models:
        unet = statistics.median(unet_rates[model])
        for postprocess in args.modes:
            spl = next(
                r
                for r in rows
                if r["tool"] == "spleeter" and r["model"] == model and r["mode"] == postprocess
            )
            for r in rows:
                if r["tool"] == "stembeam" and r["model"] == model and r["mode"] == postprocess:
                    print(
                        f"ratio stembeam/spleeter {model} {postprocess} workers={r['workers']}: "
                        f"{r['rtf'] / spl['rtf']:.2f}x with start-up, "
                        f"{r['rtf_steady'] / spl['rtf_steady']:.2f}x steady"
                    )
            print(
                f"U-Net alone {model}: {unet:.1f}x real time (rounds: "
                f"{', '.join(f'{u:.1f}' for u in unet_rates[model])}) = "
                f"{unet / spl['rtf_steady']:.2f}x Spleeter's steady {postprocess} figure: the "
                "ceiling for any tool doing this U-Net's arithmetic here"
            )
        rows.append(dict(tool="unet-alone", model=model, rtf_steady=unet, rounds=unet_rates[model]))
    with open(os.path.join(BENCH, "compare.json"), "w") as f:
        json.dump(rows, f, indent=1)


def long_files(args: argparse.Namespace) -> None:
    """Peak RSS and output length of each tool on looped files of ``args.minutes`` minutes.

    stembeam runs with its default options (workers, masks, residual, report); its peak is the
    larger of /usr/bin/time's (the largest process) and the whole process tree's resident memory
    sampled every 0.5 s. The last row compares the longest file's stembeam peak with the
    shortest's.
    """
    prepare_spleeter(SPLEETER_MODELS["spleeter:4stems"])
    print(
        f"Spleeter stopped beyond {args.spleeter_max_gb:g} GB resident or "
        f"{args.spleeter_timeout:.0f} s"
    )
    print("file     tool              wall s  peak GB  output s  load")
    peaks: dict[float, float] = {}
    for minutes in args.minutes:
        path = long_file(minutes)
        for tool in args.tools:
            with tempfile.TemporaryDirectory(dir=BENCH) as out:
                limits, tree = {}, []
                if tool == "stembeam":
                    cmd = [sys.executable, "-m", "stembeam.pipeline", "separate"]
                    cmd += ["--input", path, "--output", out, "--model", args.model]
                    env = None
                else:
                    cmd = spleeter_cmd([path], out, args.model, False)
                    if tool == "spleeter-d600":  # Spleeter's default duration
                        cmd[cmd.index("-d") + 1] = "600"
                    env = {"MODEL_PATH": SPLEETER_MODELS[args.model]}
                    limits = dict(timeout_s=args.spleeter_timeout, max_rss_gb=args.spleeter_max_gb)
                label = f"{minutes:4.0f} min {tool:16s}"
                try:
                    wall, peak = timed(cmd, env, tree_gb=tree, **limits)
                    peak = max([peak, *tree])
                    if tool == "stembeam":
                        peaks[minutes] = peak
                    print(
                        f"{label} {wall:6.0f}  {peak:7.2f}  {output_seconds(out):8.0f}  "
                        f"{os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
                except RuntimeError as e:
                    print(
                        f"{label} {str(e).splitlines()[-1]}; load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
    if len(peaks) > 1:
        short, long = min(peaks), max(peaks)
        print(
            f"stembeam peak {long:g} min / {short:g} min: {peaks[long]:.2f} / "
            f"{peaks[short]:.2f} GB = {peaks[long] / peaks[short]:.2f}x"
        )


class StageTimer:
    """Accumulates wall seconds per stage; ``wrap`` times every call of a function."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def wrap(self, stage: str, fn):
        def timed_fn(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(stage, time.perf_counter() - t0)

        return timed_fn


def profile(args: argparse.Namespace) -> None:
    """Stage profile of the model-level path on the first song, cut to ``--seconds``."""
    from stembeam.model import evaluation
    from stembeam.model import reconstruct as sep
    from stembeam.model.registry import load_model
    from stembeam.model.unet import batch_predictor

    timer = StageTimer()
    t0 = time.perf_counter()
    loaded = load_model(stembeam_model(args.model), precision=args.precision)
    timer.add("model load (start-up)", time.perf_counter() - t0)
    cfg = loaded.config
    predict = timer.wrap("U-Net", batch_predictor(loaded.model))
    predict(np.zeros((1, cfg.T, cfg.F, cfg.channels), np.float32))  # trace outside the timings
    timer.seconds.pop("U-Net")

    song = songs()[0]
    n = int(args.seconds * RATE)
    t0 = time.perf_counter()
    mix, refs = read_song(song, n)  # decoding two OGG files
    timer.add("decode (2 OGG)", time.perf_counter() - t0)

    # Time the stages inside separate_waveform by wrapping the functions it looks up.
    originals = {
        name: getattr(sep, name)
        for name in ("segment_spectrogram", "overlap_add_last", "reconstruct_segment")
    }
    sep.segment_spectrogram = timer.wrap("STFT", originals["segment_spectrogram"])
    sep.overlap_add_last = timer.wrap("iSTFT", originals["overlap_add_last"])
    sep.reconstruct_segment = timer.wrap("masks+iSTFT", originals["reconstruct_segment"])
    try:
        t0 = time.perf_counter()
        stems = sep.separate_waveform(
            mix, predict, cfg, postprocess=args.postprocess, batch_size=args.batch_size
        )
        separate_s = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(sep, name, fn)
    timer.seconds["masks/Wiener"] = timer.seconds.pop("masks+iSTFT") - timer.seconds["iSTFT"]

    with tempfile.TemporaryDirectory(dir=BENCH) as out:
        t0 = time.perf_counter()
        for i, stem in enumerate(cfg.stems):
            sf.write(os.path.join(out, f"{stem}.wav"), stems[..., i], RATE, subtype="PCM_16")
        timer.add("write WAV", time.perf_counter() - t0)
    if len(cfg.stems) == 2:  # guitar/rest references: evaluation cost, not separation quality
        t0 = time.perf_counter()
        evaluation.evaluate(refs, np.moveaxis(stems, 2, 0))
        timer.add("evaluate (BSSEval v4)", time.perf_counter() - t0)

    timer.add(
        "other (separate_waveform)",
        separate_s - sum(timer.seconds[k] for k in ("STFT", "U-Net", "masks/Wiener", "iSTFT")),
    )
    total = sum(v for k, v in timer.seconds.items() if "start-up" not in k)
    print(
        f"{args.model} {args.postprocess} {args.precision}, {args.seconds:.0f} s of "
        f"{os.path.basename(song)}, batch {args.batch_size}; load {os.getloadavg()[0]:.2f}"
    )
    for stage, seconds in timer.seconds.items():
        share = "" if "start-up" in stage else f"{100 * seconds / total:5.1f}%"
        print(f"  {stage:28s} {seconds:7.2f} s  {share}")
    print(
        f"  total (excl. start-up)       {total:7.2f} s  -> {args.seconds / total:.1f}x real time"
    )


def pipeline_profile(args: argparse.Namespace) -> None:
    """Stage times inside a real `stembeam separate` run on ``args.seconds`` of the catalog,
    with the command's allocator (this process re-executes itself with tcmalloc, as the
    ``stembeam`` program does; ``STEMBEAM_ALLOCATOR=system`` keeps glibc's)."""
    from stembeam.pipeline.allocator import reexec_with_tcmalloc, tcmalloc_loaded

    reexec_with_tcmalloc()
    from stembeam.model import unet
    from stembeam.pipeline import separate as job
    from stembeam.transforms import decode, inference, storage, write_stems

    folder, audio_s = catalog(args.seconds)
    timer = StageTimer()
    patches = [
        (inference, "segment_spectrogram", "STFT"),
        (write_stems, "reconstruct_segment", "masks+iSTFT"),
        (write_stems._TrackWriter, "_write_model_rate", "overlap-add tail, resample, write"),
        (write_stems._TrackWriter, "publish", "publish stems"),
        (storage, "write_atomic", "marker writes"),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    batch_predictor = unet.batch_predictor
    load, get = inference.StemModelHandler._load, inference.BackgroundModel.get
    load_s = []
    decode_process = decode._DecodeSegmentsFn.process
    unet_calls = []

    def timed_batch_predictor(model):
        predict = batch_predictor(model)

        def timed_predict(magnitudes):
            t0 = time.perf_counter()
            try:
                return predict(magnitudes)
            finally:  # the warm-up call (when it runs) belongs to the model load
                if threading.current_thread().name != "stembeam-load":
                    unet_calls.append(time.perf_counter() - t0)

        return timed_predict

    def timed_decode(self, track):
        generator = decode_process(self, track)
        while True:  # time spent inside the generator only, not downstream of its yields
            t0 = time.perf_counter()
            try:
                item = next(generator)
            except StopIteration:
                timer.add("decode", time.perf_counter() - t0)
                return
            timer.add("decode", time.perf_counter() - t0)
            yield item

    for module, name, stage in patches:
        setattr(module, name, timer.wrap(stage, getattr(module, name)))
    unet.batch_predictor = timed_batch_predictor  # the handler imports it when loading
    inference.BackgroundModel.get = timer.wrap("waiting for the model load", get)

    def timed_load(self, *args):  # on its own thread, beside decoding: not one of the stages
        t0 = time.perf_counter()
        try:
            return load(self, *args)
        finally:
            load_s.append(time.perf_counter() - t0)

    inference.StemModelHandler._load = timed_load
    decode._DecodeSegmentsFn.process = timed_decode
    try:
        with tempfile.TemporaryDirectory(dir=BENCH) as out:
            t0 = time.perf_counter()
            job.run(
                [
                    "--input",
                    folder,
                    "--output",
                    out,
                    "--model",
                    stembeam_model(args.model),
                    "--force",
                    "--direct_num_workers",
                    "1",
                ]
            )
            wall = time.perf_counter() - t0
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
        unet.batch_predictor = batch_predictor
        inference.StemModelHandler._load, inference.BackgroundModel.get = load, get
        decode._DecodeSegmentsFn.process = decode_process
    timer.add("U-Net", sum(unet_calls))
    timer.add("other (runner, catalog, results, report)", wall - sum(timer.seconds.values()))
    print(
        f"stembeam separate, {args.model}, {audio_s:.0f} s of audio, 1 worker, "
        f"{'tcmalloc' if tcmalloc_loaded() else 'glibc malloc'}; "
        f"load {os.getloadavg()[0]:.2f}; wall {wall:.1f} s = {audio_s / wall:.1f}x real time"
    )
    for stage, seconds in timer.seconds.items():
        print(f"  {stage:52s} {seconds:7.2f} s  {100 * seconds / wall:5.1f}%")
    print(f"  (model load + warm-up on its thread, overlapping the stages: {sum(load_s):.2f} s)")


def short_catalog(seconds: float, track_s: float) -> tuple[str, int]:
    """The ``catalog(seconds)`` audio cut into tracks of ``track_s`` s (OGG): (folder, tracks)."""
    long_folder, _ = catalog(seconds)
    folder = os.path.join(BENCH, f"catalog-{int(seconds)}s-cut-{track_s:g}s")
    if not os.path.isdir(folder):
        tmp = tempfile.mkdtemp(dir=BENCH)
        piece = int(track_s * RATE)
        for path in sorted(glob.glob(os.path.join(long_folder, "*.ogg"))):
            mix, _ = sf.read(path, dtype="float32")
            name = os.path.splitext(os.path.basename(path))[0]
            for k, start in enumerate(range(0, len(mix), piece)):
                sf.write(
                    os.path.join(tmp, f"{name}-{k:04d}.ogg"),
                    mix[start : start + piece],
                    RATE,
                    format="OGG",
                    subtype="VORBIS",
                )
        os.rename(tmp, folder)
    return folder, len(glob.glob(os.path.join(folder, "*.ogg")))


def short_tracks(args: argparse.Namespace) -> None:
    """Per-track overhead: the same audio as few long tracks and as many short ones, each run
    in this process (1 worker, model load included in both), interleaved over ``--runs``."""
    from stembeam.pipeline import separate as job

    long_folder, audio_s = catalog(args.seconds)
    n_long = len(glob.glob(os.path.join(long_folder, "*.ogg")))
    short_folder, n_short = short_catalog(args.seconds, args.track_seconds)
    walls: dict[str, list[float]] = {"long": [], "short": []}
    for _ in range(args.runs):
        for kind, folder in (("long", long_folder), ("short", short_folder)):
            with tempfile.TemporaryDirectory(dir=BENCH) as out:
                t0 = time.perf_counter()
                job.run(
                    [
                        "--input",
                        folder,
                        "--output",
                        out,
                        "--model",
                        stembeam_model(args.model),
                        "--force",
                        "--direct_num_workers",
                        "1",
                    ]
                )
                walls[kind].append(time.perf_counter() - t0)
    long_s, short_s = (statistics.median(walls[k]) for k in ("long", "short"))
    print(
        f"{args.model}, {audio_s:.0f} s of audio, 1 worker, medians of {args.runs}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(f"  {n_long:4d} tracks: {long_s:6.1f} s  {walls['long']}")
    print(f"  {n_short:4d} tracks of {args.track_seconds:g} s: {short_s:6.1f} s  {walls['short']}")
    print(f"  per extra track: {(short_s - long_s) / (n_short - n_long) * 1e3:.0f} ms")


STARTUP_LINE = re.compile(
    r"start-up: imports ([\d.]+) s(?:, model load ([\d.]+) s, first batch at ([\d.]+) s)?"
)


def startup(args: argparse.Namespace) -> None:
    """Start-up of Spleeter and stembeam (and ``--baseline``), every tool on both files in every
    round (see the module docstring); medians over ``--runs`` rounds, ratios to Spleeter."""
    prepare_spleeter(SPLEETER_MODELS["spleeter:4stems"])
    from bench.versions import namespace_shim  # stembeam.* from each checkout, not the installed

    files = {}
    for seconds in (5, args.long_seconds):
        folder, audio_s = catalog(seconds)
        files[audio_s] = (folder, sorted(glob.glob(os.path.join(folder, "*.ogg"))))
    (short_s, long_s) = sorted(files)
    tools = {
        "spleeter": None,
        "stembeam": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    }
    if args.baseline:
        tools["stembeam baseline"] = args.baseline
    walls: dict[tuple[str, float], list[float]] = {(t, d): [] for t in tools for d in files}
    lines: dict[str, list[tuple[float, ...]]] = {t: [] for t in tools if tools[t]}
    print(f"5 s file: {files[short_s][1]}; long file: {long_s:.1f} s; load {_load_average()}")
    for round_ in range(1, args.runs + 1):
        for tool, tree in tools.items():
            for audio_s, (folder, paths) in files.items():
                with tempfile.TemporaryDirectory(dir=BENCH) as out:
                    if tree is None:
                        cmd = spleeter_cmd(paths, out, "spleeter:2stems", False)
                        env = {"MODEL_PATH": SPLEETER_MODELS["spleeter:2stems"]}
                    else:
                        cmd = [sys.executable, "-m", "stembeam.pipeline", "separate", folder]
                        cmd += ["--output", out, "--results", f"sqlite:///{out}/results.db"]
                        env = {"PYTHONPATH": namespace_shim(tree)}
                    t0 = time.perf_counter()
                    proc = subprocess.run(
                        cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True
                    )
                    walls[tool, audio_s].append(time.perf_counter() - t0)
                    if shortest_stem_seconds(out) < audio_s - 0.1:
                        raise RuntimeError(f"{tool} wrote short stems: {proc.stderr[-2000:]}")
                match = STARTUP_LINE.search(proc.stderr)
                if audio_s == short_s and match:
                    lines[tool].append(tuple(float(v) for v in match.groups() if v is not None))
            print(
                f"round {round_}: {tool}: {short_s:.0f} s file {walls[tool, short_s][-1]:.2f} s, "
                f"{long_s:.0f} s file {walls[tool, long_s][-1]:.2f} s"
                + (f", start-up line {lines[tool][-1]}" if lines.get(tool) else "")
                + f"; load {_load_average()}",
                flush=True,
            )
    rows = {}
    for tool in tools:
        short, long = (statistics.median(walls[tool, d]) for d in (short_s, long_s))
        per_s = (long - short) / (long_s - short_s)
        row = dict(wall_5s=short, wall_long=long, per_audio_s=per_s, fixed=short - short_s * per_s)
        if lines.get(tool) and all(len(v) == 3 for v in lines[tool]):
            for i, key in enumerate(("imports", "model_load", "first_batch")):
                row[key] = statistics.median(v[i] for v in lines[tool])
        rows[tool] = row
        print(
            f"{tool:18s} 5 s file {short:6.2f} s  {long_s:.0f} s file {long:6.2f} s  "
            f"fixed cost {row['fixed']:6.2f} s"
            + (
                f"  imports {row['imports']:.2f} s, model load {row['model_load']:.2f} s, "
                f"first batch at {row['first_batch']:.2f} s"
                if "first_batch" in row
                else ""
            )
        )
    spleeter = rows["spleeter"]
    for tool, row in rows.items():
        if tool != "spleeter":
            print(
                f"{tool} / spleeter: 5 s file {row['wall_5s'] / spleeter['wall_5s']:.2f}x, "
                f"fixed cost {row['fixed'] / spleeter['fixed']:.2f}x"
                + (
                    f", first batch / Spleeter's fixed cost "
                    f"{row['first_batch'] / spleeter['fixed']:.2f}x (target <= 0.5)"
                    if "first_batch" in row
                    else ""
                )
            )
    with open(os.path.join(BENCH, "startup.json"), "w") as f:
        json.dump({"rows": rows, "walls": {f"{t} {d}": w for (t, d), w in walls.items()}}, f)


def _load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--model", default="spleeter:2stems")
    p.add_argument("--postprocess", default="ratio", choices=("ratio", "wiener"))
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch-size", type=int, default=4)
    pp = sub.add_parser("pipeline-profile")
    pp.add_argument("--seconds", type=float, default=180)
    pp.add_argument("--model", default="spleeter:2stems")
    st = sub.add_parser("short-tracks")
    st.add_argument("--seconds", type=float, default=180)
    st.add_argument("--track-seconds", type=float, default=3)
    st.add_argument("--runs", type=int, default=3)
    st.add_argument("--model", default="spleeter:2stems")
    c = sub.add_parser("compare")
    c.add_argument("--seconds", type=float, default=600)
    c.add_argument("--runs", type=int, default=3)
    c.add_argument("--models", nargs="+", default=["spleeter:2stems", "spleeter:4stems"])
    c.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    c.add_argument(
        "--modes",
        nargs="+",
        default=["ratio", "wiener"],
        choices=("ratio", "wiener"),
        help="stembeam --postprocess; Spleeter's default / --mwf respectively",
    )
    su = sub.add_parser("startup")
    su.add_argument("--runs", type=int, default=5)
    su.add_argument("--long-seconds", type=float, default=30)
    su.add_argument("--baseline", default=None, help="another stembeam checkout's root")
    g = sub.add_parser("long")
    g.add_argument("--minutes", type=float, nargs="+", default=[20, 120])
    g.add_argument("--model", default="spleeter:2stems")
    g.add_argument(
        "--tools",
        nargs="+",
        default=["stembeam", "spleeter", "spleeter-d600"],
        choices=("stembeam", "spleeter", "spleeter-d600"),
        help="spleeter: -d 20000 (whole file); spleeter-d600: its default 600 s",
    )
    g.add_argument("--spleeter-timeout", type=float, default=900, help="seconds")
    g.add_argument("--spleeter-max-gb", type=float, default=18, help="resident GB")
    args = parser.parse_args()
    os.makedirs(BENCH, exist_ok=True)
    {
        "profile": profile,
        "pipeline-profile": pipeline_profile,
        "compare": compare,
        "long": long_files,
        "short-tracks": short_tracks,
        "startup": startup,
    }[args.command](args)


if __name__ == "__main__":
    main()
