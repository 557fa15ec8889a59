"""StemModelHandler: the model loads on a thread, batches run through it, failures surface."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

from stembeam.model.reconstruct import reconstruct_segment
from stembeam.model.segmentation import SegmentPlan
from stembeam.transforms.inference import (
    CPU_BATCH_SIZE,
    GPU_BATCH_SIZE,
    BackgroundModel,
    StemModelHandler,
    default_batch_size,
    resolve_spectral_path,
)
from stembeam.transforms.records import Segment
from tests.conftest import TINY


def _segments(n: int, seed: int = 0) -> list[Segment]:
    """Segments of T frames of noise (plans: the second segment of an overlap cut)."""
    rng = np.random.default_rng(seed)
    size = (TINY.T - 1) * TINY.frame_step + TINY.frame_length
    plan = SegmentPlan(1, 40, 48, 96)
    return [
        Segment(
            track=None,
            plan=plan,
            is_last=False,
            info=None,
            started_at=0.0,
            samples=rng.normal(0, 0.1, (size, TINY.channels)).astype("float32"),
        )
        for _ in range(n)
    ]


def _magnitude(samples: np.ndarray) -> np.ndarray:
    """(T, F, C) |STFT| with numpy's FFT and a periodic Hann window, frames inside samples."""
    n = np.arange(TINY.frame_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / TINY.frame_length)
    frames = np.stack(
        [
            samples[k * TINY.frame_step : k * TINY.frame_step + TINY.frame_length]
            for k in range(TINY.T)
        ]
    )  # (T, L, C)
    return np.abs(np.fft.rfft(frames * window[:, None], axis=1)[:, : TINY.F]).astype(np.float32)


def test_batches_through_the_background_model(tiny_model):
    handler = StemModelHandler(tiny_model, TINY, batch_size=3, precision="float32")
    model = handler.load_model()
    assert isinstance(model, BackgroundModel) and model.path == "host"  # no GPU, ratio
    segments = _segments(3)
    out = list(handler.run_inference(segments, model))
    keras_model = keras.saving.load_model(os.path.join(tiny_model, "model.keras"), compile=False)
    expected = keras_model.predict_on_batch(np.stack([_magnitude(s.samples) for s in segments]))
    for segment, estimate in zip(out, expected, strict=True):
        assert segment.magnitude is None and segment.error is None
        assert segment.mix_stft.shape == (TINY.T, TINY.n_bins, 2)
        np.testing.assert_allclose(segment.estimates, estimate, rtol=1e-4, atol=1e-5)
    assert handler.batch_elements_kwargs()["max_batch_size"] == 3


def test_graph_path_gives_the_host_paths_blocks(tiny_model):
    segments = _segments(2, seed=1)
    host = StemModelHandler(tiny_model, TINY, precision="float32", spectral_path="host")
    graph = StemModelHandler(tiny_model, TINY, precision="float32", spectral_path="graph")
    model = graph.load_model()
    assert model.path == "graph"
    for want, got in zip(
        host.run_inference(segments, host.load_model()), graph.run_inference(segments, model)
    ):
        start, block = reconstruct_segment(want.mix_stft, want.estimates, want.plan, TINY)
        assert got.samples is None and got.estimates is None and got.stem_block[0] == start
        np.testing.assert_allclose(got.stem_block[1], block, atol=1e-5 * np.abs(block).max())


def test_spectral_path_resolution():
    gpu = bool(os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus"))
    assert resolve_spectral_path("auto", "ratio") == ("graph" if gpu else "host")
    assert resolve_spectral_path("auto", "wiener") == "host"
    assert resolve_spectral_path("graph", "ratio") == "graph"
    with pytest.raises(ValueError, match="needs --postprocess ratio"):
        resolve_spectral_path("graph", "wiener")
    with pytest.raises(ValueError, match="unknown spectral path"):
        resolve_spectral_path("gpu", "ratio")


def test_warm_up_runs_only_while_no_batch_waits():
    """``load(waiting)`` sees no batch waiting when the load ends before any batch asks, and a
    batch already waiting otherwise; ``load_s`` covers the load."""
    seen, loaded = [], threading.Event()

    def load(waiting):
        time.sleep(0.2)
        seen.append(waiting.is_set())
        loaded.set()
        return np.negative

    early = BackgroundModel(load, "host")
    assert early.get() is np.negative and seen == [True]  # asked during the load
    assert 0.2 <= early.load_s < 5
    loaded.clear()
    idle = BackgroundModel(load, "host")
    assert loaded.wait(10) and seen == [True, False]
    assert idle.get() is np.negative


def test_load_failure_fails_the_first_batch(tmp_path):
    handler = StemModelHandler(str(tmp_path / "no-such-model"), TINY, precision="float32")
    model = handler.load_model()  # returns at once; the thread fails
    with pytest.raises(ValueError, match="unknown model"):
        handler.run_inference(_segments(1), model)


def test_default_batch_size_follows_the_machine():
    nvidia = os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus")
    assert default_batch_size() == (GPU_BATCH_SIZE if nvidia else CPU_BATCH_SIZE)
    handler = StemModelHandler("spleeter:2stems", TINY)
    assert handler.batch_elements_kwargs()["max_batch_size"] == default_batch_size()


def test_launcher_does_not_import_tensorflow(tiny_model):
    # describing a model (what the launcher does) leaves TensorFlow and Keras to the workers'
    # loading thread
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys, stembeam.pipeline.separate\n"
        "from stembeam.model.registry import describe_model\n"
        f"info = describe_model({tiny_model!r})\n"
        "print(info.config.name, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
        check=True,
    ).stdout
    assert out.split() == ["tiny", "False", "False"]


def test_precision_and_batch_size_options():
    from stembeam.pipeline.options import UsageError, parse_options

    options = parse_options(["a.wav", "-o", "/tmp/o"])
    assert options.precision == "auto" and options.batch_size is None
    for precision in ("float32", "bfloat16"):
        assert (
            parse_options(["a.wav", "-o", "/tmp/o", "--precision", precision]).precision
            == precision
        )
    assert parse_options(["a.wav", "-o", "/tmp/o", "--batch_size", "8"]).batch_size == 8
    with pytest.raises(UsageError, match="float16"):
        parse_options(["a.wav", "-o", "/tmp/o", "--precision", "float16"])
