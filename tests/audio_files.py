"""Generated test audio: good files in every container we claim to read, and hostile ones."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import soundfile


def tone(seconds: float, rate: int = 44100, channels: int = 2, seed: int = 0) -> np.ndarray:
    """``(n, channels)`` float32: a different sine mix per channel plus a little noise,
    |x| < 0.9."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    out = np.empty((len(t), channels), np.float32)
    for c in range(channels):
        f1, f2 = 220.0 * (c + 1), 331.0 + 97.0 * c
        out[:, c] = 0.4 * np.sin(2 * np.pi * f1 * t) + 0.3 * np.sin(2 * np.pi * f2 * t + c)
        out[:, c] += 0.05 * rng.standard_normal(len(t))
    return out


def write(path: str, audio: np.ndarray, rate: int = 44100, subtype: str | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, audio, rate, subtype=subtype)
    return path


def write_m4a(path: str, audio: np.ndarray, rate: int = 44100) -> str:
    """AAC in an MP4 container, encoded by the ffmpeg CLI from a temporary WAV."""
    wav = path + ".src.wav"
    write(wav, audio, rate)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", wav, "-c:a", "aac", "-b:a", "192k", path],
        check=True,
    )
    os.remove(wav)
    return path


def hostile_files(folder: str) -> dict[str, str]:
    """Inputs that must fail cleanly: name -> path."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    paths["empty"] = os.path.join(folder, "empty.wav")
    open(paths["empty"], "wb").close()
    paths["garbage"] = os.path.join(folder, "garbage.flac")
    with open(paths["garbage"], "wb") as f:
        f.write(np.random.default_rng(1).bytes(5000))
    paths["zero_length"] = write(
        os.path.join(folder, "zero_length.wav"), np.zeros((0, 2), np.float32)
    )
    nan = tone(1.0)
    nan[30000:30010] = np.nan
    paths["nan"] = write(os.path.join(folder, "nan.wav"), nan, subtype="FLOAT")
    full = write(os.path.join(folder, "full.src.flac"), tone(3.0), subtype="PCM_16")
    data = open(full, "rb").read()
    os.remove(full)
    paths["truncated"] = os.path.join(folder, "truncated.flac")
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    return paths
