"""What ``stembeam`` prints: logging set-up (library noise hidden) and live run progress.

Nothing here imports Beam or TensorFlow, so the command can print before those load. Progress
comes from the results table: a background thread of the launcher polls this run's rows while
the pipeline runs, prints one line per finished track and a progress line (tracks done / total,
audio done, speed in x real time, ETA): a live bar on a terminal, a plain line at most every
``log_every`` seconds otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

NOISY_LOGGERS = {
    "apache_beam": logging.ERROR,
    "absl": logging.ERROR,
    "tensorflow": logging.ERROR,
    "grpc": logging.ERROR,
    "h5py": logging.WARNING,
    "keras": logging.WARNING,
    "matplotlib": logging.WARNING,
    "urllib3": logging.WARNING,
    "google": logging.WARNING,
    "sqlalchemy": logging.WARNING,
}
SUMMARY_LOGGER = "stembeam.summary"  # shown even with -q
TRACKS_LOGGER = "stembeam.tracks"  # per-track lines logged inside the pipeline

LAUNCHER_THREADS = ("MainThread", "stembeam-progress")
# TensorFlow/absl lines written straight to file descriptor 2 by C++ (TF 2.21 prints these
# before absl is initialised, whatever TF_CPP_MIN_LOG_LEVEL says): INFO/WARNING glog lines,
# absl's preamble, and the continuation line of the CPU-instructions notice.
NATIVE_NOISE = re.compile(
    rb"([IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] |"
    rb"WARNING: All log messages before absl::InitializeLog|"
    rb"To enable the following instructions: )"
)

log = logging.getLogger("stembeam.progress")
_IMPORTED = time.time()


def process_started() -> float:
    """Unix time this process started: from /proc/self/stat (clock ticks, 10 ms) on Linux, else
    when this module was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return _IMPORTED
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def startup_line(imports_s: float, model_load_s: float | None, first_batch_s: float | None) -> str:
    """``start-up: imports 2.1 s, model load 4.9 s, first batch at 8.0 s``: seconds the launcher's
    imports took, the model load (mean per worker: TensorFlow's import, the model build and the
    warm-up call when it ran), and when the first batch went into the model, from the command's
    start (the model parts only when a batch ran)."""
    line = f"start-up: imports {imports_s:.1f} s"
    if model_load_s is not None and first_batch_s is not None:
        line += f", model load {model_load_s:.1f} s, first batch at {first_batch_s:.1f} s"
    return line


