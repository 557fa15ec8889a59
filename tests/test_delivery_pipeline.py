"""Delivery options through the real separate job (FnApiRunner, tiny seeded model): every output
format decoded back by FFmpeg (PyAV) with the input's duration and two channels, stems that sum
to the mixture by default, the naming template and stem subsets."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
import soundfile

from stembeam.pipeline.separate import run
from tests.audio_files import tone, write
from tests.test_delivery import decode

SECONDS = 3.0


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("delivery")
    write(str(folder / "in" / "song.wav"), tone(SECONDS, seed=4) * 0.9, subtype="FLOAT")
    return str(folder)


def separate(catalog: str, output: str, model: str, *extra: str) -> dict:
    out = run(
        [
            "--input",
            os.path.join(catalog, "in", "*.wav"),
            "--output",
            output,
            "--model",
            model,
            "--report",
            "none",
            "--direct_num_workers",
            "1",
            *extra,
        ]
    )
    db = sqlite3.connect(os.path.join(output, "results.sqlite"))
    status, stems = db.execute(
        "SELECT status, stems FROM results WHERE run_id = ?", (out["run_id"],)
    ).fetchone()
    assert status == "ok"
    return json.loads(stems)


@pytest.mark.parametrize(
    "extra,ext,rate",
    [
        ((), "wav", 44100),
        (("--bit_depth", "16"), "wav", 44100),
        (("--format", "flac"), "flac", 44100),
        (("--format", "aiff", "--bit_depth", "16"), "aiff", 44100),
        (("--format", "mp3", "--bitrate", "192k"), "mp3", 44100),
        (("--format", "ogg"), "ogg", 44100),
        (("--format", "opus"), "opus", 48000),
    ],
)
def test_every_format_decodes_back_with_the_input_duration(
    catalog, tmp_path, tiny_model, extra, ext, rate
):
    stems = separate(catalog, str(tmp_path / "out"), tiny_model, *extra)
    assert sorted(stems) == ["accompaniment", "vocals"]
    for uri in stems.values():
        assert uri.endswith(f".{ext}") and os.path.isabs(uri)
        samples, file_rate, channels = decode(uri)
        assert (file_rate, channels) == (rate, 2)
        # lossy codecs add a few ms of encoder delay/padding; PCM is exact
        tolerance = 0 if ext in ("wav", "flac", "aiff") else 0.06
        assert abs(len(samples) / file_rate - SECONDS) <= tolerance + 1e-9


def test_default_stems_sum_to_the_mixture(catalog, tmp_path, tiny_model):
    stems = separate(catalog, str(tmp_path / "out"), tiny_model)
    mixture, _ = soundfile.read(os.path.join(catalog, "in", "song.wav"), dtype="float32")
    total = sum(soundfile.read(uri, dtype="float32")[0] for uri in stems.values())
    error = np.abs(total - mixture).max()
    assert error < 1e-5, error  # float32 rounding: the residual (above F too) is shared out
    # and without it, what lies above the tiny model's F bins is missing from the sum
    plain = separate(catalog, str(tmp_path / "none"), tiny_model, "--residual", "none")
    total = sum(soundfile.read(uri, dtype="float32")[0] for uri in plain.values())
    assert np.abs(total - mixture).max() > 100 * error


def test_template_and_stem_subset(catalog, tmp_path, tiny_model):
    full = separate(catalog, str(tmp_path / "full"), tiny_model)
    out = str(tmp_path / "subset")
    stems = separate(
        catalog,
        out,
        tiny_model,
        "--stems",
        "vocals,rest",
        "--filename_template",
        "{stem}/{track}.{ext}",
    )
    assert stems == {
        "vocals": os.path.join(out, "vocals", "song.wav"),
        "rest": os.path.join(out, "rest", "song.wav"),
    }
    for name, model_stem in (("vocals", "vocals"), ("rest", "accompaniment")):
        got = soundfile.read(stems[name], dtype="float32")[0]
        want = soundfile.read(full[model_stem], dtype="float32")[0]
        np.testing.assert_allclose(got, want, atol=1e-6)
    only = separate(catalog, str(tmp_path / "only"), tiny_model, "--stems", "vocals")
    assert list(only) == ["vocals"]
    assert sorted(os.listdir(tmp_path / "only" / "song")) == ["vocals.wav"]
