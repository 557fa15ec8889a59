"""The ``stembeam`` command line: ``stembeam separate ...`` and ``stembeam report ...``.

``python -m pipeline ...`` is the same command.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from pipeline.options import SeparateOptions

USAGE = """stembeam COMMAND [options]

commands:
  separate   separate a catalog into stems and record one results row per track
             (stembeam separate --input SRC --output OUT [--model spleeter:2stems] [...];
             any Beam pipeline option is accepted, e.g. --runner DataflowRunner)
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

    try:
        out = run(argv)
    except ValueError as e:
        print(f"stembeam separate: {e}", file=sys.stderr)
        return 2
    summary = out["summary"]
    print(f"run {out['run_id']}: {summary['tracks_ok']} ok, {summary['tracks_skipped']} skipped, "
          f"{summary['tracks_failed']} failed; results in {out['results']}")
    return 0


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


COMMANDS = {"separate": separate, "report": report}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return COMMANDS[argv[0]](argv[1:])
