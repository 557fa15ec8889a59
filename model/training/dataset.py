"""Render a MUSDB18-HQ style multitrack dataset from General MIDI songs with fluidsynth.

The recipe follows Slakh2100: each MIDI channel of a real song is assigned to a stem by its
instrument family (channel 10 -> drums, GM programs 32-39 -> bass, one lead melody line ->
vocals, everything else -> other), each stem is re-voiced with a random program of the same
family, rendered on its own with fluidsynth and a GM soundfont, given random effects and a random
level, and the mixture is the exact sum of the stems.

Vocals are a sung-voice stand-in: the song's lead line (an existing choir/voice channel, else the
highest mostly-monophonic melodic channel) is played with a GM voice program (Choir Aahs, Voice
Oohs, Synth Voice, Lead 6 "voice") with vibrato.

Output layout (MUSDB18-HQ): ``<output_dir>/{train,test}/<track name>/{mixture,vocals,drums,bass,
other}.wav`` as 44.1 kHz stereo float32 WAV, plus ``metadata.json`` describing how each track was
made. Everything is a function of the seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Sequence

import mido
import numpy as np
import scipy.io.wavfile
import scipy.signal
import soundfile

from stembeam.model.config import SAMPLE_RATE

STEMS = ("vocals", "drums", "bass", "other")
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
DEFAULT_MIDI_SOURCES = (
    "/usr/share/games/doom/freedoom1.wad",
    "/usr/share/games/doom/freedoom2.wad",
    "/usr/share/planetblupi/music",
)
DRUM_CHANNEL = 9
BASS_PROGRAMS = range(32, 40)
VOICE_PROGRAMS = (52, 53, 54, 85)  # Choir Aahs, Voice Oohs, Synth Voice, Lead 6 (voice)
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)  # kits in FluidR3_GM's bank 128
_TICKS_PER_SECOND = 1920  # ticks_per_beat 960 at the default tempo of 120 bpm
_CHANNEL_STATE = ("control_change", "pitchwheel")


@dataclasses.dataclass(frozen=True)
class MidiSource:
    """One MIDI song: a display name and the Standard MIDI File bytes."""

    name: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class _Event:
    time: float  # seconds from the song start
    message: mido.Message


def wad_midi_lumps(path: str | os.PathLike) -> list[MidiSource]:
    """The Standard MIDI File lumps (``MThd`` header) of a Doom WAD such as freedoom2.wad."""
    data = pathlib.Path(path).read_bytes()
    magic, count, offset = struct.unpack_from("<4sii", data, 0)
    if magic not in (b"IWAD", b"PWAD"):
        raise ValueError(f"{path} is not a Doom WAD (magic {magic!r})")
    lumps = []
    for i in range(count):
        start, size, raw = struct.unpack_from("<ii8s", data, offset + 16 * i)
        if data[start : start + 4] == b"MThd":
            name = raw.rstrip(b"\0").decode("ascii", "replace")
            lumps.append(
                MidiSource(f"{pathlib.Path(path).stem} {name}", data[start : start + size])
            )
    return lumps


def discover_midi_sources(
    paths: Iterable[str | os.PathLike] = DEFAULT_MIDI_SOURCES,
) -> list[MidiSource]:
    """MIDI songs from ``.mid``/``.midi`` files, folders of them, and Doom WADs.

    Missing paths are skipped; the result is sorted by name so it does not depend on
    directory listing order.
    """
    sources: list[MidiSource] = []
    for raw in paths:
        path = pathlib.Path(raw)
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.suffix.lower() in (".mid", ".midi")]
            sources += [MidiSource(p.stem, p.read_bytes()) for p in files]
        elif path.suffix.lower() == ".wad" and path.exists():
            sources += wad_midi_lumps(path)
        elif path.exists():
            sources.append(MidiSource(path.stem, path.read_bytes()))
    return sorted(sources, key=lambda s: s.name)


def _parse(source: MidiSource) -> list[_Event]:
    """Channel messages of a song with absolute times in seconds (tempo map applied)."""
    midi = mido.MidiFile(file=io.BytesIO(source.data))
    events, now = [], 0.0
    for message in midi:
        now += message.time
        if not message.is_meta and hasattr(message, "channel"):
            events.append(_Event(now, message.copy(time=0)))
    return events


def _channel_programs(events: Sequence[_Event]) -> dict[int, int]:
    """Program of each channel that plays notes: its first program change, else 0."""
    programs: dict[int, int] = {}
    playing: set[int] = set()
    for event in events:
        msg = event.message
        if msg.type == "program_change":
            programs.setdefault(msg.channel, msg.program)
        elif msg.type == "note_on" and msg.velocity > 0:
            playing.add(msg.channel)
    return {ch: programs.get(ch, 0) for ch in sorted(playing)}


def _lead_channel(
    events: Sequence[_Event], candidates: Iterable[int], programs: dict[int, int]
) -> int | None:
    """The channel that best passes for a vocal line, or None.

    A channel already playing a voice program wins; otherwise the channel with the most notes
    among those that are mostly monophonic (under 25 % of notes start over a sounding note)
    and sit in a singing range (mean pitch 55-84).
    """
    candidates = list(candidates)
    voiced = [ch for ch in candidates if programs[ch] in VOICE_PROGRAMS]
    count = {ch: 0 for ch in candidates}
    overlapped = dict(count)
    pitch_sum = dict(count)
    sounding: dict[int, set[int]] = {ch: set() for ch in candidates}
    for event in events:
        msg = event.message
        if msg.type not in ("note_on", "note_off") or msg.channel not in count:
            continue
        if msg.type == "note_on" and msg.velocity > 0:
            count[msg.channel] += 1
            pitch_sum[msg.channel] += msg.note
            overlapped[msg.channel] += bool(sounding[msg.channel])
            sounding[msg.channel].add(msg.note)
        else:
            sounding[msg.channel].discard(msg.note)
    if voiced:
        return max(voiced, key=lambda ch: count[ch])
    melodic = [
        ch
        for ch in candidates
        if count[ch] >= 8
        and overlapped[ch] < 0.25 * count[ch]
        and 55 <= pitch_sum[ch] / count[ch] <= 84
    ]
    return max(melodic, key=lambda ch: count[ch]) if melodic else None


def assign_stems(events: Sequence[_Event], with_vocals: bool = True) -> dict[int, str]:
    """Stem of each note-playing channel: ``{channel: 'vocals'|'drums'|'bass'|'other'}``."""
    programs = _channel_programs(events)
    stems = {}
    for channel, program in programs.items():
        if channel == DRUM_CHANNEL:
            stems[channel] = "drums"
        elif program in BASS_PROGRAMS:
            stems[channel] = "bass"
        else:
            stems[channel] = "other"
    if with_vocals:
        lead = _lead_channel(events, [ch for ch, s in stems.items() if s == "other"], programs)
        if lead is not None:
            stems[lead] = "vocals"
    return stems


def _random_program(stem: str, original: int, rng: np.random.Generator) -> int:
    """A random program of the same family: a GM kit, a bass, a voice, or the same 8-group."""
    if stem == "drums":
        return int(rng.choice(DRUM_KITS))
    if stem == "bass":
        return int(rng.choice(list(BASS_PROGRAMS)))
    if stem == "vocals":
        return int(rng.choice(VOICE_PROGRAMS))
    group = [p for p in range(original // 8 * 8, original // 8 * 8 + 8) if p not in VOICE_PROGRAMS]
    return int(rng.choice(group))


def _notes_in(events: Sequence[_Event], channels: set[int], start: float, stop: float) -> int:
    return sum(
        1
        for e in events
        if start <= e.time < stop
        and e.message.type == "note_on"
        and e.message.velocity > 0
        and e.message.channel in channels
    )


def _stem_midi(
    events: Sequence[_Event],
    channels: dict[int, int],
    start: float,
    stop: float,
    transpose: int,
    vibrato: int,
) -> bytes:
    """A type-0 MIDI file of ``channels`` ({channel: program}) over [start, stop) seconds.

    Controller and pitch-bend state from before ``start`` is replayed at time 0, notes are
    shifted by ``transpose`` semitones (never on the drum channel), and every note still
    sounding at ``stop`` is released there.
    """
    header: list[mido.Message] = []
    for channel, program in channels.items():
        header.append(mido.Message("program_change", channel=channel, program=program))
        if vibrato:
            header.append(mido.Message("control_change", channel=channel, control=1, value=vibrato))
    state: dict[tuple, mido.Message] = {}
    body: list[tuple[float, mido.Message]] = []
    sounding: set[tuple[int, int]] = set()
    for event in events:
        msg = event.message
        if msg.channel not in channels or msg.type == "program_change" or event.time >= stop:
            continue
        if msg.type in _CHANNEL_STATE:
            if event.time < start:
                state[(msg.channel, msg.type, getattr(msg, "control", None))] = msg
            else:
                body.append((event.time - start, msg))
            continue
        if event.time < start or msg.type not in ("note_on", "note_off"):
            continue
        note = msg.note if msg.channel == DRUM_CHANNEL else min(127, max(0, msg.note + transpose))
        if msg.type == "note_on" and msg.velocity > 0:
            sounding.add((msg.channel, note))
        elif (msg.channel, note) in sounding:
            sounding.discard((msg.channel, note))
        else:
            continue
        body.append((event.time - start, msg.copy(note=note)))
    body += [
        (stop - start, mido.Message("note_off", channel=ch, note=n)) for ch, n in sorted(sounding)
    ]
    timed = [(0.0, m) for m in header + list(state.values())]
    timed += sorted(body, key=lambda tm: tm[0])  # stable: same-time events keep their order
    track = mido.MidiTrack()
    last_tick = 0
    for time, msg in timed:
        tick = round(time * _TICKS_PER_SECOND)
        track.append(msg.copy(time=tick - last_tick))
        last_tick = tick
    midi = mido.MidiFile(type=0, ticks_per_beat=_TICKS_PER_SECOND // 2)
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def _fluidsynth(
    midi: bytes, soundfont: str, num_samples: int, reverb: tuple[float, float] | None, chorus: bool
) -> np.ndarray:
    """Render MIDI bytes to (num_samples, 2) float32 at 44.1 kHz (cropped or zero-padded)."""
    with tempfile.TemporaryDirectory(prefix="stembeam-render-") as tmp:
        mid, wav = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        pathlib.Path(mid).write_bytes(midi)
        settings = {
            "synth.sample-rate": SAMPLE_RATE,
            "synth.gain": 0.5,
            "synth.reverb.active": int(reverb is not None),
            "synth.chorus.active": int(chorus),
            "synth.cpu-cores": 1,
        }
        if reverb is not None:
            settings.update(
                {
                    "synth.reverb.room-size": round(reverb[0], 3),
                    "synth.reverb.level": round(reverb[1], 3),
                }
            )
        command = ["fluidsynth", "-n", "-i", "-q", "-T", "wav", "-O", "float", "-F", wav]
        for key, value in settings.items():
            command += ["-o", f"{key}={value}"]
        result = subprocess.run(command + [soundfont, mid], capture_output=True, text=True)
        if result.returncode != 0 or not os.path.exists(wav):
            raise RuntimeError(f"fluidsynth failed ({result.returncode}): {result.stderr.strip()}")
        audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"fluidsynth rendered at {rate} Hz, expected {SAMPLE_RATE}")
    out = np.zeros((num_samples, 2), np.float32)
    n = min(num_samples, len(audio))
    out[:n] = audio[:n, :2]
    return out


def _effects(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Random tone (one-pole low-pass blended with the dry signal) and stereo balance."""
    cutoff = float(rng.uniform(1000.0, 8000.0))
    blend = float(rng.uniform(0.0, 0.6))
    pan = float(rng.uniform(-0.3, 0.3))
    pole = np.exp(-2.0 * np.pi * cutoff / SAMPLE_RATE)
    low = scipy.signal.lfilter([1.0 - pole], [1.0, -pole], audio, axis=0)
    out = (1.0 - blend) * audio + blend * low
    angle = (pan + 1.0) * np.pi / 4.0  # constant-power balance
    out = out * np.array([np.cos(angle), np.sin(angle)]) * np.sqrt(2.0)
    return out.astype(np.float32), {"lowpass_hz": cutoff, "lowpass_blend": blend, "pan": pan}


