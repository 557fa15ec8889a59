"""The separate job: a catalog in, stems and a results table out.

    ListCatalog -> SkipDone -> Reshuffle -> DecodeSegments -> Spectrogram -> RunInference
    -> Reconstruct + WriteChunks -> GroupByKey (ChunkRefs) -> AssembleStems -> Reshuffle
    -> Evaluate -> WriteResults (+ one runs row)

Audio stays inside the fused decode..chunk-write stage; only tracks, chunk references and result
rows cross shuffles.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import time
import uuid
from typing import Any, Callable, Optional

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from pipeline.options import SeparateOptions, parse_options, results_url, sources
from transforms import storage
from transforms.assemble import AssembleStems, ReconstructAndWriteChunks
from transforms.catalog import SKIPPED_TAG, ListCatalog, SkipDone, check_source
from transforms.decode import SUMMARY_TAG, DecodeSegments
from transforms.evaluate import Evaluate
from transforms.inference import ModelInfo, Separate, Spectrogram, describe_model
from transforms.results import BIGQUERY_PREFIX, WriteResults
from transforms.results_schema import RUNS_TABLE

log = logging.getLogger("stembeam")
track_log = logging.getLogger("stembeam.tracks")  # inside the pipeline (worker logs)
summary_log = logging.getLogger("stembeam.summary")


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-xxxxxx``: sortable and unique."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + \
        uuid.uuid4().hex[:6]


def log_progress(row: dict[str, Any]) -> dict[str, Any]:
    """Logs one line per finished track (failures at WARNING) and passes the row on."""
    audio = row.get("duration_s") or 0.0
    rtf = row.get("realtime_factor")
    detail = f", {rtf:.2f}x real time" if rtf else ""
    reason = f": {row['error']}" if row["status"] == "failed" else ""
    track_log.log(logging.WARNING if row["status"] == "failed" else logging.INFO,
                  "track %s: %s, %.1f s of audio%s%s", row["track_id"], row["status"], audio,
                  detail, reason)
    return row


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
        return dict(self._run_row, tracks_ok=acc["ok"], tracks_skipped=acc["skipped"],
                    tracks_failed=acc["failed"], audio_s=acc["audio_s"], wall_s=wall_s,
                    realtime_factor=acc["audio_s"] / wall_s if wall_s > 0 else None,
                    finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat())


def build(p: beam.Pipeline, options: SeparateOptions, model: ModelInfo, run_id: str,
          results: str, started: float) -> beam.PCollection:
    """Adds the separate job to ``p``; returns the PCollection of result rows."""
    output, cfg = options.output.rstrip("/"), model.config
    split = (p
             | "ListCatalog" >> ListCatalog(options.input)
             | "SkipDone" >> SkipDone(output, model.key, run_id, model.spec, model.sha256,
                                      options.force))
    decoded = (split["todo"]
               | "SpreadTracks" >> beam.Reshuffle()
               | "DecodeSegments" >> DecodeSegments(cfg, options.segmentation))
    chunks = (decoded.segments
              | "Spectrogram" >> Spectrogram(cfg)
              | "RunInference" >> Separate(model.spec, options.batch_size, options.model_cache,
                                                   options.precision)
              | "ReconstructAndWriteChunks" >> ReconstructAndWriteChunks(
                  cfg, options.postprocess, output))
    separated = ({"summary": decoded[SUMMARY_TAG], "chunks": chunks}
                 | "AssembleStems" >> AssembleStems(model, output, options.format, run_id)
                 | "Evaluate" >> Evaluate(output))
    rows = ((separated, split[SKIPPED_TAG])
            | "AllTracks" >> beam.Flatten()
            | "LogProgress" >> beam.Map(log_progress))
    rows | "WriteResults" >> WriteResults(results)
    run_row = {
        "run_id": run_id, "input": ", ".join(sources(options)), "output": output,
        "model": model.spec, "model_sha256": model.sha256,
        "started_at": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "options": json.dumps({"segmentation": options.segmentation,
                               "postprocess": options.postprocess, "format": options.format,
                               "batch_size": options.batch_size, "force": options.force,
                               "precision": options.precision}),
    }
    (rows
     | "SummarizeRun" >> beam.CombineGlobally(RunSummary(run_row, started))
     | "WriteRun" >> WriteResults(results, table=RUNS_TABLE))
    return rows


def _counter(result: beam.runners.runner.PipelineResult, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_namespace("stembeam").with_name(name))
    total = 0
    for counter in counters["counters"]:
        total += counter.committed if counter.committed is not None else counter.attempted
    return total


def _distribution_mean(result, name: str) -> Optional[float]:
    """Mean of a Beam distribution metric of namespace stembeam, None when never updated."""
    query = MetricsFilter().with_namespace("stembeam").with_name(name)
    total = count = 0
    for dist in result.metrics().query(query)["distributions"]:
        value = dist.committed if dist.committed is not None else dist.attempted
        total, count = total + value.sum, count + value.count
    return total / count if count else None


def summarize(result, wall_s: float) -> dict[str, float]:
    """Tracks ok/skipped/failed, audio hours, wall time and real-time factor from Beam metrics."""
    audio_s = _counter(result, "audio_ms") / 1e3
    summary = {
        "tracks_ok": _counter(result, "tracks_ok"),
        "tracks_skipped": _counter(result, "tracks_skipped"),
        "tracks_failed": _counter(result, "tracks_failed"),
        "audio_hours": audio_s / 3600, "wall_s": wall_s,
        "realtime_factor": audio_s / wall_s if wall_s > 0 else 0.0,
        "model_load_ms": _distribution_mean(result, "load_model_latency_milli_secs"),
        "batch_size": _distribution_mean(result, "inference_request_batch_size"),
        "batch_latency_ms": (_distribution_mean(result, "inference_batch_latency_micro_secs")
                             or 0.0) / 1e3,
    }
    summary_log.info("run summary: %(tracks_ok)d ok, %(tracks_skipped)d skipped, "
                     "%(tracks_failed)d failed; %(audio_hours).3f h of audio in %(wall_s).1f s "
                     "(%(realtime_factor).2fx real time)", summary)
    if summary["batch_size"]:
        log.debug("inference: model loaded in %.0f ms (mean per worker), mean batch %.1f "
                  "segments, %.0f ms per batch", summary["model_load_ms"] or 0.0,
                  summary["batch_size"], summary["batch_latency_ms"])
    return summary


def _write_report(results: str, path: Optional[str], run_id: str, output: str) -> Optional[str]:
    """Writes ``path``, or without one OUTPUT/reports/<run id>.html and the index
    OUTPUT/report.html; returns the run's report path (None when the report cannot be made)."""
    try:
        from pipeline.report import write_report, write_run_reports
    except ImportError as e:
        log.warning("report not written: %s", e)
        return None
    if path is None:
        path = write_run_reports(results, output, run_id)
    else:
        write_report(results, path, run_id=run_id)
    log.info("report: %s", path)
    return path


