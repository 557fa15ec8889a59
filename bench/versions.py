"""Throughput of `stembeam separate` at two git revisions, side by side in one run.

Each revision is checked out into its own worktree under ~/.cache/stembeam/bench/versions/ and
run from there (its own code, the same installed packages, the same real 2stems weights and the
same catalog of real music: bench.e2e.catalog). Rounds interleave the revisions; medians are
printed with the ratio. ``--new-options`` takes one configuration of the new revision per value.

    python3 -m bench.versions --old 7bedfe9 --new HEAD [--seconds 600] [--runs 3]
        [--workers 1] [--new-options="--residual none"]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

from bench.e2e import BENCH, catalog, timed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkout(revision: str) -> str:
    """A worktree of ``revision`` (reused when it exists); returns its folder."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    folder = os.path.join(BENCH, "versions", sha)
    if not os.path.isdir(folder):
        subprocess.run(
            ["git", "worktree", "add", "--detach", folder, sha],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return folder


def namespace_shim(tree: str) -> str | None:
    """For a revision that installs as ``stembeam.*``: a folder whose ``stembeam/`` links to the
    tree's packages (put first on PYTHONPATH, it wins over the installed copy); None for the
    older layout (top-level ``pipeline``, run from the tree itself)."""
    with open(os.path.join(tree, "setup.py")) as f:
        if "stembeam.pipeline" not in f.read():
            return None
    shim = os.path.join(tree, ".bench-shim")
    os.makedirs(os.path.join(shim, "stembeam"), exist_ok=True)
    for name in ("model", "pipeline", "transforms"):
        link = os.path.join(shim, "stembeam", name)
        if not os.path.islink(link):
            os.symlink(os.path.join(tree, name), link)
    return shim


def command(tree: str, source: str, out: str, workers: int, extra: str) -> list[str]:
    """``stembeam separate`` run from ``tree`` (exec keeps /usr/bin/time on the Python process)."""
    args = [
        "--input",
        source,
        "--output",
        out,
        "--model",
        "spleeter:2stems",
        "--force",
        "--direct_num_workers",
        str(workers),
        "--report",
        "none",
        "--results",
        f"sqlite:///{out}/results.db",
        *shlex.split(extra),
    ]
    shim = namespace_shim(tree)
    module, path = ("stembeam.pipeline", f"{shim}:{tree}") if shim else ("pipeline", tree)
    script = (
        f"cd {shlex.quote(tree)} && PYTHONPATH={shlex.quote(path)} exec "
        f"{shlex.quote(sys.executable)} -m {module} separate "
        f"{' '.join(shlex.quote(a) for a in args)}"
    )
    return ["bash", "-c", script]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="7bedfe9")
    parser.add_argument("--new", default="HEAD")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--old-options", default="")
    parser.add_argument(
        "--new-options",
        nargs="*",
        default=[""],
        help="one configuration of the new revision per value",
    )
    args = parser.parse_args()
    source, audio_s = catalog(args.seconds)
    configs = [(f"old {args.old} {args.old_options}".strip(), checkout(args.old), args.old_options)]
    configs += [
        (f"new {args.new} {extra}".strip(), checkout(args.new), extra) for extra in args.new_options
    ]
    walls: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for round_ in range(args.runs):
        for name, tree, extra in configs:
            with tempfile.TemporaryDirectory(dir=BENCH) as out:
                wall, rss = timed(
                    command(tree, os.path.join(source, "*.ogg"), out, args.workers, extra),
                    cpu_s=cpus[name],
                )
            walls[name].append(wall)
            print(
                f"round {round_ + 1} {name:40s} {wall:6.2f} s  {audio_s / wall:5.1f}x real time"
                f"  CPU {cpus[name][-1]:6.2f} s  peak {rss:.2f} GB  load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    base = statistics.median(walls[configs[0][0]])
    print(
        f"\n{audio_s:.0f} s of real music, spleeter:2stems, {args.workers} worker(s), "
        f"medians of {args.runs} interleaved rounds (wall time including start-up; CPU = user "
        "+ system seconds of the whole command):"
    )
    for name, _, _ in configs:
        median = statistics.median(walls[name])
        print(
            f"  {name:40s} {median:6.2f} s  {audio_s / median:5.1f}x real time  "
            f"{base / median:4.2f}x the old throughput  CPU {statistics.median(cpus[name]):6.2f} s"
        )


if __name__ == "__main__":
    main()
