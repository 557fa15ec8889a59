"""The separate job: a catalog in, stems and a results table out.

    ListCatalog -> SkipDone -> Reshuffle (tracks) -> DecodeSegments -> RunModel
    -> WriteStems -> Evaluate -> CommitRows (+ done-markers) ; all rows -> the run's row

Everything after the Reshuffle is one fused stage with no shuffle: each track goes from its first
decoded sample to published stems, a committed row and a done-marker on its own, so stems and
rows arrive track by track and a killed job keeps every track finished before the kill. Only
tracks (small records) cross the one shuffle.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from stembeam.model.registry import ModelInfo, describe_model
from stembeam.pipeline.options import SeparateOptions, parse_options, results_url, sources
from stembeam.pipeline.validate import redact_url, validate_run
from stembeam.transforms import metrics, storage
from stembeam.transforms.catalog import ListCatalog
from stembeam.transforms.decode import DecodeSegments
from stembeam.transforms.delivery import OutputFormat, validate_template
from stembeam.transforms.evaluate import Evaluate
from stembeam.transforms.inference import RunModel, resolve_spectral_path
from stembeam.transforms.output_state import (
    MarkDone,
    RunLock,
    clean_dead_runs,
    remove_run_temp_dir,
    signature,
)
from stembeam.transforms.records import Track
from stembeam.transforms.results import BIGQUERY_PREFIX, CommitRows
from stembeam.transforms.results_schema import RUNS_TABLE
from stembeam.transforms.skip_done import ROWS_TAG, RunSettings, SkipDone
from stembeam.transforms.write_stems import StemSettings, WriteStems

log = logging.getLogger("stembeam")
track_log = logging.getLogger("stembeam.tracks")  # inside the pipeline (worker logs)
summary_log = logging.getLogger("stembeam.summary")


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-xxxxxx``: sortable and unique."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def log_progress(pair: tuple[Track, dict[str, Any]]) -> tuple[Track, dict[str, Any]]:
    """Logs one line per finished track (failures at WARNING) and passes the pair on."""
    row = pair[1]
    audio = row.get("duration_s") or 0.0
    rtf = row.get("realtime_factor")
    detail = f", {rtf:.2f}x real time" if rtf else ""
    reason = f": {row['error']}" if row["status"] == "failed" else ""
    track_log.log(
        logging.WARNING if row["status"] == "failed" else logging.INFO,
        "track %s: %s, %.1f s of audio%s%s",
        row["track_id"],
        row["status"],
        audio,
        detail,
        reason,
    )
    return pair


class RunSummary(beam.CombineFn):
    """Result rows -> the run's row in the ``runs`` table."""

    def __init__(self, run_row: dict[str, Any], started: float):
        self._run_row, self._started = run_row, started

    def create_accumulator(self):
        return {"ok": 0, "skipped": 0, "failed": 0, "audio_s": 0.0}

    def add_input(self, acc, row):
        acc[row["status"]] += 1
        if row["status"] == "ok":
            acc["audio_s"] += row.get("duration_s") or 0.0
        return acc

    def merge_accumulators(self, accumulators):
        out = self.create_accumulator()
        for acc in accumulators:
            for key in out:
                out[key] += acc[key]
        return out

    def extract_output(self, acc):
        wall_s = time.time() - self._started
        return dict(
            self._run_row,
            tracks_ok=acc["ok"],
            tracks_skipped=acc["skipped"],
            tracks_failed=acc["failed"],
            audio_s=acc["audio_s"],
            wall_s=wall_s,
            realtime_factor=acc["audio_s"] / wall_s if wall_s > 0 else None,
            finished_at=datetime.datetime.now(datetime.UTC).isoformat(),
        )


def run_settings(options: SeparateOptions, model: ModelInfo) -> dict[str, Any]:
    """Everything that determines a track's stem files (hashed into the run's signature)."""
    return {
        "model": model.spec,
        "model_sha256": model.sha256,
        "model_config": model.config.name,
        "model_stems": list(model.config.stems),
        "stems": options.stems or "all",
        "format": OutputFormat.from_options(options).key,
        "filename_template": options.filename_template,
        "residual": options.residual,
        "segmentation": options.segmentation,
        "postprocess": options.postprocess,
    }


