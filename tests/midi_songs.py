"""Generated General MIDI songs for tests: the instrument families each holds are known."""

from __future__ import annotations

import io

import mido

from stembeam.model.training.dataset import MidiSource


def make_song(name: str, bass: bool = True, seconds: float = 6.0) -> MidiSource:
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
        notes = [
            (9, 36 if beat % 2 == 0 else 38, 240),
            (9, 42, 120),
            (1, 72 + [0, 2, 4, 5, 7, 5, 4, 2][beat % 8], 400),
        ]
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
