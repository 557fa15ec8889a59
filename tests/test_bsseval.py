"""model.evaluation against museval itself (the independent reference), to 0.01 dB."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil

import museval
import numpy as np
import pytest
import simplejson
from scipy.signal import lfilter

from stembeam.model import evaluation

RATE = 44100
TOL_DB = 0.01


def _museval(references: np.ndarray, estimates: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    sdr, isr, sir, sar = museval.evaluate(references, estimates, **kwargs)
    return {"sdr": sdr, "isr": isr, "sir": sir, "sar": sar}


def _assert_agree(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    for name in evaluation.METRICS:
        np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(theirs[name]), err_msg=name)
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=TOL_DB, err_msg=name)


def _generated(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(3, N, 2) references (coloured noise, tones over a noise floor, a source with a silent
    stretch) and estimates mixing filtered references, leakage and noise, 1000 samples short."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n)[:, None] / RATE
    noise = rng.standard_normal((3, n, 2))
    refs = np.empty((3, n, 2))
    refs[0] = lfilter([1.0], [1.0, -1.6, 0.8], noise[0], axis=0)  # resonant low-pass noise
    refs[1] = (
        np.sin(2 * np.pi * 220 * t + [0, 0.3])
        + 0.5 * np.sin(2 * np.pi * 1375 * t)
        + 1e-3 * noise[1]
    )
    refs[2] = lfilter([1.0, -0.95], [1.0], noise[2], axis=0)  # high-pass noise
    refs[2, int(1.5 * RATE) : int(3.2 * RATE)] = 0.0  # covers window 2 entirely: NaN there
    ests = refs + 0.1 * refs[[1, 2, 0]] + 0.05 * rng.standard_normal(refs.shape)
    ests[0] = lfilter([0.7, 0.2, 0.1], [1.0], ests[0], axis=0)
    ests[1, :, 0] += 0.3 * refs[1, :, 1]  # spatial distortion
    return refs, ests[:, :-1000]


@pytest.fixture(scope="module")
def generated_scores() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(ours, museval's) scores of 5 s of generated signals, computed once for this module."""
    refs, ests = _generated(5.0)
    return evaluation.evaluate(refs, ests), _museval(refs, ests)


def test_generated_signals_match_museval(generated_scores):
    ours, theirs = generated_scores
    assert ours["sdr"].shape == (3, 5)
    assert np.isnan(ours["sdr"][:, 2]).all() and not np.isnan(ours["sdr"][:, [0, 1, 3, 4]]).any()
    _assert_agree(ours, theirs)


def test_overlapping_windows_and_float32_match_museval():
    refs, ests = _generated(3.0, seed=1)
    refs, ests = refs[:2].astype(np.float32), ests[:2].astype(np.float32)
    _assert_agree(
        evaluation.evaluate(refs, ests, win=30000, hop=12000),
        _museval(refs, ests, win=30000, hop=12000),
    )


def test_window_longer_than_track_is_one_window():
    refs, ests = _generated(1.2, seed=2)
    ours = evaluation.evaluate(refs[:2], ests[:2], win=10 * RATE, hop=10 * RATE)
    assert ours["sdr"].shape == (2, 1)
    _assert_agree(ours, _museval(refs[:2], ests[:2], win=10 * RATE, hop=10 * RATE))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="stempeg needs ffmpeg to decode")
def test_real_music_excerpt_matches_museval():
    import stempeg

    path = glob.glob(os.path.join(os.path.dirname(stempeg.__file__), "data", "*.stem.mp4"))[0]
    stems, rate = stempeg.read_stems(path)  # (5, N, 2): mixture, drums, bass, other, vocals
    assert rate == RATE
    mixture = stems[0]
    refs = np.stack([stems[4], stems[1], stems[2] + stems[3]])  # vocals, drums, bass+other
    rng = np.random.default_rng(3)
    ests = 0.8 * refs + 0.15 * mixture + 0.01 * rng.standard_normal(refs.shape)
    ests[1] = lfilter([0.6, 0.3], [1.0], ests[1], axis=0)
    ours = evaluation.evaluate(refs, ests)
    theirs = _museval(refs, ests)
    assert ours["sdr"].shape[1] == refs.shape[1] // RATE
    _assert_agree(ours, theirs)


def test_medians_and_json_match_museval_trackstore(generated_scores):
    ours, theirs = generated_scores
    names = ["a", "b", "c"]
    store = museval.TrackStore(track_name="t", win=1.0, hop=1.0)
    for i, name in enumerate(names):
        store.add_target(name, {k.upper(): theirs[k][i].tolist() for k in evaluation.METRICS})
    expected = store.df.groupby(["target", "metric"])["score"].median()
    medians = evaluation.median_metrics(ours)
    for i, name in enumerate(names):
        for metric in evaluation.METRICS:
            assert medians[metric][i] == pytest.approx(expected[(name, metric.upper())], abs=TOL_DB)

    written = json.loads(evaluation.museval_json(ours, names))
    reference = simplejson.loads(store.json, allow_nan=True)
    assert [t["name"] for t in written["targets"]] == names
    for got, want in zip(written["targets"], reference["targets"], strict=True):
        assert len(got["frames"]) == len(want["frames"])
        for f_got, f_want in zip(got["frames"], want["frames"], strict=True):
            assert f_got["time"] == f_want["time"] and f_got["duration"] == f_want["duration"]
            for key, value in f_want["metrics"].items():
                if math.isnan(float(value)):
                    assert math.isnan(f_got["metrics"][key])
                else:
                    assert f_got["metrics"][key] == pytest.approx(float(value), abs=TOL_DB)
    store.scores = written  # the schema museval validates its own output with
    store.validate()


def test_silent_reference_is_rejected_like_museval():
    refs, ests = _generated(1.0)
    refs[1] = 0.0
    with pytest.raises(ValueError, match="silent"):
        museval.evaluate(refs, ests)
    with pytest.raises(ValueError, match=r"reference source\(s\) \[1\] are silent"):
        evaluation.evaluate(refs, ests)