def stem_settings(options: SeparateOptions, model: ModelInfo, run_id: str) -> StemSettings:
    """The stem writer's settings; raises ValueError for a bad format, template or --stems."""
    settings = StemSettings(
        storage.absolute(options.output),
        run_id,
        model.spec,
        model.sha256,
        model.config,
        options.postprocess,
        OutputFormat.from_options(options),
        validate_template(options.filename_template),
        options.stems,
        options.residual,
    )
    settings.delivered()
    return settings


def build(
    p: beam.Pipeline,
    options: SeparateOptions,
    model: ModelInfo,
    run_id: str,
    results: str,
    started: float,
) -> beam.PCollection:
    """Adds the separate job to ``p``; returns the PCollection of result rows."""
    output, cfg = storage.absolute(options.output), model.config
    settings = run_settings(options, model)
    run = RunSettings(
        output, run_id, model.spec, model.sha256, signature(settings), settings, options.force
    )
    split = p | "ListCatalog" >> ListCatalog(sources(options)) | "SkipDone" >> SkipDone(run)
    separated = (
        split["todo"]
        | "SpreadTracks" >> beam.Reshuffle()
        | "DecodeSegments" >> DecodeSegments(cfg, options.segmentation)
        | "RunModel"
        >> RunModel(
            model.spec,
            cfg,
            batch_size=options.batch_size,
            cache_dir=options.model_cache,
            precision=options.precision,
            spectral_path=options.spectral_path,
            postprocess=options.postprocess,
            residual=options.residual,
            segmentation=options.segmentation,
        )
        | "WriteStems" >> WriteStems(stem_settings(options, model, run_id))
        | "Evaluate" >> Evaluate(output)
    )
    mark_done = MarkDone(output, run.signature, settings)
    # Each branch commits on its own: a Flatten in front of the commit would let a runner
    # (the FnApiRunner does) materialise the separated rows until the whole stage is done.
    committed = [
        pairs
        | f"LogProgress{name}" >> beam.Map(log_progress)
        | f"Commit{name}" >> CommitRows(results, after_commit=mark_done)
        for name, pairs in (("Separated", separated), ("Skipped", split[ROWS_TAG]))
    ]
    rows = committed | "AllRows" >> beam.Flatten()
    run_row = {
        "run_id": run_id,
        "input": ", ".join(sources(options)),
        "output": output,
        "model": model.spec,
        "model_sha256": model.sha256,
        "started_at": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(),
        "options": json.dumps(
            dict(
                settings,
                batch_size=options.batch_size,
                force=options.force,
                precision=options.precision,
                spectral_path=options.spectral_path,
            )
        ),
    }
    (
        rows
        | "SummarizeRun" >> beam.CombineGlobally(RunSummary(run_row, started))
        | "KeyRunRow" >> beam.Map(lambda row: (None, row))
        | "CommitRunRow" >> CommitRows(results, table=RUNS_TABLE)
    )
    return rows


def _counter(result: beam.runners.runner.PipelineResult, name: str) -> int:
    query = MetricsFilter().with_namespace(metrics.METRICS_NAMESPACE).with_name(name)
    counters = result.metrics().query(query)
    total = 0
    for counter in counters["counters"]:
        total += counter.committed if counter.committed is not None else counter.attempted
    return total


def _distribution(result, name: str, statistic: str = "mean") -> float | None:
    """``statistic`` (mean or min) of a Beam distribution metric of namespace stembeam over all
    workers, None when never updated."""
    query = MetricsFilter().with_namespace(metrics.METRICS_NAMESPACE).with_name(name)
    values = [
        dist.committed if dist.committed is not None else dist.attempted
        for dist in result.metrics().query(query)["distributions"]
    ]
    values = [v for v in values if v.count]
    if not values:
        return None
    if statistic == "min":
        return min(v.min for v in values)
    return sum(v.sum for v in values) / sum(v.count for v in values)


