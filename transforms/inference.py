"""Spectrogram and model inference: segments' STFT in, stem magnitude estimates out.

``StemModelHandler`` is our own Beam ``ModelHandler`` (Beam's TensorFlow handlers import
tensorflow_hub). RunInference loads the model once per worker process and shares it between
the process's threads; it batches segments, also across tracks of one bundle, and reports
``inference_request_batch_size`` and ``inference_batch_latency_micro_secs`` metrics (its
``load_model_latency_milli_secs`` is ~0: the model loads on a thread, ``BackgroundModel``, which
reports ``metrics.MODEL_LOAD_MS`` and ``metrics.FIRST_BATCH_UNIX_MS`` instead).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from stembeam.model.config import ModelConfig
from stembeam.model.reconstruct import segment_spectrogram
from stembeam.transforms import metrics
from stembeam.transforms.metrics import METRICS_NAMESPACE
from stembeam.transforms.records import Segment

# CPU: 4, as before (the U-Net alone is a few % faster per segment at batch 1-2, but a whole
# run was not: `bench.precision batch-ab`, BENCHMARKS.md). GPU: enough segments to fill it.
CPU_BATCH_SIZE = 4
GPU_BATCH_SIZE = 16


Predictor = Callable[[np.ndarray], np.ndarray]  # (B, T, F, 2) -> (B, T, F, 2, S), float32


class BackgroundModel:
    """A model loading (and running its warm-up batch) on a thread, so that the worker decodes
    and transforms its first segments meanwhile; ``get()`` waits for it and re-raises a load
    failure. ``load(waiting)`` skips the warm-up once ``waiting`` is set: a batch waits, and with
    nothing left to hide the warm-up behind it would only delay that batch (which traces the
    model for its own shape). ``load_s``: seconds until the model was ready."""

    def __init__(self, load: Callable[[threading.Event], Predictor]):
        self._result: list = []
        self._waiting = threading.Event()
        self._reported = False
        self.load_s = 0.0
        # not a daemon: a run with nothing to separate exits after the load finishes, never
        # with TensorFlow half-imported on a thread (which aborts the interpreter)
        self._thread = threading.Thread(target=self._run, args=(load,), name="stembeam-load")
        self._thread.start()

    def _run(self, load: Callable[[threading.Event], Predictor]) -> None:
        started = time.perf_counter()
        try:
            self._result.append(load(self._waiting))
        except BaseException as e:  # handed to get()
            self._result.append(e)
        self.load_s = time.perf_counter() - started

    def get(self) -> Predictor:
        self._waiting.set()
        self._thread.join()
        (result,) = self._result
        if isinstance(result, BaseException):
            raise result
        if not self._reported:  # this process's first batch: its start-up metrics
            self._reported = True
            metrics.record(metrics.MODEL_LOAD_MS, round(self.load_s * 1e3))
            metrics.record(metrics.FIRST_BATCH_UNIX_MS, round(time.time() * 1e3))
        return result


def default_batch_size() -> int:
    """Segments per model call for this machine: ``GPU_BATCH_SIZE`` where an NVIDIA GPU is
    present (``/proc/driver/nvidia/gpus`` lists one; checked without importing TensorFlow),
    else ``CPU_BATCH_SIZE``."""
    try:
        gpus = os.listdir("/proc/driver/nvidia/gpus")
    except OSError:
        gpus = []
    return GPU_BATCH_SIZE if gpus else CPU_BATCH_SIZE


class StemModelHandler(ModelHandler[Segment, Segment, BackgroundModel]):
    """Runs a stembeam model on ``Segment`` batches (``magnitude`` in, ``estimates`` out).

    ``precision`` is resolved where the model loads (``model.unet.resolve_precision``: ``auto``
    looks at that machine's CPU and GPU). The model loads and runs its warm-up batch on a thread
    (``BackgroundModel``); the first batch waits for it, and a load failure fails the job there.
    A failing batch does not fail the job: its segments come out with ``error`` set.
    """

    def __init__(
        self,
        spec: str,
        batch_size: int | None = None,
        cache_dir: str | None = None,
        precision: str = "auto",
    ):
        super().__init__(min_batch_size=1, max_batch_size=batch_size or default_batch_size())
        self._spec, self._cache_dir, self._precision = spec, cache_dir, precision

    def _load(self, waiting: threading.Event) -> Predictor:
        from stembeam.model.registry import load_model
        from stembeam.model.unet import batch_predictor

        loaded = load_model(self._spec, cache_dir=self._cache_dir, precision=self._precision)
        predictor = batch_predictor(loaded.model)
        cfg = loaded.config
        if not waiting.is_set():  # trace + warm up
            predictor(np.zeros((1, cfg.T, cfg.F, cfg.channels), np.float32))
        return predictor

    def load_model(self) -> BackgroundModel:
        return BackgroundModel(self._load)

    def run_inference(
        self,
        batch: Sequence[Segment],
        model: BackgroundModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Segment]:
        todo = [i for i, s in enumerate(batch) if s.error is None]
        out = [dataclasses.replace(s, magnitude=None) for s in batch]
        if not todo:
            return out
        predict = model.get()  # raises a load failure: the job fails, as Beam's own load would
        groups: dict[int, list[int]] = {}  # one model call per segment length
        for i in todo:
            groups.setdefault(batch[i].magnitude.shape[0], []).append(i)
        for group in groups.values():
            try:
                estimates = predict(np.stack([batch[i].magnitude for i in group]))
                if not np.isfinite(estimates).all():
                    raise ValueError("the model produced NaN or infinite values")
                for i, estimate in zip(group, estimates):
                    out[i] = dataclasses.replace(out[i], estimates=estimate)
            except Exception as e:
                metrics.count(metrics.INFERENCE_FAILURES)
                error = f"model inference failed: {type(e).__name__}: {e}"
                for i in group:
                    out[i] = dataclasses.replace(out[i], mix_stft=None, error=error)
        return out

    def get_num_bytes(self, batch: Sequence[Segment]) -> int:
        return sum(s.magnitude.nbytes for s in batch if s.magnitude is not None)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def _spectrogram(segment: Segment, cfg: ModelConfig) -> Segment:
    """A copy with ``mix_stft`` and ``magnitude`` added; ``samples`` stay for the writer (with a
    residual, the last stem is the mixture minus the others)."""
    if segment.error is not None:
        return dataclasses.replace(segment, samples=None)
    try:
        mix_stft, magnitude = segment_spectrogram(segment.samples, cfg)
    except Exception as e:
        return dataclasses.replace(
            segment, samples=None, error=f"spectrogram failed: {type(e).__name__}: {e}"
        )
    return dataclasses.replace(segment, mix_stft=mix_stft, magnitude=magnitude)


class Spectrogram(beam.PTransform):
    """``Segment`` with ``samples`` -> with ``mix_stft`` (n, n_bins, 2) and ``magnitude``
    (n, F, 2), n = T or a short last segment's frames."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self._cfg = cfg

    def expand(self, segments):
        return segments | beam.Map(_spectrogram, self._cfg)


class RunModel(beam.PTransform):
    """``Segment`` (magnitude) -> ``Segment`` (estimates) through Beam's RunInference."""

    def __init__(
        self,
        spec: str,
        batch_size: int | None = None,
        cache_dir: str | None = None,
        precision: str = "auto",
    ):
        super().__init__()
        self._handler = StemModelHandler(spec, batch_size, cache_dir, precision)

    def expand(self, segments):
        return segments | RunInference(self._handler, metrics_namespace=METRICS_NAMESPACE)
