"""The ``stembeam`` command line: ``separate``, ``demo``, ``report``, ``train``, ``make-dataset``.

``python -m stembeam.pipeline ...`` is the same command. Exit statuses (see EXIT_*): 0 every
track ok or
skipped; 3 some tracks failed (the others are written); 2 the command cannot start (unparseable
arguments, unknown option or command, missing or empty catalog, unreadable results database);
1 the run itself broke (a traceback follows).

Beam and TensorFlow take seconds to import, so this module imports them only inside commands,
after the first line is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import NoReturn

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_TRACKS_FAILED = 0, 1, 2, 3
VERBOSE, QUIET = ("-v", "--verbose"), ("-q", "--quiet")
# Imported only to offer notebook widgets, by Beam (tqdm.notebook through google-cloud-bigquery)
# and Keras, which both do without them: the program never imports these (0.3-0.4 s a run).
UNUSED_MODULES = ("IPython",)
# Commands that separate or render audio: the program runs them with tcmalloc (pipeline.allocator).
AUDIO_COMMANDS = ("separate", "demo", "train", "make-dataset")

log = logging.getLogger("stembeam")


def version() -> str:
    """The installed package's version, else the one in setup.py next to this package."""
    from importlib import metadata

    try:
        return metadata.version("stembeam")
    except metadata.PackageNotFoundError:
        setup = os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py"
        )
        with open(setup, encoding="utf-8") as f:
            match = re.search(r"""version=["']([^"']+)""", f.read())
        return match.group(1) if match else "unknown"


def _verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        *VERBOSE, action="store_true", help="also show Beam, TensorFlow and gRPC logging"
    )
    group.add_argument(
        *QUIET, action="store_true", help="only warnings, errors and the final summary"
    )


def _take_verbosity(argv: list[str]) -> tuple[int, list[str]]:
    """(-1 for -q, 1 for -v, else 0; ``argv`` without those flags), wherever they stand."""
    verbose, quiet = (any(a in flags for a in argv) for flags in (VERBOSE, QUIET))
    if verbose and quiet:
        raise SystemExit(_usage_error("-v and -q exclude each other"))
    return (1 if verbose else -1 if quiet else 0), [a for a in argv if a not in VERBOSE + QUIET]


def _usage_error(message: str, prog: str = "stembeam") -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_USAGE


def separate_parser() -> argparse.ArgumentParser:
    """``stembeam separate``'s help: its own options; Beam's are accepted too."""
    from stembeam.pipeline.options import SeparateOptions

    parser = argparse.ArgumentParser(
        prog="stembeam separate",
        usage="stembeam separate [INPUT ...] [--input SRC ...] --output OUT [options]",
        description="Separate a music catalog into stems and record one results row per track. "
        "Any Beam pipeline option is accepted too (default runner: the local "
        "FnApiRunner on all cores); other options are refused.",
        epilog="exit status: 0 every track ok or skipped, 3 some tracks failed (the others are "
        "written), 2 bad arguments or an empty or missing catalog, 1 the run broke.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="audio files, globs, manifests or folders (same as --input)",
    )
    SeparateOptions._add_argparse_args(parser)
    _verbosity_arguments(parser)
    return parser