def summarize(result, wall_s: float) -> dict[str, float]:
    """Tracks ok/skipped/failed, audio hours, wall time and real-time factor from Beam metrics."""
    audio_s = _counter(result, metrics.AUDIO_MS) / 1e3
    summary = {
        "tracks_ok": _counter(result, metrics.TRACKS_OK),
        "tracks_skipped": _counter(result, metrics.TRACKS_SKIPPED),
        "tracks_failed": _counter(result, metrics.TRACKS_FAILED),
        "audio_hours": audio_s / 3600,
        "wall_s": wall_s,
        "realtime_factor": audio_s / wall_s if wall_s > 0 else 0.0,
        "model_load_ms": _distribution(result, metrics.MODEL_LOAD_MS),
        "first_batch_unix_ms": _distribution(result, metrics.FIRST_BATCH_UNIX_MS, "min"),
        "batch_size": _distribution(result, "inference_request_batch_size"),
        "batch_latency_ms": (_distribution(result, "inference_batch_latency_micro_secs") or 0.0)
        / 1e3,
    }
    summary_log.info(
        "run summary: %(tracks_ok)d ok, %(tracks_skipped)d skipped, "
        "%(tracks_failed)d failed; %(audio_hours).3f h of audio in %(wall_s).1f s "
        "(%(realtime_factor).2fx real time)",
        summary,
    )
    if summary["batch_size"]:
        log.debug(
            "inference: model loaded in %.0f ms (mean per worker), mean batch %.1f "
            "segments, %.0f ms per batch",
            summary["model_load_ms"] or 0.0,
            summary["batch_size"],
            summary["batch_latency_ms"],
        )
    return summary


def _write_report(results: str, path: str | None, run_id: str, output: str) -> str | None:
    """Writes ``path``, or without one OUTPUT/reports/<run id>.html and the index
    OUTPUT/report.html; returns the run's report path (None when the report cannot be made)."""
    try:
        from stembeam.pipeline.report import write_report, write_run_reports
    except ImportError as e:
        log.warning("report not written: %s", e)
        return None
    if path is None:
        path = write_run_reports(results, output, run_id)
    else:
        write_report(results, path, run_id=run_id)
    log.info("report: %s", path)
    return path


def run(
    argv: list[str] | None = None,
    wait: bool = True,
    on_finished: Callable[[], None] | None = None,
    catalog_tracks: int | None = None,
) -> dict[str, Any]:
    """Runs ``stembeam separate`` with ``argv``; returns the run id, results URL, summary and
    report path. ``on_finished`` is called when the pipeline is done, before the summary;
    ``catalog_tracks``: the caller listed the catalog already (the launcher lists it once).

    Raises ValueError (bad options or inputs) and RunConflict (another live run writes to the
    same output with other settings) before any work starts.
    """
    options = parse_options(argv)
    started = time.time()
    run_id = options.run_id or new_run_id()
    results = results_url(options)
    output = storage.absolute(options.output)
    if storage.is_local(output):
        os.makedirs(output, exist_ok=True)
    validate_run(options, results, catalog_tracks)
    model = describe_model(options.model, options.model_cache)
    stem_settings(options, model, run_id)  # a bad format, template or --stems: refused now
    resolve_spectral_path(options.spectral_path, options.postprocess)  # graph with Wiener
    settings = run_settings(options, model)
    lock = RunLock(output, run_id, signature(settings), settings).acquire()
    try:
        cleaned = clean_dead_runs(output, run_id)
        if cleaned:
            log.info("deleted %d temporary files that earlier runs left in %s", cleaned, output)
        log.info(
            "run %s: %s -> %s with %s (%s), results in %s",
            run_id,
            ", ".join(sources(options)),
            output,
            model.spec,
            model.key,
            redact_url(results),
        )
        p = beam.Pipeline(options=options)
        build(p, options, model, run_id, results, started)
        result = p.run()
        out: dict[str, Any] = {"run_id": run_id, "results": results}
        if not wait:
            return out
        result.wait_until_finish()
    finally:
        if wait:
            remove_run_temp_dir(output, run_id)
            lock.release()
    if on_finished is not None:
        on_finished()
    out["summary"] = summarize(result, time.time() - started)
    report = options.report
    if (
        report != "none"
        and not results.startswith(BIGQUERY_PREFIX)
        and (report or storage.is_local(output))
    ):
        out["report"] = _write_report(results, report, run_id, output)
    return out
