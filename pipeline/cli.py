"""The ``stembeam`` command line: ``separate``, ``demo``, ``report``, ``train``, ``make-dataset``.

``python -m pipeline ...`` is the same command.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from pipeline.options import SeparateOptions

USAGE = """stembeam COMMAND [options]

commands:
  separate   separate a catalog into stems and record one results row per track
             (stembeam separate --input SRC --output OUT [--model spleeter:2stems] [...];
             any Beam pipeline option is accepted, e.g. --runner DataflowRunner)
  demo       separate the embedded demo catalog (real music, real 2stems weights) into
             ./stembeam-demo (stembeam demo [--output DIR] [separate options...])
  train      train or fine-tune a U-Net on MUSDB18-HQ style folders
             (stembeam train --data DIR --config 4stems --output MODEL_DIR [...])
  make-dataset  render a MUSDB18-HQ style multitrack dataset from MIDI songs
             (stembeam make-dataset --output DIR --tracks N --seed S)
  report     write the HTML report of a run
             (stembeam report --results URL [--run RUN_ID] --output report.html)

stembeam COMMAND --help shows the command's options."""


def _separate_help() -> str:
    parser = argparse.ArgumentParser(
        prog="stembeam separate",
        description="Separate a music catalog into stems. Any Beam pipeline option is accepted "
                    "too (default runner: the local FnApiRunner on all cores).")
    SeparateOptions._add_argparse_args(parser)
    return parser.format_help()


def separate(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(_separate_help())
        return 0
    from pipeline.separate import run
    from pipeline.validate import redact_url
    from transforms.decode import limit_heap_fragmentation

    limit_heap_fragmentation()
    try:
        out = run(argv)
    except ValueError as e:
        print(f"stembeam separate: {e}", file=sys.stderr)
        return 2
    summary = out["summary"]
    print(f"run {out['run_id']}: {summary['tracks_ok']} ok, {summary['tracks_skipped']} skipped, "
          f"{summary['tracks_failed']} failed; results in {redact_url(out['results'])}")
    return 0


def demo(argv: list[str]) -> int:
    """Builds the demo catalog (pipeline.demo) and runs ``separate`` on it."""
    parser = argparse.ArgumentParser(
        prog="stembeam demo",
        description="Separate the embedded demo catalog with the pretrained Spleeter 2stems "
                    "model. Other arguments go to `stembeam separate`.")
    parser.add_argument("--output", default="stembeam-demo", help="output folder (default %(default)s)")
    parser.add_argument("--catalog", default=None,
                        help="where the demo catalog is written (default ~/.cache/stembeam/demo-catalog)")
    args, rest = parser.parse_known_args(argv)
    from pipeline.demo import build_demo_catalog, default_catalog_dir

    manifest = build_demo_catalog(args.catalog or default_catalog_dir())
    print(f"demo catalog: {manifest}")
    code = separate(["--input", manifest, "--output", args.output] + rest)
    if code == 0:
        output = os.path.abspath(args.output)
        print(f"stems:   {output}/<track_id>/<stem>.wav\n"
              f"results: sqlite:///{output}/results.sqlite (tables results, runs)\n"
              f"report:  {output}/report.html")
    return code


def report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stembeam report",
                                     description="Write a run's self-contained HTML report.")
    parser.add_argument("--results", required=True, help="results table URL (as for separate)")
    parser.add_argument("--run", default=None, help="run id (default: the latest run)")
    parser.add_argument("--output", default="report.html", help="HTML file to write")
    args = parser.parse_args(argv)
    from pipeline.report import write_report

    write_report(args.results, args.output, run_id=args.run)
    print(f"report written to {args.output}")
    return 0


def train(argv: list[str]) -> int:
    from pipeline.train_cli import train_main

    return train_main(argv)


def make_dataset(argv: list[str]) -> int:
    from pipeline.train_cli import make_dataset_main

    return make_dataset_main(argv)


COMMANDS = {"separate": separate, "demo": demo, "report": report, "train": train,
            "make-dataset": make_dataset}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return COMMANDS[argv[0]](argv[1:])