def render_track(
    source: MidiSource,
    rng: np.random.Generator,
    duration_s: float,
    soundfont: str = DEFAULT_SOUNDFONT,
    vocals_probability: float = 0.85,
) -> tuple[dict[str, np.ndarray], dict]:
    """Render one excerpt of a song into stems.

    Returns ``({stem: (N, 2) float32}, metadata)`` with N = round(duration_s * 44100). Stems
    whose family is absent from the excerpt are exact zeros; ``metadata['present']`` lists the
    others. Levels are random per stem (RMS -24..-16 dBFS) and all stems are scaled together so
    that the mixture peaks at most 0.9.
    """
    events = _parse(source)
    stretch = float(rng.uniform(0.92, 1.08))  # tempo factor: times are divided by it
    events = [dataclasses.replace(e, time=e.time / stretch) for e in events]
    stems = assign_stems(events, with_vocals=bool(rng.random() < vocals_probability))
    programs = _channel_programs(events)
    length = max((e.time for e in events), default=0.0)
    by_stem = {s: {ch for ch, st in stems.items() if st == s} for s in STEMS}

    def coverage(start: float) -> tuple[int, int]:
        counts = [_notes_in(events, by_stem[s], start, start + duration_s) for s in STEMS]
        return sum(c >= 4 for c in counts), sum(counts)

    starts = rng.uniform(0.0, max(0.0, length - duration_s), size=8)
    start = float(max(starts, key=coverage))
    transpose = int(rng.integers(-2, 3))
    num_samples = round(duration_s * SAMPLE_RATE)
    audio: dict[str, np.ndarray] = {}
    meta: dict = {
        "source": source.name,
        "start_s": start,
        "tempo_factor": stretch,
        "transpose": transpose,
        "present": [],
        "stems": {},
    }
    for stem in STEMS:
        channels = {ch: _random_program(stem, programs[ch], rng) for ch in sorted(by_stem[stem])}
        reverb = (
            (float(rng.uniform(0.2, 0.9)), float(rng.uniform(0.2, 0.8)))
            if rng.random() < 0.6
            else None
        )
        chorus = bool(rng.random() < 0.3)
        vibrato = int(rng.integers(20, 70)) if stem == "vocals" else 0
        level_db = float(rng.uniform(-24.0, -16.0))
        if _notes_in(events, set(channels), start, start + duration_s) == 0:
            audio[stem] = np.zeros((num_samples, 2), np.float32)
            continue
        midi = _stem_midi(events, channels, start, start + duration_s, transpose, vibrato)
        rendered = _fluidsynth(midi, soundfont, num_samples, reverb, chorus)
        rendered, fx = _effects(rendered, rng)
        rms = float(np.sqrt(np.mean(np.square(rendered, dtype=np.float64))))
        if rms < 1e-6:
            audio[stem] = np.zeros((num_samples, 2), np.float32)
            continue
        audio[stem] = (rendered * (10.0 ** (level_db / 20.0) / rms)).astype(np.float32)
        meta["present"].append(stem)
        meta["stems"][stem] = {
            "programs": {str(k): v for k, v in channels.items()},
            "reverb": reverb,
            "chorus": chorus,
            "vibrato": vibrato,
            "level_dbfs": level_db,
            **fx,
        }
    peak = float(np.max(np.abs(sum(audio.values()))))
    scale = min(1.0, 0.9 / peak) if peak > 0 else 1.0
    audio = {s: (a * np.float32(scale)).astype(np.float32) for s, a in audio.items()}
    meta["scale"] = scale
    return audio, meta


