"""Tests for model/training/train.py on a tiny configuration and synthetic multitracks.

The multitracks are generated here (sine vocals with vibrato, noise-burst drums, low sine bass,
square-wave other) in the MUSDB18-HQ layout, so training has something separable to learn.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
import soundfile
import tensorflow as tf

from stembeam.model.config import ModelConfig
from stembeam.model.evaluation import global_sdr
from stembeam.model.registry import load_model
from stembeam.model.training.train import (
    TrainSettings,
    examples,
    find_tracks,
    init_from,
    localize,
    spleeter_l1_loss,
    train,
)
from stembeam.model.unet import build_unet

RATE = 44100
TINY = ModelConfig(
    name="tiny",
    stems=("vocals", "accompaniment"),
    frame_length=512,
    frame_step=128,
    T=64,
    F=64,
    encoder_activation="leaky_relu",
    decoder_activation="relu",
)
SETTINGS = TrainSettings(
    steps=24,
    batch_size=2,
    learning_rate=1e-3,
    checkpoint_every=8,
    validation_tracks=1,
    validation_seconds=1.0,
)


def _write_track(folder: pathlib.Path, rng: np.random.Generator, seconds: float = 2.0) -> None:
    t = np.arange(int(seconds * RATE)) / RATE
    drums = np.zeros_like(t)
    for k in range(0, len(t), RATE // 4):
        n = min(3000, len(t) - k)
        drums[k : k + n] += rng.normal(0.0, 0.5, n) * np.exp(-np.arange(n) / 500.0)
    stems = {
        "vocals": 0.3 * np.sin(2 * np.pi * rng.uniform(300, 600) * t + 3 * np.sin(10 * np.pi * t)),
        "drums": drums,
        "bass": 0.4 * np.sin(2 * np.pi * rng.uniform(50, 90) * t),
        "other": 0.2 * np.sign(np.sin(2 * np.pi * rng.uniform(150, 250) * t)),
    }
    folder.mkdir(parents=True)
    for name, audio in stems.items():
        soundfile.write(
            folder / f"{name}.wav", np.stack([audio, 0.8 * audio], 1), RATE, subtype="FLOAT"
        )
    mixture = sum(stems.values())
    soundfile.write(
        folder / "mixture.wav", np.stack([mixture, 0.8 * mixture], 1), RATE, subtype="FLOAT"
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("musdb")
    rng = np.random.default_rng(0)
    for split, names in (("train", ("a", "b", "c")), ("test", ("d",))):
        for name in names:
            _write_track(root / split / name, rng)
    return root


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "tiny"
    result = train(str(data_root), TINY, str(out), SETTINGS)
    return out, result


def test_spleeter_l1_loss_matches_numpy():
    rng = np.random.default_rng(1)
    est, tgt = rng.random((2, 3, 4, 2, 3)), rng.random((2, 3, 4, 2, 3))
    loss, per_stem = spleeter_l1_loss(tf.constant(est), tf.constant(tgt))
    expected = [np.abs(est[..., s] - tgt[..., s]).mean() for s in range(3)]
    np.testing.assert_allclose(per_stem.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(float(loss), sum(expected), rtol=1e-6)


def test_sdr_of_known_noise_level():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(44100, 2))
    noise = rng.normal(size=(44100, 2))
    noise *= np.sqrt(np.sum(reference**2) / np.sum(noise**2)) / 10.0  # 20 dB below
    assert global_sdr(reference, reference + noise) == pytest.approx(20.0, abs=1e-9)


def test_examples_mixture_is_sum_of_augmented_stems(data_root):
    cfg = TINY
    tracks = find_tracks(str(data_root), "train", cfg.stems)
    assert [t.name for t in tracks] == ["a", "b", "c"]
    assert tracks[0].stems["accompaniment"][0].endswith("drums.wav")  # drums + bass + other
    mix, stems = next(examples(tracks, cfg, SETTINGS, np.random.default_rng(0)))
    assert mix.shape == (cfg.T, cfg.F, 2) and stems.shape == (cfg.T, cfg.F, 2, 2)
    # |sum of stems| <= sum of |stems| bin by bin, and the stems are not all silent
    assert np.all(mix <= stems.sum(axis=-1) * (1 + 1e-5) + 1e-5)
    assert np.all(stems.reshape(-1, 2).max(axis=0) > 0)


@pytest.mark.slow  # trains the tiny model (~1 min of CPU)
def test_loss_decreases(trained):
    _, result = trained
    assert result.step == SETTINGS.steps and len(result.losses) == SETTINGS.steps
    assert np.mean(result.losses[-6:]) < 0.9 * np.mean(result.losses[:6])


@pytest.mark.slow  # trains the tiny model (~1 min of CPU)
def test_export_loads_in_registry_with_right_shape(trained):
    out, result = trained
    loaded = load_model(str(out))
    assert loaded.config == TINY
    magnitude = np.random.default_rng(3).random((1, TINY.T, TINY.F, 2)).astype(np.float32)
    estimates = np.asarray(loaded.model.predict_on_batch(magnitude))
    assert estimates.shape == (1, TINY.T, TINY.F, 2, 2)
    # mask * input with masks in [0, 1]
    assert np.all(estimates >= 0) and np.all(estimates <= magnitude[..., None] * (1 + 1e-6))
    validation = json.loads((out / "validation.json").read_text())
    assert validation["tracks"] == ["d"] and set(validation["median_global_sdr_db"]) == set(
        TINY.stems
    )
    assert validation["median_global_sdr_db"] == pytest.approx(result.validation)


@pytest.mark.slow  # trains the tiny model (~1 min of CPU)
def test_resume_continues_from_saved_step(trained, data_root):
    out, first = trained
    with pytest.raises(FileExistsError):
        train(str(data_root), TINY, str(out), SETTINGS)
    more = train(
        str(data_root),
        TINY,
        str(out),
        dataclasses.replace(SETTINGS, steps=SETTINGS.steps + 4),
        resume=True,
    )
    assert more.step == SETTINGS.steps + 4 and len(more.losses) == 4
    # restored weights: the resumed loss is nowhere near the loss of fresh weights
    assert np.mean(more.losses) < np.mean(first.losses[:4])
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logged if "loss" in r]
    assert steps == list(range(1, SETTINGS.steps + 5))


def test_init_copies_shared_stems_only():
    two = build_unet(TINY)
    four = build_unet(
        ModelConfig(
            name="tiny4",
            stems=("vocals", "drums", "bass", "other"),
            frame_length=512,
            frame_step=128,
            T=64,
            F=64,
            encoder_activation="leaky_relu",
            decoder_activation="relu",
        )
    )
    drums_before = four.get_layer("drums_enc1_conv").get_weights()[0].copy()
    assert init_from(four, two) == ["vocals"]
    np.testing.assert_array_equal(
        four.get_layer("vocals_dec3_deconv").get_weights()[0],
        two.get_layer("vocals_dec3_deconv").get_weights()[0],
    )
    np.testing.assert_array_equal(four.get_layer("drums_enc1_conv").get_weights()[0], drums_before)


@pytest.mark.slow  # trains the tiny model (~1 min of CPU)
def test_fine_tune_starts_from_init_model(trained, data_root, tmp_path):
    out, first = trained
    tuned = train(
        str(data_root),
        TINY,
        str(tmp_path / "tuned"),
        dataclasses.replace(SETTINGS, steps=2),
        init=str(out),
    )
    assert tuned.initialized_stems == ["accompaniment", "vocals"]
    assert np.mean(tuned.losses) < np.mean(first.losses[:4])


def test_localize_copies_remote_data_into_the_configured_cache(gcs_emulator, tmp_path, monkeypatch):
    """A gs:// dataset lands under $STEMBEAM_CACHE/datasets, once; local roots stay as they are."""
    from apache_beam.io.filesystems import FileSystems

    root = gcs_emulator.bucket("data")
    payload = {"train/a/vocals.wav": b"RIFF-one", "test/b/mixture.wav": b"RIFF-two"}
    for name, content in payload.items():
        with FileSystems.create(f"{root}/musdb/{name}") as out:
            out.write(content)
    monkeypatch.setenv("STEMBEAM_CACHE", str(tmp_path / "cache"))
    local = localize(f"{root}/musdb")
    assert pathlib.Path(local).parent == tmp_path / "cache" / "datasets"
    assert {
        str(p.relative_to(local)): p.read_bytes() for p in pathlib.Path(local).rglob("*.wav")
    } == payload
    FileSystems.delete([f"{root}/musdb/train/a/vocals.wav"])  # later calls use the copy
    assert localize(f"{root}/musdb") == local
    assert (pathlib.Path(local) / "train/a/vocals.wav").read_bytes() == b"RIFF-one"
    assert localize(str(tmp_path)) == str(tmp_path)