def separate(argv: list[str], verbosity: int = 0) -> int:
    """Lists the catalog here (total for progress, empty catalog = exit 2), then runs the
    pipeline while a RunProgress thread follows the results table."""
    if "-h" in argv or "--help" in argv:
        separate_parser().print_help()
        return EXIT_OK
    from stembeam.pipeline.allocator import tcmalloc_loaded
    from stembeam.pipeline.console import (
        RunProgress,
        filter_native_stderr,
        process_started,
        setup_logging,
        startup_line,
    )

    started = time.time()
    process_start = process_started()
    handler = setup_logging(verbosity)
    log.info("stembeam %s: reading options and the catalog", version())
    log.debug("memory allocator: %s", "tcmalloc" if tcmalloc_loaded() else "the C library's")
    importing = time.perf_counter()
    from stembeam.pipeline.options import parse_options, results_url, sources
    from stembeam.transforms.catalog import check_source, list_catalog

    imports_s = started - process_start + time.perf_counter() - importing

    try:
        options = parse_options(argv)
        check_source(sources(options))
        total = len(list_catalog(sources(options)))
    except ValueError as e:
        return _usage_error(str(e), "stembeam separate")
    if total == 0:
        return _usage_error(
            f"the catalog {', '.join(sources(options))} is empty (no file matches)",
            "stembeam separate",
        )
    log.info("catalog: %d tracks; loading Beam and TensorFlow", total)
    importing = time.perf_counter()
    from stembeam.pipeline.separate import new_run_id, run
    from stembeam.pipeline.validate import redact_url
    from stembeam.transforms.decode import limit_heap_fragmentation
    from stembeam.transforms.output_state import RunConflict
    from stembeam.transforms.results import BIGQUERY_PREFIX

    imports_s += time.perf_counter() - importing

    run_id = options.run_id or new_run_id()
    results = results_url(options)
    progress = None
    if not results.startswith(BIGQUERY_PREFIX):
        if verbosity <= 0:  # the poller prints the track lines
            logging.getLogger("stembeam.tracks").setLevel(logging.ERROR)
        progress = RunProgress(
            results,
            run_id,
            total,
            started,
            handler,
            live=verbosity >= 0 and handler.stream.isatty(),
        ).start()
    limit_heap_fragmentation()
    quiet = filter_native_stderr(handler) if verbosity <= 0 else contextlib.nullcontext()
    try:
        with quiet:
            out = run(
                argv + [f"--run_id={run_id}"],
                on_finished=progress.stop if progress is not None else None,
                catalog_tracks=total,
            )
    except (ValueError, RunConflict) as e:  # bad options or inputs, another run on OUT
        return _usage_error(str(e), "stembeam separate")
    finally:
        if progress is not None:
            progress.stop()
    first_batch = out["summary"]["first_batch_unix_ms"]
    model_load = out["summary"]["model_load_ms"]
    log.info(
        "%s",
        startup_line(
            imports_s,
            model_load / 1e3 if model_load is not None else None,
            first_batch / 1e3 - process_start if first_batch is not None else None,
        ),
    )
    summary = logging.getLogger("stembeam.summary")
    summary.info(
        "results: %s%s",
        redact_url(out["results"]),
        f"; report: {out['report']}" if out.get("report") else "",
    )
    if out["summary"]["tracks_failed"]:
        summary.warning(
            "%d of %d tracks failed (exit status %d)",
            out["summary"]["tracks_failed"],
            total,
            EXIT_TRACKS_FAILED,
        )
        return EXIT_TRACKS_FAILED
    return EXIT_OK


def demo(argv: list[str], verbosity: int = 0) -> int:
    """Builds the demo catalog (pipeline.demo) and runs ``separate`` on it."""
    parser = argparse.ArgumentParser(
        prog="stembeam demo",
        description="Separate the embedded demo catalog with the pretrained Spleeter 2stems "
        "model. Other arguments go to `stembeam separate`.",
    )
    parser.add_argument(
        "--output", default="stembeam-demo", help="output folder (default %(default)s)"
    )
    parser.add_argument(
        "--catalog",
        default=None,
        help="where the demo catalog is written (default ~/.cache/stembeam/demo-catalog)",
    )
    _verbosity_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    from stembeam.pipeline.console import filter_native_stderr, setup_logging

    handler = setup_logging(verbosity)
    log.info("preparing the demo catalog")
    from stembeam.pipeline.demo import build_demo_catalog, default_catalog_dir

    with filter_native_stderr(handler) if verbosity <= 0 else contextlib.nullcontext():
        manifest = build_demo_catalog(args.catalog or default_catalog_dir())
    log.info("demo catalog: %s", manifest)
    code = separate(["--input", manifest, "--output", args.output] + rest, verbosity)
    if code in (EXIT_OK, EXIT_TRACKS_FAILED):
        output = os.path.abspath(args.output)
        print(
            f"stems:   {output}/<track_id>/<stem>.wav\n"
            f"results: sqlite:///{output}/results.sqlite (tables results, runs)\n"
            f"reports: {output}/report.html (one per run)"
        )
    return code


