"""Streaming decode: segments carry exactly the samples an in-memory numpy cut would, for every
container and channel layout; hostile files fail with a reason."""

import numpy as np
import pytest
import soundfile

from stembeam.model.config import ModelConfig
from stembeam.model.segmentation import plan_segments, segment_sample_range
from stembeam.model.spectral import frame_count
from stembeam.transforms import decode
from tests.audio_files import hostile_files, tone, write, write_m4a

CFG = ModelConfig(name="tiny", stems=("vocals", "accompaniment"), T=64, F=64)


def expected_segments(wave: np.ndarray, mode: str) -> list[np.ndarray]:
    """Numpy reference: cut the whole in-memory track, zeros outside it."""
    plans = plan_segments(frame_count(len(wave), CFG.frame_length, CFG.frame_step), CFG.T, mode)
    out = []
    for plan in plans:
        start, stop = segment_sample_range(plan, CFG.T, CFG.frame_length, CFG.frame_step)
        padded = np.zeros((stop - start, 2), np.float32)
        lo, hi = max(start, 0), min(stop, len(wave))
        padded[lo - start : hi - start] = wave[lo:hi]
        out.append(padded)
    return out


def decoded(path: str, mode: str = "overlap"):
    """(the track's exact info, segments' samples); only the last segment carries the info."""
    _, segments = decode.decode_segments(path, CFG, mode)
    segments = list(segments)
    finals = [final for _, _, final in segments]
    assert finals[-1] is not None and not any(finals[:-1])
    assert [plan.index for plan, _, _ in segments] == list(range(len(segments)))
    return finals[-1], [samples for _, samples, _ in segments]


@pytest.mark.parametrize("mode", ["overlap", "spleeter"])
def test_stereo_wav_segments_match_numpy_cut(tmp_path, mode, monkeypatch):
    monkeypatch.setattr(decode, "BLOCK_FRAMES", 10007)  # blocks that straddle segment edges
    wave = tone(7.3)
    info, segments = decoded(write(str(tmp_path / "a.wav"), wave, subtype="FLOAT"), mode)
    assert (info.sample_rate, info.channels, info.num_samples) == (44100, 2, len(wave))
    assert info.codec == "WAV/FLOAT"
    expected = expected_segments(wave, mode)
    assert len(segments) == len(expected) > 3
    for got, want in zip(segments, expected):
        np.testing.assert_array_equal(got, want)


def test_mono_is_duplicated(tmp_path):
    wave = tone(2.0, channels=1)
    info, segments = decoded(write(str(tmp_path / "m.flac"), wave, subtype="PCM_24"))
    assert info.channels == 1 and info.codec == "FLAC/PCM_24"
    for got, want in zip(segments, expected_segments(np.repeat(wave, 2, axis=1), "overlap")):
        np.testing.assert_allclose(got, want, atol=2e-7)


def test_surround_51_folds_down_itu(tmp_path):
    wave = tone(2.0, channels=6)
    L, R, C, _, Ls, Rs = wave.T
    g = 1 / np.sqrt(2)
    stereo = np.stack([L + g * (C + Ls), R + g * (C + Rs)], axis=1) / (1 + 2 * g)
    info, segments = decoded(write(str(tmp_path / "s.wav"), wave, subtype="FLOAT"))
    assert info.channels == 6
    for got, want in zip(segments, expected_segments(stereo.astype(np.float32), "overlap")):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 192000])
