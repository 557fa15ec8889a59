"""Tests for the MIDI-rendered MUSDB18-HQ style dataset (model/training/dataset.py).

Songs are generated here with mido, so the instrument families each one holds are known
independently of the renderer's channel classification.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import struct

import numpy as np
import pytest
import soundfile

from stembeam.model.training import dataset
from stembeam.model.training.dataset import MidiSource, render_dataset, render_track, wad_midi_lumps
from tests.midi_songs import make_song

pytestmark = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not pathlib.Path(dataset.DEFAULT_SOUNDFONT).exists(),
    reason="needs fluidsynth and fluid-soundfont-gm",
)


def _digest(folder: pathlib.Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            sha.update(str(path.relative_to(folder)).encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dataset")
    render_dataset(
        [make_song("full"), make_song("nobass", bass=False)],
        out,
        n_tracks=2,
        seed=7,
        duration_s=2.5,
    )
    return out


def test_layout_and_stems_sum_to_mixture(rendered):
    tracks = sorted(rendered.glob("*/*"))
    assert [t.parent.name for t in tracks] == ["test", "train"]
    for track in tracks:
        audio = {}
        for name in ("mixture", "vocals", "drums", "bass", "other"):
            audio[name], rate = soundfile.read(track / f"{name}.wav", dtype="float64")
            assert rate == 44100 and audio[name].shape == (round(2.5 * 44100), 2)
        total = audio["vocals"] + audio["drums"] + audio["bass"] + audio["other"]
        np.testing.assert_allclose(audio["mixture"], total, atol=1e-6)
        assert np.max(np.abs(audio["mixture"])) <= 0.9 + 1e-6


def test_same_seed_same_bytes_other_seed_differs(rendered, tmp_path):
    songs = [make_song("full"), make_song("nobass", bass=False)]
    render_dataset(songs, tmp_path / "again", n_tracks=2, seed=7, duration_s=2.5)
    assert _digest(tmp_path / "again") == _digest(rendered)
    render_dataset(songs, tmp_path / "other", n_tracks=2, seed=8, duration_s=2.5)
    assert _digest(tmp_path / "other") != _digest(rendered)


@pytest.mark.parametrize("bass", [True, False])
def test_stem_non_silent_exactly_where_family_exists(bass):
    stems, meta = render_track(
        make_song("s", bass=bass), np.random.default_rng(3), duration_s=2.0, vocals_probability=1.0
    )
    expected = {"vocals", "drums", "other"} | ({"bass"} if bass else set())
    assert set(meta["present"]) == expected
    for name, audio in stems.items():
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        if name in expected:
            assert rms > 1e-3, name
        else:
            assert not np.any(audio), name
    # vocals are the flute line re-voiced with a GM voice program, other keeps the piano family
    assert set(meta["stems"]["vocals"]["programs"]) == {"1"}
    assert set(meta["stems"]["vocals"]["programs"].values()) <= set(dataset.VOICE_PROGRAMS)
    assert all(p < 8 for p in meta["stems"]["other"]["programs"].values())


def test_wad_lumps_yield_only_midi(tmp_path):
    midi = make_song("x").data
    lumps = [(b"D_RUNNIN", midi), (b"DEMO1", b"not music")]
    directory_offset = 12 + sum(len(d) for _, d in lumps)
    body, table, position = b"", b"", 12
    for name, data in lumps:
        table += struct.pack("<ii8s", position, len(data), name)
        body += data
        position += len(data)
    wad = tmp_path / "tiny.wad"
    wad.write_bytes(struct.pack("<4sii", b"PWAD", len(lumps), directory_offset) + body + table)
    assert wad_midi_lumps(wad) == [MidiSource("tiny D_RUNNIN", midi)]
