"""Model inference: segments' samples in, what the writer needs out.

``StemModelHandler`` is our own Beam ``ModelHandler`` (Beam's TensorFlow handlers import
tensorflow_hub). RunInference loads the model once per worker process and shares it between
the process's threads; it batches segments, also across tracks of one bundle, and reports
``inference_request_batch_size`` and ``inference_batch_latency_micro_secs`` metrics (its
``load_model_latency_milli_secs`` is ~0: the model loads on a thread, ``BackgroundModel``, which
reports ``metrics.MODEL_LOAD_MS`` and ``metrics.FIRST_BATCH_UNIX_MS`` instead).

Two spectral paths, chosen on the worker (``resolve_spectral_path``):

- ``host``: numpy/scipy STFT per segment here, the U-Net on the batch, masks and inverse STFT in
  the writer (``model.reconstruct``); the only path for Wiener filtering.
- ``graph``: the whole batch through one TensorFlow function (``model.fused``: STFT, U-Net,
  masks, inverse STFT, overlap-add), on the GPU where there is one; the writer only stitches,
  resamples and encodes.
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
from stembeam.model.segmentation import SegmentPlan, segment_sample_range, steady_frames
from stembeam.transforms import collector, metrics
from stembeam.transforms.metrics import METRICS_NAMESPACE
from stembeam.transforms.records import Segment

# CPU: 4, as before (the U-Net alone is a few % faster per segment at batch 1-2, but a whole
# run was not: `bench.precision batch-ab`, BENCHMARKS.md). GPU: enough segments to fill it.
CPU_BATCH_SIZE = 4
GPU_BATCH_SIZE = 16
SPECTRAL_PATHS = ("auto", "host", "graph")

# host: (B, T, F, 2) magnitudes -> (B, T, F, 2, S) estimates; graph: model.fused.FusedSeparator
Predictor = Callable[..., np.ndarray]


class BackgroundModel:
    """A model loading (and running its warm-up batch) on a thread, so that the worker decodes
    and transforms its first segments meanwhile; ``get()`` waits for it and re-raises a load
    failure. ``load(waiting)`` skips the warm-up once ``waiting`` is set: a batch waits, and with
    nothing left to hide the warm-up behind it would only delay that batch (which traces the
    model for its own shape). ``load_s``: seconds until the model was ready. ``path`` is the
    spectral path the model serves (``'host'`` or ``'graph'``)."""

    def __init__(self, load: Callable[[threading.Event], Predictor], path: str):
        self.path = path
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
            collector.resume()  # start-up is over: its objects frozen, the collector on
            metrics.record(metrics.MODEL_LOAD_MS, round(self.load_s * 1e3))
            metrics.record(metrics.FIRST_BATCH_UNIX_MS, round(time.time() * 1e3))
        return result


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU (``/proc/driver/nvidia/gpus`` lists one), checked
    without importing TensorFlow."""
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def default_batch_size() -> int:
    """Segments per model call for this machine: ``GPU_BATCH_SIZE`` with a GPU, else
    ``CPU_BATCH_SIZE``."""
    return GPU_BATCH_SIZE if gpu_present() else CPU_BATCH_SIZE


def resolve_spectral_path(path: str, postprocess: str) -> str:
    """``'host'`` or ``'graph'`` for a ``SPECTRAL_PATHS`` value: ``auto`` is the graph on a GPU
    machine with ratio masks, the host path elsewhere (on CPUs a whole run was 10 % faster with
    it, BENCHMARKS.md); Wiener filtering (norbert) runs on the host only."""
    if path not in SPECTRAL_PATHS:
        raise ValueError(f"unknown spectral path {path!r}; expected one of {SPECTRAL_PATHS}")
    if postprocess != "ratio":
        if path == "graph":
            raise ValueError("--spectral_path graph needs --postprocess ratio")
        return "host"
    if path == "auto":
        return "graph" if gpu_present() else "host"
    return path


