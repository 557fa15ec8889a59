"""The run report: an offline HTML page (plus page files) per run, read from the results table.

``stembeam report --results URL [--run RUN_ID] --output report.html`` writes:

- ``report.html``: the run summary, the failed tracks with their reasons, SDR/SIR/SAR box plots
  over tracks with published medians as reference lines, a sortable per-track table, and the
  first page of per-track cards (spectrograms of the mixture and each stem, audio players);
- ``report-p2.html``, ``report-p3.html``...: the remaining track cards, ``page_size`` tracks a
  page;
- ``report_media/``: short OGG/Vorbis excerpts, only for audio the page cannot link to (remote
  files, or formats browsers do not play).

Spectrograms and excerpts are made for the first ``media_pages`` pages only (the cost is a decode
and an STFT of ``excerpt_s`` seconds per file); later pages still link local audio files. Pages
use no external CSS/JS/fonts, so they work offline; every value from the table is HTML-escaped.

Modules: ``data`` (SQL reads, aggregation), ``media`` (excerpts, spectrograms, player links),
``plots`` (the metrics figure), ``pages`` (Jinja2 templates under ``templates/``), ``write``
(files, local or remote), ``command`` (the CLI).
"""

from stembeam.pipeline.report.command import add_arguments, main, run_main
from stembeam.pipeline.report.write import (
    REPORTS_DIR,
    run_report_name,
    write_index,
    write_report,
    write_run_reports,
)

__all__ = [
    "REPORTS_DIR",
    "add_arguments",
    "main",
    "run_main",
    "run_report_name",
    "write_index",
    "write_report",
    "write_run_reports",
]
