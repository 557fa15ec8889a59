"""Tests for the `stembeam train` / `stembeam make-dataset` entry points' argument handling."""

from __future__ import annotations

import json
import shutil

import pytest

from stembeam.model.config import spleeter_config
from stembeam.pipeline.train_cli import make_dataset_main, training_config
from tests.midi_songs import make_song


def test_training_config_overrides_preset():
    cfg = training_config("4stems", None, T=64, F=128, frame_length=1024, frame_step=256)
    base = spleeter_config("4stems")
    assert (cfg.T, cfg.F, cfg.frame_length, cfg.frame_step) == (64, 128, 1024, 256)
    assert cfg.stems == base.stems and cfg.encoder_activation == base.encoder_activation
    assert cfg.name != base.name


def test_training_config_defaults_to_init_model_then_4stems():
    two = spleeter_config("2stems")
    assert training_config(None, two, None, None, None, None) == two
    assert training_config(None, None, None, None, None, None) == spleeter_config("4stems")


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="needs fluidsynth")
def test_make_dataset_writes_musdb_layout(tmp_path):
    midi = tmp_path / "song.mid"
    midi.write_bytes(make_song("song").data)
    out = tmp_path / "data"
    assert (
        make_dataset_main(
            [
                "--output",
                str(out),
                "--tracks",
                "1",
                "--seed",
                "1",
                "--duration",
                "1",
                "--midi",
                str(midi),
            ]
        )
        == 0
    )
    (track,) = sorted(out.glob("*/*"))
    assert track.parent.name == "train"
    assert sorted(p.name for p in track.iterdir()) == [
        "bass.wav",
        "drums.wav",
        "metadata.json",
        "mixture.wav",
        "other.wav",
        "vocals.wav",
    ]
    assert json.loads((track / "metadata.json").read_text())["source"] == "song"
