"""Shared fixtures: a tiny seeded model folder and an independent numpy separation reference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from stembeam.model.config import ModelConfig

# gcs_emulator, s3_emulator, loopback_only, postgres_url, postgres_db
pytest_plugins = ["tests.services"]

TINY = ModelConfig(name="tiny", stems=("vocals", "accompaniment"), T=64, F=64)


def save_tiny_model(folder: str, cfg: ModelConfig = TINY, seed: int = 0) -> str:
    """A seeded ``build_unet(cfg)`` saved as a model folder (model.keras + model.json)."""
    import keras

    from stembeam.model.checkpoint import write_model_folder
    from stembeam.model.unet import build_unet

    keras.utils.set_random_seed(seed)
    write_model_folder(build_unet(cfg), cfg, folder, f"seeded test model (seed {seed})")
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny"))


def unet_predict(model) -> Callable[[np.ndarray], np.ndarray]:
    """A Keras U-Net as a numpy function of (B, n, F, C) magnitudes, n any multiple of 64."""
    return lambda x: np.asarray(model.call(x, training=False))


def numpy_separate(wave: np.ndarray, predict, cfg: ModelConfig, context: int) -> np.ndarray:
    """Independent reference of the whole separation: ``(N, 2)`` -> ``(N, 2, S)``.

    ``predict``: (1, n, F, 2) float32 magnitudes, n any multiple of 64, -> (1, n, F, 2, S).
    Spleeter framing (frame k covers samples [k*step - L, k*step), periodic Hann), segments
    keeping Spleeter's T-frame cut, each but the first also fed the ``context`` frames before,
    ratio masks (exponent 2, eps 1e-10) zero above F, inverse STFT by weighted overlap-add
    normalised by the summed squared window.
    """
    L, step, T, F = cfg.frame_length, cfg.frame_step, cfg.T, cfg.F
    n = len(wave)
    n_frames = -(-(n + L) // step)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(L) / L)

    def frames_of(first: int, count: int) -> np.ndarray:  # (count, bins, 2) complex
        out = np.zeros((count, L // 2 + 1, 2), np.complex128)
        for i, k in enumerate(range(first, first + count)):
            lo = k * step - L
            piece = np.zeros((L, 2))
            a, b = max(lo, 0), min(lo + L, n)
            if b > a:
                piece[a - lo : b - lo] = wave[a:b]
            out[i] = np.fft.rfft(piece * window[:, None], axis=0)
        return out

    spec = frames_of(0, n_frames)
    # (first frame fed, first kept, end kept): segment k keeps [k T, (k + 1) T) and is fed from
    # `context` frames earlier (not before the track) to (k + 1) T
    segments = [
        (max(0, keep - context), keep, min(keep + T, n_frames)) for keep in range(0, n_frames, T)
    ]
    stems_spec = np.zeros(spec.shape + (len(cfg.stems),), np.complex128)
    for first, keep_start, keep_stop in segments:
        fed = frames_of(first, keep_start + T - first)
        est = predict(np.abs(fed[None, :, :F]).astype(np.float32))[0]
        power = est[keep_start - first : keep_stop - first].astype(np.float64) ** 2
        masks = (power + 1e-10 / len(cfg.stems)) / (power.sum(-1, keepdims=True) + 1e-10)
        full = np.zeros(masks.shape[:1] + (L // 2 + 1,) + masks.shape[2:])
        full[:, :F] = masks
        stems_spec[keep_start:keep_stop] = spec[keep_start:keep_stop][..., None] * full
    out = np.zeros((n_frames * step + L, 2, len(cfg.stems)))
    for k in range(n_frames):
        frame = np.fft.irfft(stems_spec[k], n=L, axis=0) * window[:, None, None]
        out[k * step : k * step + L] += frame  # offset L: index i is track sample i - L
    # steady-state normalisation: sum of squared periodic Hann at hop L/4 is 1.5 everywhere
    return (out[L : L + n] / 1.5).astype(np.float32)