def _split(
    n_tracks: int, n_sources: int, test_fraction: float, rng: np.random.Generator
) -> list[tuple[str, int]]:
    """(split, source index) per track; test tracks come from songs no train track uses."""
    order = [int(i) for i in rng.permutation(n_sources)]
    n_test_songs = max(1, round(n_sources * test_fraction)) if n_sources > 1 else 0
    test_songs, train_songs = order[:n_test_songs], order[n_test_songs:]
    n_test = min(n_tracks - 1, max(1, round(n_tracks * test_fraction))) if test_songs else 0
    return [("train", train_songs[i % len(train_songs)]) for i in range(n_tracks - n_test)] + [
        ("test", test_songs[i % len(test_songs)]) for i in range(n_test)
    ]


def render_dataset(
    midi_sources: Sequence[MidiSource] | Iterable[str | os.PathLike] | None,
    output_dir: str | os.PathLike,
    n_tracks: int,
    seed: int,
    duration_s: float = 30.0,
    soundfont: str = DEFAULT_SOUNDFONT,
    test_fraction: float = 0.125,
) -> list[pathlib.Path]:
    """Render ``n_tracks`` excerpts of ``duration_s`` seconds into a MUSDB18-HQ style folder.

    Args:
      midi_sources: ``MidiSource`` objects, or paths (MIDI files, folders, Doom WADs); None uses
        the Debian packages' songs (freedoom, planetblupi-music-midi).
      output_dir: local folder; gets ``train/`` and ``test/`` (songs in ``test/`` are not used
        for any train track, when there are at least two songs).
      n_tracks: tracks to render in total (songs are reused, with other excerpts, when fewer).
      seed: everything random derives from it; same seed, same bytes. Tracks already complete
        in ``output_dir`` (they have their ``metadata.json``) are kept, so a rerun resumes.
    Returns:
      The track folders written, in track order.
    """
    sources = list(midi_sources if midi_sources is not None else DEFAULT_MIDI_SOURCES)
    if sources and not isinstance(sources[0], MidiSource):
        sources = discover_midi_sources(sources)
    if not sources:
        raise ValueError(
            "no MIDI songs found; install freedoom / planetblupi-music-midi or pass MIDI files"
        )
    if shutil.which("fluidsynth") is None or not os.path.exists(soundfont):
        raise RuntimeError(f"needs the fluidsynth CLI and a GM soundfont at {soundfont}")
    plan = _split(n_tracks, len(sources), test_fraction, np.random.default_rng([seed, 0]))
    folders = []
    for index, (split, song) in enumerate(plan):
        folder = pathlib.Path(output_dir, split, f"{index:04d} - {sources[song].name}")
        folders.append(folder)
        if (folder / "metadata.json").exists():  # written last: the track is complete
            continue
        rng = np.random.default_rng([seed, 1, index])
        audio, meta = render_track(sources[song], rng, duration_s, soundfont)
        folder.mkdir(parents=True, exist_ok=True)
        mixture = np.sum([audio[s] for s in STEMS], axis=0, dtype=np.float32)
        for name, samples in [("mixture", mixture)] + [(s, audio[s]) for s in STEMS]:
            # scipy writes no PEAK chunk (libsndfile's carries a timestamp): byte-identical reruns
            scipy.io.wavfile.write(folder / f"{name}.wav", SAMPLE_RATE, samples)
        (folder / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folders