def run(argv: Optional[list[str]] = None, wait: bool = True,
        on_finished: Optional[Callable[[], None]] = None) -> dict[str, Any]:
    """Runs ``stembeam separate`` with ``argv``; returns the run id, results URL, summary and
    report path. ``on_finished`` is called when the pipeline is done, before the summary."""
    options = parse_options(argv)
    started = time.time()
    run_id = options.run_id or new_run_id()
    results = results_url(options)
    check_source(options.input)
    if storage.is_local(options.output):
        os.makedirs(options.output, exist_ok=True)
    model = describe_model(options.model, options.model_cache)
    log.info("run %s: %s -> %s with %s (%s), results in %s", run_id, ", ".join(sources(options)),
             options.output, model.spec, model.key, results)
    p = beam.Pipeline(options=options)
    build(p, options, model, run_id, results, started)
    result = p.run()
    out: dict[str, Any] = {"run_id": run_id, "results": results}
    if not wait:
        return out
    result.wait_until_finish()
    if on_finished is not None:
        on_finished()
    out["summary"] = summarize(result, time.time() - started)
    report = options.report
    if report != "none" and not results.startswith(BIGQUERY_PREFIX) and (
            report or storage.is_local(options.output)):
        out["report"] = _write_report(results, report, run_id, options.output)
    return out