def quiet_environment(verbosity: int) -> None:
    """Native TensorFlow/gRPC/absl logging levels; must run before TensorFlow is imported."""
    level = "0" if verbosity > 0 else "2"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", level)
    os.environ.setdefault("GRPC_VERBOSITY", "INFO" if verbosity > 0 else "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "0" if verbosity > 0 else "2")


class ConsoleHandler(logging.StreamHandler):
    """Log lines on ``stream``; while a live status line is shown it is cleared before each
    line and drawn again after it."""

    _console_lock = threading.RLock()

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self.status: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            with self._console_lock:
                clear = "\r\033[K" if self.status is not None else ""
                self.stream.write(f"{clear}{text}\n{self.status or ''}")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def show_status(self, text: str | None) -> None:
        """Draw ``text`` as the live status line; None removes it."""
        with self._console_lock:
            if text is None and self.status is not None:
                self.stream.write("\r\033[K")
            elif text is not None:
                self.stream.write(f"\r\033[K{text}")
            self.status = text
            self.stream.flush()


class _Formatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors name their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{self.formatTime(record, self.datefmt)} {record.levelname} {text}"
        return f"{self.formatTime(record, self.datefmt)} {text}"


def setup_logging(verbosity: int = 0, stream: TextIO | None = None) -> ConsoleHandler:
    """Route logging to ``stream`` (stderr): ``verbosity`` -1 (``-q``): warnings, errors and the
    summary; 0: stembeam's own lines, libraries' warnings; 1 (``-v``): everything at INFO and
    stembeam at DEBUG. Returns the handler (progress draws its status line through it)."""
    quiet_environment(verbosity)
    stream = stream or sys.stderr
    handler = ConsoleHandler(stream)
    datefmt = "%H:%M:%S" if stream.isatty() else "%Y-%m-%d %H:%M:%S"
    handler.setFormatter(_Formatter("%(message)s", datefmt=datefmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name, level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.INFO if verbosity > 0 else level)
    logging.getLogger("stembeam").setLevel(
        logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    )
    logging.getLogger(SUMMARY_LOGGER).setLevel(logging.INFO)
    logging.captureWarnings(verbosity > 0)
    if verbosity <= 0:
        warnings.filterwarnings("ignore")
        handler.addFilter(launcher_only)
    return handler


def launcher_only(record: logging.LogRecord) -> bool:
    """Logging filter: INFO lines of pipeline threads are hidden (the progress thread reports
    each track), and library lines below ERROR logged through the root logger (Beam does that,
    e.g. a warning per worker that memory usage cannot be read)."""
    if (
        record.name == "root"
        and record.levelno < logging.ERROR
        and any(f"{os.sep}{name}{os.sep}" in record.pathname for name in NOISY_LOGGERS)
    ):
        return False
    return record.levelno >= logging.WARNING or record.threadName in LAUNCHER_THREADS


@contextlib.contextmanager
def filter_native_stderr(handler: ConsoleHandler) -> Iterator[None]:
    """Drops NATIVE_NOISE lines written to file descriptor 2 (by C++ code, or Python) while the
    block runs; everything else, tracebacks included, still reaches stderr. ``handler`` writes
    to the real stderr meanwhile (its live status line has no newline to wait for)."""
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    real = os.fdopen(os.dup(saved), "w", buffering=1)
    stream, handler.stream = handler.stream, real

    def pump() -> None:
        with os.fdopen(read, "rb") as source:
            for line in source:
                if not NATIVE_NOISE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="stembeam-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: pump sees its end
        thread.join(timeout=2)  # a child process may still hold the pipe
        handler.stream = stream
        real.close()
        os.close(saved)


def audio_amount(seconds: float) -> str:
    """``12.3 s``, ``4.5 min`` or ``1.25 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def track_line(row: dict[str, Any]) -> tuple[int, str]:
    """(logging level, text) of one finished track: failures at WARNING with their reason."""
    if row["status"] == "failed":
        return logging.WARNING, f"track {row['track_id']}: failed: {row.get('error') or '?'}"
    if row["status"] == "skipped":
        return logging.INFO, f"track {row['track_id']}: skipped (already separated)"
    detail = f", {row['realtime_factor']:.2f}x real time" if row.get("realtime_factor") else ""
    return logging.INFO, (
        f"track {row['track_id']}: ok, "
        f"{audio_amount(row.get('duration_s') or 0.0)} of audio{detail}"
    )


class RunProgress:
    """Polls the results table for run ``run_id``'s rows from a background thread.

    ``total``: tracks in the catalog; ``started``: ``time.time()`` when the command started.
    Each new row gives a track line; the progress line goes to ``handler``'s live status line
    when ``live``, else to the log at most every ``log_every`` seconds when something changed.
    """

    def __init__(
        self,
        results_url: str,
        run_id: str,
        total: int,
        started: float,
        handler: ConsoleHandler | None = None,
        live: bool = False,
        interval: float = 1.0,
        log_every: float = 5.0,
    ):
        self._url, self._run_id, self.total, self._started = results_url, run_id, total, started
        self._handler, self._live = handler, live
        self._interval, self._log_every = interval, log_every
        self.rows: dict[str, dict[str, Any]] = {}
        self._logged_at, self._logged_count = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stembeam-progress", daemon=True)
        self._engine = None

    def start(self) -> RunProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops polling after one last poll (rows written at the very end get their lines);
        calling it again does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        self.poll(final=True)
        if self._live and self._handler is not None:
            self._handler.show_status(None)
        if self._engine is not None:
            self._engine.dispose()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()

    def _fetch(self) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        if self._engine is None:
            url = sa.engine.make_url(self._url)
            if (
                url.get_backend_name() == "sqlite"
                and url.database
                and not os.path.isfile(url.database)
            ):
                return []  # not written yet; connecting would create the file
            self._engine = sa.create_engine(url)
        query = sa.text(
            "SELECT track_id, status, error, duration_s, realtime_factor "
            "FROM results WHERE run_id = :run_id"
        )
        try:
            with self._engine.connect() as conn:
                return [dict(r) for r in conn.execute(query, {"run_id": self._run_id}).mappings()]
        except sa.exc.SQLAlchemyError as e:  # table not created yet, database busy
            log.debug("progress: results not readable yet: %s", e)
            return []

    def poll(self, final: bool = False) -> None:
        """Reads this run's rows once; prints lines for new ones and the progress line."""
        for row in sorted(self._fetch(), key=lambda r: r["track_id"]):
            if row["track_id"] not in self.rows:
                self.rows[row["track_id"]] = row
                log.log(*track_line(row))
        if final:  # the run summary follows
            return
        now = time.time()
        if self._live and self._handler is not None:
            self._handler.show_status(f"{self.bar()} {self.line(now)}")
        elif len(self.rows) != self._logged_count and now - self._logged_at >= self._log_every:
            log.info("progress: %s", self.line(now))
            self._logged_at, self._logged_count = now, len(self.rows)

    def line(self, now: float | None = None) -> str:
        """``3/10 tracks (1 failed), 4.5 min of audio, 2.1x real time, ETA 0:01:10``."""
        elapsed = max((now or time.time()) - self._started, 1e-9)
        done = len(self.rows)
        statuses = [r["status"] for r in self.rows.values()]
        audio = sum(r.get("duration_s") or 0.0 for r in self.rows.values() if r["status"] == "ok")
        counts = ", ".join(
            f"{statuses.count(s)} {s}" for s in ("skipped", "failed") if statuses.count(s)
        )
        worked = done - statuses.count("skipped")
        eta = clock(elapsed / worked * max(self.total - done, 0)) if worked else "--"
        return (
            f"{done}/{self.total} tracks"
            + (f" ({counts})" if counts else "")
            + f", {audio_amount(audio)} of audio, {audio / elapsed:.2f}x real time, ETA {eta}"
        )

    def bar(self, width: int = 24) -> str:
        filled = int(width * len(self.rows) / self.total) if self.total else width
        return "[" + "#" * filled + "." * (width - filled) + "]"
