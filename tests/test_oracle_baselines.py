"""Tests for the oracle baselines of bench/oracle_baselines.py."""

from __future__ import annotations

import numpy as np

from bench.oracle_baselines import oracle_irm
from stembeam.model.evaluation import global_sdr


def _stems(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(44100 * seconds)) / 44100
    low = 0.5 * np.sin(2 * np.pi * 110 * t)
    high = 0.3 * np.sin(2 * np.pi * 3520 * t)
    return np.stack([np.stack([low, low], 1), np.stack([high, -high], 1)], -1).astype(np.float32)


def test_irm_estimates_sum_to_mixture():
    refs = _stems() + np.random.default_rng(0).normal(0, 0.05, (44100, 2, 2)).astype(np.float32)
    estimates = oracle_irm(refs)
    np.testing.assert_allclose(estimates.sum(-1), refs.sum(-1), atol=1e-4)


def test_irm_separates_disjoint_tones():
    refs = _stems()
    estimates = oracle_irm(refs)
    for s in range(2):
        assert global_sdr(refs[..., s], estimates[..., s]) > 30.0


def test_irm_zero_above_F_removes_high_tone():
    refs = _stems()
    estimates = oracle_irm(refs, F=64)  # 64 bins of 4096 at 44.1 kHz: below ~690 Hz
    assert np.sqrt(np.mean(estimates[..., 1] ** 2)) < 1e-3
    assert global_sdr(refs[..., 0], estimates[..., 0]) > 30.0
