"""The fused spectral graph (STFT, U-Net, masks, inverse STFT in one TensorFlow function) against
the independent numpy separation reference and against the host path's numpy maths."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import pytest

from stembeam.model.fused import fused_separator
from stembeam.model.reconstruct import separate_waveform
from stembeam.model.segmentation import DEFAULT_CONTEXT
from stembeam.model.unet import batch_predictor
from tests.conftest import TINY, numpy_separate, unet_predict
from tests.test_reconstruct import music_like


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return keras.saving.load_model(os.path.join(tiny_model, "model.keras"), compile=False)


def test_matches_the_numpy_reference(tiny):
    # 3.3 s: several overlapping segments of T = 64 frames and a short last one
    x = music_like(145_000, seed=1)
    got = separate_waveform(
        x, None, TINY, "overlap", batch_size=3, fused=fused_separator(tiny, TINY)
    )
    want = numpy_separate(x, unet_predict(tiny), TINY, DEFAULT_CONTEXT)
    assert got.shape == want.shape == x.shape + (2,)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("segmentation", ["overlap", "spleeter"])
@pytest.mark.parametrize("residual", ["none", "last", "share"])
@pytest.mark.parametrize("extension", ["zeros", "average"])
def test_equals_the_host_path(tiny, segmentation, residual, extension):
    cfg = dataclasses.replace(TINY, mask_extension=extension)
    x = music_like(100_000, seed=2)
    predict = batch_predictor(tiny)
    host = separate_waveform(x, predict, cfg, segmentation, residual=residual)
    fused = fused_separator(tiny, cfg, extension, residual)
    graph = separate_waveform(x, None, cfg, segmentation, residual=residual, fused=fused)
    np.testing.assert_allclose(graph, host, atol=1e-5 * np.abs(host).max())
    if residual != "none":  # the stems sum to the mixture
        np.testing.assert_allclose(graph.sum(-1), x, atol=1e-5)


def test_refuses_what_it_cannot_do(tiny):
    with pytest.raises(ValueError, match="residual"):
        fused_separator(tiny, TINY, residual="all")
    with pytest.raises(ValueError, match="ratio masks only"):
        separate_waveform(
            np.zeros((50_000, 2), np.float32),
            None,
            TINY,
            postprocess="wiener",
            fused=fused_separator(tiny, TINY),
        )
