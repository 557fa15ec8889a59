"""Tests for the MIDI-rendered MUSDB18-HQ style dataset (model/dataset_render.py).

Songs are generated here with mido, so the instrument families each one holds are known
independently of the renderer's channel classification.
"""
from __future__ import annotations

import hashlib
import io
import pathlib
import shutil
import struct

import mido
import numpy as np
import pytest
import soundfile

from model import dataset_render
from model.dataset_render import MidiSource, render_dataset, render_track, wad_midi_lumps

pytestmark = pytest.mark.skipif(
    shutil.which("fluidsynth") is None
    or not pathlib.Path(dataset_render.DEFAULT_SOUNDFONT).exists(),
    reason="needs fluidsynth and fluid-soundfont-gm")


def _song(name: str, bass: bool = True, seconds: float = 6.0) -> MidiSource:
    """A 120 bpm song: drums (ch 10), an optional bass (program 33), a monophonic flute
    melody around C5 (program 73) and piano chords around C4 (program 0)."""
    track = mido.MidiTrack()
    events: list[tuple[int, mido.Message]] = []
    parts = [(1, 73), (2, 0)] + ([(0, 33)] if bass else [])
    for channel, program in parts:
        events.append((0, mido.Message("program_change", channel=channel, program=program)))
    beats = int(seconds * 2)
    for beat in range(beats):
        t = beat * 480
        notes = [(9, 36 if beat % 2 == 0 else 38, 240), (9, 42, 120),
                 (1, 72 + [0, 2, 4, 5, 7, 5, 4, 2][beat % 8], 400)]
        notes += [(2, 60 + k, 460) for k in (0, 4, 7)]
        if bass:
            notes.append((0, 36 + [0, 5, 7, 5][beat % 4], 400))
        for channel, note, length in notes:
            events.append((t, mido.Message("note_on", channel=channel, note=note, velocity=90)))
            events.append((t + length, mido.Message("note_off", channel=channel, note=note)))
    last = 0
    for tick, msg in sorted(events, key=lambda e: e[0]):
        track.append(msg.copy(time=tick - last))
        last = tick
    midi = mido.MidiFile(type=0, ticks_per_beat=480)
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return MidiSource(name, buffer.getvalue())


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
    render_dataset([_song("full"), _song("nobass", bass=False)], out, n_tracks=2, seed=7,
                   duration_s=2.5)
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
    songs = [_song("full"), _song("nobass", bass=False)]
    render_dataset(songs, tmp_path / "again", n_tracks=2, seed=7, duration_s=2.5)
    assert _digest(tmp_path / "again") == _digest(rendered)
    render_dataset(songs, tmp_path / "other", n_tracks=2, seed=8, duration_s=2.5)
    assert _digest(tmp_path / "other") != _digest(rendered)


@pytest.mark.parametrize("bass", [True, False])
def test_stem_non_silent_exactly_where_family_exists(bass):
    stems, meta = render_track(_song("s", bass=bass), np.random.default_rng(3), duration_s=2.0,
                               vocals_probability=1.0)
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
    assert set(meta["stems"]["vocals"]["programs"].values()) <= set(dataset_render.VOICE_PROGRAMS)
    assert all(p < 8 for p in meta["stems"]["other"]["programs"].values())


def test_wad_lumps_yield_only_midi(tmp_path):
    midi = _song("x").data
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
