"""``stembeam report``: its options and entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stembeam.pipeline.report.write import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``stembeam report``."""
    parser.add_argument(
        "--results",
        required=True,
        help="SQLAlchemy URL of the results table (sqlite:///OUT/results.sqlite, "
        "postgresql://user@host/db)",
    )
    parser.add_argument(
        "--run", dest="run_id", default=None, help="run id (default: the latest run)"
    )
    parser.add_argument(
        "--output",
        default="report.html",
        help="main page path, local or gs:// (default %(default)s)",
    )
    parser.add_argument(
        "--page-size", type=int, default=50, help="track cards per page (default %(default)s)"
    )
    parser.add_argument(
        "--media-pages",
        type=int,
        default=4,
        help="pages that get spectrograms and excerpts (default %(default)s)",
    )
    parser.add_argument(
        "--excerpt-seconds",
        type=float,
        default=20.0,
        help="excerpt length, seconds (default %(default)s)",
    )
    parser.add_argument(
        "--no-local-links",
        action="store_true",
        help="use excerpts next to the report instead of linking local stem files",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``stembeam report ...``: 0 when written, 2 (one line on stderr) when the options, the
    database or the run are wrong."""
    parser = argparse.ArgumentParser(
        prog="stembeam report", description="Write a run's self-contained HTML report."
    )
    add_arguments(parser)
    return run_main(parser.parse_args(argv))


def run_main(args: argparse.Namespace) -> int:
    """Writes the report ``args`` (from add_arguments) describe."""
    import sqlalchemy as sa

    try:
        path = write_report(
            args.results,
            args.output,
            args.run_id,
            page_size=args.page_size,
            media_pages=args.media_pages,
            excerpt_s=args.excerpt_seconds,
            link_local_audio=not args.no_local_links,
        )
    except (LookupError, ValueError, OSError) as exc:
        print(f"stembeam report: {exc}", file=sys.stderr)
        return 2
    except sa.exc.SQLAlchemyError as exc:  # unreachable server, refused login, not our tables
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"stembeam report: cannot read {args.results}: {reason}", file=sys.stderr)
        return 2
    print(path)
    return 0
