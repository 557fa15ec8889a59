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

from stembeam.transforms.inference import (
    CPU_BATCH_SIZE,
    GPU_BATCH_SIZE,
    BackgroundModel,
    StemModelHandler,
    default_batch_size,
)
from stembeam.transforms.records import Segment
from tests.conftest import TINY


def _segments(n: int, seed: int = 0) -> list[Segment]:
    rng = np.random.default_rng(seed)
    return [
        Segment(
            track=None,
            plan=None,
            is_last=False,
            info=None,
            started_at=0.0,
            magnitude=rng.uniform(0, 2, (TINY.T, TINY.F, TINY.channels)).astype("float32"),
        )
        for _ in range(n)
    ]


def test_batches_through_the_background_model(tiny_model):
    handler = StemModelHandler(tiny_model, batch_size=3, precision="float32")
    model = handler.load_model()
    assert isinstance(model, BackgroundModel)
    segments = _segments(3)
    out = list(handler.run_inference(segments, model))
    keras_model = keras.saving.load_model(os.path.join(tiny_model, "model.keras"), compile=False)
    expected = keras_model.predict_on_batch(np.stack([s.magnitude for s in segments]))
    for segment, estimate in zip(out, expected, strict=True):
        assert segment.magnitude is None and segment.error is None
        np.testing.assert_allclose(segment.estimates, estimate, rtol=1e-5, atol=1e-6)
    assert handler.batch_elements_kwargs()["max_batch_size"] == 3


def test_warm_up_runs_only_while_no_batch_waits():
    """``load(waiting)`` sees no batch waiting when the load ends before any batch asks, and a
    batch already waiting otherwise; ``load_s`` covers the load."""
    seen, loaded = [], threading.Event()

    def load(waiting):
        time.sleep(0.2)
        seen.append(waiting.is_set())
        loaded.set()
        return np.negative

    early = BackgroundModel(load)
    assert early.get() is np.negative and seen == [True]  # asked during the load
    assert 0.2 <= early.load_s < 5
    loaded.clear()
    idle = BackgroundModel(load)
    assert loaded.wait(10) and seen == [True, False]
    assert idle.get() is np.negative


def test_load_failure_fails_the_first_batch(tmp_path):
    handler = StemModelHandler(str(tmp_path / "no-such-model"), precision="float32")
    model = handler.load_model()  # returns at once; the thread fails
    with pytest.raises(ValueError, match="unknown model"):
        handler.run_inference(_segments(1), model)


def test_default_batch_size_follows_the_machine():
    nvidia = os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus")
    assert default_batch_size() == (GPU_BATCH_SIZE if nvidia else CPU_BATCH_SIZE)
    handler = StemModelHandler("spleeter:2stems")
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