def test_resampled_to_model_rate(tmp_path, rate):
    seconds = 2.0
    t_in = np.arange(int(seconds * rate)) / rate
    wave = np.stack(
        [0.5 * np.sin(2 * np.pi * 440 * t_in), 0.5 * np.cos(2 * np.pi * 1000 * t_in)], axis=1
    ).astype(np.float32)
    info, segments = decoded(write(str(tmp_path / "r.wav"), wave, rate, subtype="FLOAT"))
    n_out = int(round(len(wave) * 44100 / rate))
    assert info.sample_rate == rate and info.model_samples == n_out
    t = np.arange(n_out) / 44100  # the analytic signal at 44.1 kHz, edges (filter transients) cut
    analytic = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.cos(2 * np.pi * 1000 * t)], 1)
    plans = plan_segments(frame_count(n_out, CFG.frame_length, CFG.frame_step), CFG.T, "overlap")
    for plan, got in zip(plans, segments):
        start, stop = segment_sample_range(plan, CFG.T, CFG.frame_length, CFG.frame_step)
        positions = np.arange(start, stop)
        inside = (positions >= 2000) & (positions < n_out - 2000)
        np.testing.assert_allclose(got[inside], analytic[positions[inside]], atol=2e-3)
        assert not got[(positions < 0) | (positions >= n_out)].any()


def test_m4a_decodes_through_pyav(tmp_path):
    wave = tone(3.0)
    info, segments = decoded(write_m4a(str(tmp_path / "a.m4a"), wave))
    assert info.codec.endswith("/aac") and info.channels == 2 and info.sample_rate == 44100
    assert abs(info.num_samples - len(wave)) <= 2048  # AAC frames: at most one frame of padding
    plan = plan_segments(frame_count(info.model_samples), CFG.T, "overlap")[0]
    offset = -segment_sample_range(plan, CFG.T)[0]  # where track sample 0 sits in segment 0
    first = segments[0][offset : offset + 44100]
    # lossy and time-aligned: the tones survive, AAC drops much of the 2 %-power white noise
    err = np.sum((first - wave[:44100]) ** 2) / np.sum(wave[:44100] ** 2)
    assert err < 0.04


def test_mp3_and_ogg_are_counted_not_trusted(tmp_path):
    wave = tone(2.0)
    for name in ("a.mp3", "a.ogg"):
        info, segments = decoded(write(str(tmp_path / name), wave))
        assert abs(info.num_samples - len(wave)) < 2400 and segments


@pytest.mark.parametrize(
    "name,reason",
    [
        ("empty", "not a decodable audio file"),
        ("garbage", "not a decodable audio file"),
        ("zero_length", "zero-length"),
        ("nan", "NaN"),
        ("truncated", "truncated"),
    ],
)
def test_hostile_inputs_raise_readable_errors(tmp_path, name, reason):
    path = hostile_files(str(tmp_path))[name]
    with pytest.raises(decode.DecodeError, match=reason):
        decoded(path)


def test_missing_file(tmp_path):
    with pytest.raises(decode.DecodeError, match="cannot open"):
        decoded(str(tmp_path / "nope.wav"))


@pytest.mark.parametrize("mode", ["overlap", "spleeter"])
@pytest.mark.parametrize("name", ["a.ogg", "a.mp3"])
def test_unstated_length_is_decoded_once_and_cut_like_the_whole_file(
    tmp_path, monkeypatch, name, mode
):
    """OGG/MP3 state no exact length: segments are planned as samples arrive, from a single
    decoding pass, and equal the cut of the whole file decoded in memory."""
    monkeypatch.setattr(decode, "BLOCK_FRAMES", 4099)  # many read-ahead steps
    path = write(str(tmp_path / name), tone(9.7))
    whole, rate = soundfile.read(path, dtype="float32", always_2d=True)
    assert rate == 44100
    passes = []
    original = decode._soundfile_source

    def counting_source(f):
        source, sf = original(f)
        assert source.frames is None
        blocks = source.blocks
        source.blocks = lambda: (passes.append(1), blocks())[1]
        return source, sf

    monkeypatch.setattr(decode, "_soundfile_source", counting_source)
    info, segments = decoded(path, mode)
    assert passes == [1]
    assert info.num_samples == info.model_samples == len(whole)
    expected = expected_segments(whole, mode)
    assert len(segments) == len(expected) > 3
    for got, want in zip(segments, expected):
        np.testing.assert_array_equal(got, want)