class StemModelHandler(ModelHandler[Segment, Segment, BackgroundModel]):
    """Runs the model ``spec`` (config ``cfg``) on ``Segment`` batches (``samples`` in).

    Host path: out come ``mix_stft`` (n, bins, 2) and ``estimates`` (n, F, 2, S) for the
    writer's masks. Graph path: out comes ``stem_block``, the segment's stems overlap-added.
    ``precision`` and ``spectral_path`` are resolved where the model loads (``auto`` looks at
    that machine's CPU and GPU). The model loads and runs its warm-up batch (one segment of the
    length most segments of ``segmentation`` have) on a thread (``BackgroundModel``); the first
    batch waits for it, and a load failure fails the job there. A failing batch does not fail
    the job: its segments come out with ``error`` set.
    """

    def __init__(
        self,
        spec: str,
        cfg: ModelConfig,
        batch_size: int | None = None,
        cache_dir: str | None = None,
        precision: str = "auto",
        spectral_path: str = "auto",
        postprocess: str = "ratio",
        residual: str = "none",
        segmentation: str = "overlap",
    ):
        super().__init__(min_batch_size=1, max_batch_size=batch_size or default_batch_size())
        self._spec, self._cache_dir, self._precision = spec, cache_dir, precision
        self._spectral_path, self._postprocess = spectral_path, postprocess
        self._residual, self._cfg, self._segmentation = residual, cfg, segmentation

    def _load(self, path: str, waiting: threading.Event) -> Predictor:
        """The ``path``'s predictor, traced and warmed up on a segment of the steady length
        unless a batch already ``waiting`` (it traces its own length)."""
        from stembeam.model.registry import load_model

        loaded = load_model(self._spec, cache_dir=self._cache_dir, precision=self._precision)
        cfg = loaded.config
        frames = steady_frames(cfg.T, self._segmentation)
        if path == "graph":
            from stembeam.model.fused import fused_separator

            separate = fused_separator(loaded.model, cfg, cfg.mask_extension, self._residual)
            if not waiting.is_set():
                plan = SegmentPlan(0, 0, 0, frames, frames)
                start, stop = segment_sample_range(plan, cfg.T, cfg.frame_length, cfg.frame_step)
                separate(np.zeros((1, stop - start, cfg.channels), np.float32), [plan])
            return separate
        from stembeam.model.unet import batch_predictor

        predictor = batch_predictor(loaded.model)
        if not waiting.is_set():
            predictor(np.zeros((1, frames, cfg.F, cfg.channels), np.float32))
        return predictor

    def load_model(self) -> BackgroundModel:
        path = resolve_spectral_path(self._spectral_path, self._postprocess)
        return BackgroundModel(lambda waiting: self._load(path, waiting), path)

    def run_inference(
        self,
        batch: Sequence[Segment],
        model: BackgroundModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Segment]:
        out = list(batch)
        if model.path == "host":  # the STFTs while the model may still be loading
            out = [_spectrogram(s, self._cfg) for s in out]
        todo = [i for i, s in enumerate(out) if s.error is None]
        if not todo:
            return out
        predict = model.get()  # raises a load failure: the job fails, as Beam's own load would
        groups: dict[int, list[int]] = {}  # one model call per segment length
        for i in todo:
            groups.setdefault(len(out[i].samples), []).append(i)
        run = _run_host if model.path == "host" else _run_graph
        for group in groups.values():
            try:
                results = run(predict, [out[i] for i in group])
                for i, segment in zip(group, results):
                    out[i] = segment
            except Exception as e:
                metrics.count(metrics.INFERENCE_FAILURES)
                error = f"model inference failed: {type(e).__name__}: {e}"
                for i in group:
                    out[i] = dataclasses.replace(
                        out[i], samples=None, mix_stft=None, magnitude=None, error=error
                    )
        return out

    def get_num_bytes(self, batch: Sequence[Segment]) -> int:
        return sum(s.samples.nbytes for s in batch if s.samples is not None)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def _finite(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError("the model produced NaN or infinite values")
    return values


def _run_host(predict: Predictor, segments: list[Segment]) -> list[Segment]:
    """U-Net estimates for segments of one length that carry ``magnitude``."""
    estimates = _finite(predict(np.stack([s.magnitude for s in segments])))
    return [
        dataclasses.replace(s, magnitude=None, estimates=e) for s, e in zip(segments, estimates)
    ]


def _run_graph(predict: Predictor, segments: list[Segment]) -> list[Segment]:
    """Overlap-added stems (``stem_block``) of segments of one length, through the fused
    spectral graph."""
    blocks = predict(np.stack([s.samples for s in segments]), [s.plan for s in segments])
    return [
        dataclasses.replace(s, samples=None, stem_block=block) for s, block in zip(segments, blocks)
    ]


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


class RunModel(beam.PTransform):
    """``Segment`` (samples) -> ``Segment`` (``estimates`` or ``stem_block``) through Beam's
    RunInference; arguments as ``StemModelHandler``'s."""

    def __init__(self, spec: str, cfg: ModelConfig, **handler_options: Any):
        super().__init__()
        self._handler = StemModelHandler(spec, cfg, **handler_options)

    def expand(self, segments):
        inference = RunInference(self._handler, metrics_namespace=METRICS_NAMESPACE)
        return segments | inference.with_output_types(Segment)