def report(argv: list[str], verbosity: int = 0) -> int:
    from stembeam.pipeline.report import add_arguments, run_main

    parser = argparse.ArgumentParser(
        prog="stembeam report",
        description="Write a run's self-contained HTML report.",
        epilog="exit status: 0 written, 2 bad options, database or run (one line on stderr)",
    )
    add_arguments(parser)
    _verbosity_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if verbosity < 0 else logging.INFO, format="%(levelname)s %(message)s"
    )
    return run_main(args)


def train(argv: list[str], verbosity: int = 0) -> int:
    from stembeam.pipeline.train_cli import train_main

    return train_main(argv)


def make_dataset(argv: list[str], verbosity: int = 0) -> int:
    from stembeam.pipeline.train_cli import make_dataset_main

    return make_dataset_main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str], int], int], str]] = {
    "separate": (separate, "separate a catalog into stems, one results row per track"),
    "demo": (demo, "separate the embedded demo catalog into ./stembeam-demo"),
    "report": (report, "write the HTML report of a run"),
    "train": (train, "train or fine-tune a U-Net on MUSDB18-HQ style folders"),
    "make-dataset": (make_dataset, "render a MUSDB18-HQ style dataset from MIDI songs"),
    "help": (None, "show this help, or a command's: stembeam help COMMAND"),  # type: ignore
}


def top_parser() -> argparse.ArgumentParser:
    """``stembeam [--version] [-v|-q] COMMAND ...``: one subparser per command (for help)."""
    parser = argparse.ArgumentParser(
        prog="stembeam",
        description="Separate music catalogs into stems with Apache Beam.",
        epilog="stembeam COMMAND --help shows the command's options. Exit status: 0 ok, "
        "3 some tracks failed, 2 bad arguments or input, 1 the run broke.",
    )
    parser.add_argument("--version", action="version", version=f"stembeam {version()}")
    _verbosity_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command in ``argv``; returns its exit status. Without ``argv`` this is the
    ``stembeam`` program itself (``sys.argv``): it runs ``AUDIO_COMMANDS`` with tcmalloc (it
    re-executes itself once to preload it), holds off the garbage collector while ``separate``
    and ``demo`` start (``transforms.collector``), never imports ``UNUSED_MODULES``, and once the
    command returned and the output is flushed, the process ends at once (``exit_now``)."""
    if argv is not None:
        return command_status(list(argv))
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if command in AUDIO_COMMANDS:
        from stembeam.pipeline.allocator import reexec_with_tcmalloc

        reexec_with_tcmalloc()
    if command in ("separate", "demo"):
        from stembeam.transforms import collector

        collector.pause()  # until the first batch (transforms.collector)
    for name in UNUSED_MODULES:
        sys.modules.setdefault(name, None)  # None: `import` raises ImportError
    exit_now(command_status(sys.argv[1:]))


def exit_now(code: int) -> NoReturn:
    """Flushes logging, stdout and stderr and ends the process with ``code``, skipping the
    interpreter's shutdown: after a run, TensorFlow's and Beam's teardown took 1.5-3 s while
    nothing is left to do (results are committed, files closed, no thread works for the run)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed pipe or stream
            stream.flush()
    os._exit(code)


def command_status(argv: list[str]) -> int:
    """The command in ``argv`` (without the program name); returns its exit status."""
    verbosity, argv = _take_verbosity(argv)
    if not argv or argv[0] in ("-h", "--help"):
        top_parser().print_help(sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] == "--version":
        print(f"stembeam {version()}")
        return EXIT_OK
    command, rest = argv[0], argv[1:]
    if command == "help":
        if rest and rest[0] in COMMANDS and rest[0] != "help":
            return command_status([rest[0], "--help"])
        top_parser().print_help()
        return EXIT_OK if not rest else _usage_error(f"unknown command {rest[0]!r}")
    if command not in COMMANDS:
        if command.startswith("-"):
            return _usage_error(f"unknown option {command} (options go after the command)")
        return _usage_error(
            f"unknown command {command!r} (commands: "
            f"{', '.join(c for c in COMMANDS if c != 'help')})"
        )
    return COMMANDS[command][0](rest, verbosity)
