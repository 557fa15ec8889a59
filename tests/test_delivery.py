"""Delivery formats, stem file names and stem sums: files written by ``StemWriter`` are decoded
back with PyAV (FFmpeg's decoders, not libsndfile) and checked against the input signal."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from stembeam.pipeline.options import parse_options
from stembeam.transforms.delivery import (
    DEFAULT_TEMPLATE,
    OutputFormat,
    mix_is_identity,
    stem_mix,
    stem_path,
    validate_template,
)

RATE = 44100


def signal(n: int = 66150, amplitude: float = 0.5, seed: int = 0) -> np.ndarray:
    """(n, 2) float32: two tones plus a little noise, peak about ``amplitude * 1.1``."""
    t = np.arange(n) / RATE
    tones = np.stack([np.sin(2 * np.pi * 440 * t), 0.8 * np.sin(2 * np.pi * 660 * t)], axis=1)
    noise = 0.1 * np.random.default_rng(seed).standard_normal((n, 2))
    return (amplitude * (tones + noise)).astype(np.float32)


def decode(path: str) -> tuple[np.ndarray, int, int]:
    """(samples (n, channels) float32, rate, channels) decoded by FFmpeg through PyAV."""
    with av.open(path) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")
        planes = [
            f.to_ndarray() for frame in container.decode(stream) for f in resampler.resample(frame)
        ]
        return np.concatenate(planes, axis=1).T, stream.rate, stream.channels


def write(fmt: OutputFormat, path: str, x: np.ndarray, rate: int = RATE, block: int = 10000):
    """Writes ``x`` in blocks of ``block`` samples; returns the closed writer."""
    with fmt.open_writer(path, rate, x.shape[1]) as writer:
        for i in range(0, len(x), block):
            writer.write(x[i : i + block])
    return writer


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2)))


@pytest.mark.parametrize(
    "name,depth,subtype",
    [
        ("wav", None, "FLOAT"),
        ("wav", 16, "PCM_16"),
        ("wav", 24, "PCM_24"),
        ("flac", None, "PCM_24"),
        ("flac", 16, "PCM_16"),
        ("aiff", None, "PCM_24"),
        ("aiff", 16, "PCM_16"),
    ],
)
def test_lossless_formats_round_trip(tmp_path, name, depth, subtype):
    fmt = OutputFormat.parse(name, bit_depth=depth)
    x = signal()
    path = str(tmp_path / f"vocals.{fmt.extension}")
    writer = write(fmt, path, x)
    assert soundfile.info(path).subtype == subtype  # from the file's header
    y, rate, channels = decode(path)
    assert (rate, channels, y.shape) == (RATE, 2, x.shape) and writer.sample_rate == RATE
    bits = {"FLOAT": None, "PCM_16": 16, "PCM_24": 24}[subtype]
    if bits is None:
        np.testing.assert_array_equal(y, x)
    else:
        np.testing.assert_allclose(y, x, atol=2.0 ** -(bits - 1))
    assert writer.clipped == 0 and writer.gain == 1.0


@pytest.mark.parametrize(
    "name,kbps",
    [("mp3", 128), ("mp3", 320), ("ogg", 128), ("ogg", 256), ("opus", 96), ("opus", 256)],
)
def test_lossy_formats_decode_with_duration_rate_and_bitrate(tmp_path, name, kbps):
    fmt = OutputFormat.parse(name, bitrate=f"{kbps}k")
    seconds = 3.0
    x = signal(int(seconds * RATE))
    path = str(tmp_path / f"drums.{fmt.extension}")
    writer = write(fmt, path, x)
    y, rate, channels = decode(path)
    expected_rate = 48000 if name == "opus" else RATE  # Opus has no 44.1 kHz mode
    assert (rate, channels, writer.sample_rate) == (expected_rate, 2, expected_rate)
    assert abs(len(y) - seconds * expected_rate) <= 2  # the codecs' delay/padding is trimmed
    reference = resample_poly(x, 160, 147, axis=0) if name == "opus" else x
    n = min(len(y), len(reference))
    assert snr_db(reference[:n], y[:n]) > 15
    measured = os.path.getsize(path) * 8 / 1000 / seconds
    tolerance = {"mp3": 0.05, "opus": 0.2, "ogg": 0.3}[name]  # CBR / VBR / nominal quality
    assert abs(measured / kbps - 1) < tolerance, measured


def test_mp3_at_mpeg2_rate_caps_the_bitrate_and_high_rates_are_resampled(tmp_path):
    fmt = OutputFormat.parse("mp3", bitrate=320)
    x = signal(22050 * 2)
    low = write(fmt, str(tmp_path / "low.mp3"), x, rate=22050)
    kbps = os.path.getsize(tmp_path / "low.mp3") * 8 / 1000 / 2
    assert low.sample_rate == 22050 and 150 < kbps < 170  # MPEG-2 tops out at 160 kbps
    high = write(fmt, str(tmp_path / "high.mp3"), signal(96000), rate=96000)
    y, rate, _ = decode(str(tmp_path / "high.mp3"))
    assert high.sample_rate == rate == 48000 and abs(len(y) - 48000) <= 2


def test_clip_counts_and_clips_integer_formats(tmp_path):
    x = signal(amplitude=1.2)
    writer = write(OutputFormat.parse("wav", bit_depth=16), str(tmp_path / "a.wav"), x)
    assert writer.clipped == int(np.count_nonzero(np.abs(x) > 1.0)) > 0
    assert writer.peak == pytest.approx(float(np.abs(x).max()))
    y, _, _ = decode(str(tmp_path / "a.wav"))
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=2.0**-15)


def test_float_wav_keeps_values_beyond_one(tmp_path):
    x = signal(amplitude=1.2)
    writer = write(OutputFormat.parse("wav"), str(tmp_path / "a.wav"), x)
    assert writer.clipped == 0
    np.testing.assert_array_equal(decode(str(tmp_path / "a.wav"))[0], x)


@pytest.mark.parametrize("amplitude", [1.5, 0.5])
def test_normalise_scales_by_the_peak_only_above_one(tmp_path, amplitude):
    x = signal(amplitude=amplitude)
    fmt = OutputFormat.parse("flac", clip_mode="normalise")
    writer = write(fmt, str(tmp_path / "bass.flac"), x)
    peak = float(np.abs(x).max())
    gain = 1 / peak if peak > 1 else 1.0
    assert writer.gain == pytest.approx(gain) and writer.clipped == 0
    y, _, _ = decode(str(tmp_path / "bass.flac"))
    np.testing.assert_allclose(y, x * gain, atol=2.0**-22)
    assert os.listdir(tmp_path) == ["bass.flac"]  # the float32 staging file is gone


def test_normalise_with_resampling_lossy(tmp_path):
    x = signal(amplitude=1.5)
    writer = write(OutputFormat.parse("opus", clip_mode="normalise"), str(tmp_path / "o.opus"), x)
    y, rate, _ = decode(str(tmp_path / "o.opus"))
    assert rate == 48000 and abs(len(y) - len(x) * 48000 / RATE) <= 2
    assert writer.gain == pytest.approx(1 / writer.peak) and writer.peak > 1.4
    reference = resample_poly(x, 160, 147, axis=0) * writer.gain
    assert snr_db(reference[: len(y)], y[: len(reference)]) > 15


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(name="wav", bitrate=128), "--bitrate applies to lossy formats"),
        (dict(name="mp3", bit_depth=16), "--bit_depth applies to lossless formats"),
        (dict(name="flac", bit_depth=32), "FLAC stores integers only"),
        (dict(name="wav", bit_depth=8), "--bit_depth must be 16, 24 or 32"),
        (dict(name="opus", bitrate=1000), "outside opus's 6..512 kbps"),
        (dict(name="mp3", bitrate="fast"), "kbps such as 192"),
        (dict(name="m4a"), "is not one of wav, flac, aiff, mp3, ogg, opus"),
        (dict(name="wav", clip_mode="limit"), "--clip_mode 'limit'"),
    ],
)
def test_bad_combinations_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        OutputFormat.parse(**kwargs)
    assert "\n" not in str(err.value)


def test_defaults_and_keys():
    assert OutputFormat.parse("wav") == OutputFormat("wav", 32, None, "clip")
    assert OutputFormat.parse("flac").key == "flac-24"
    assert OutputFormat.parse("wav").key == "wav-f32"
    assert OutputFormat.parse("mp3", clip_mode="normalise").key == "mp3-320k-normalise"
    assert OutputFormat.parse("opus", bitrate="96").extension == "opus"


def test_options_reach_the_format():
    options = parse_options(
        [
            "--input",
            "in",
            "--output",
            "out",
            "--format",
            "mp3",
            "--bitrate",
            "192k",
            "--clip-mode",
            "normalise",
            "--stems",
            "vocals,rest",
            "--residual",
            "last",
            "--filename_template",
            "{model}/{track}/{stem}.{ext}",
        ]
    )
    assert OutputFormat.from_options(options) == OutputFormat("mp3", None, 192, "normalise")
    assert (options.stems, options.residual) == ("vocals,rest", "last")
    assert options.filename_template == "{model}/{track}/{stem}.{ext}"
    defaults = parse_options(["--input", "in", "--output", "out"])
    assert OutputFormat.from_options(defaults) == OutputFormat("wav", 32, None, "clip")
    assert (defaults.filename_template, defaults.stems, defaults.residual) == (
        DEFAULT_TEMPLATE,
        None,
        "share",
    )


def test_stem_path_default_layout_and_placeholders():
    assert (
        stem_path(DEFAULT_TEMPLATE, "label/album/01", "vocals", "wav", "spleeter:4stems")
        == "label/album/01/vocals.wav"
    )
    assert (
        stem_path(
            "{model}/{track_name}-{stem}.{ext}-{track}",
            "a/b",
            "bass",
            "mp3",
            "gs://bucket/models/mine/",
        )
        == "mine/b-bass.mp3-a/b"
    )
    assert (
        stem_path("{model}/{track}/{stem}.{ext}", "t", "drums", "flac", "spleeter:2stems")
        == "spleeter-2stems/t/drums.flac"
    )
    paths = {
        stem_path("{track}_{stem}.{ext}", t, s, "wav", "m")
        for t in ("x", "y/z", "w")
        for s in ("vocals", "drums", "bass", "other")
    }
    assert len(paths) == 12


@pytest.mark.parametrize(
    "template,message",
    [
        ("{stem}.{ext}", "must contain {track}"),
        ("{track}.{ext}", "must contain {stem}"),
        ("/abs/{track}/{stem}.{ext}", "must be relative"),
        ("gs://b/{track}/{stem}", "must be relative"),
        ("{track}/../{stem}.{ext}", "must not contain '..'"),
        ("{track}/{stem}.{format}", r"unknown placeholder \{format\}"),
        ("{track}/{stem:>10}.{ext}", "unknown placeholder"),
        ("{track}/{stem.{ext}", "--filename_template"),
    ],
)
def test_bad_templates(template, message):
    with pytest.raises(ValueError, match=message):
        validate_template(template)


def test_track_id_that_escapes_is_refused():
    with pytest.raises(ValueError, match="bad path"):
        stem_path(DEFAULT_TEMPLATE, "../x", "vocals", "wav", "m")


FOUR = ("vocals", "drums", "bass", "other")


def test_stem_mix_sums_blocks():
    block = np.random.default_rng(1).standard_normal((100, 2, 4)).astype(np.float32)
    by_name = {s: block[..., i] for i, s in enumerate(FOUR)}
    names, matrix = stem_mix("vocals,accompaniment=drums+bass+other", FOUR)
    out = block @ matrix
    assert names == ("vocals", "accompaniment") and out.shape == (100, 2, 2)
    np.testing.assert_allclose(out[..., 0], by_name["vocals"])
    np.testing.assert_allclose(
        out[..., 1], by_name["drums"] + by_name["bass"] + by_name["other"], rtol=1e-6
    )
    names, matrix = stem_mix("drums, rest", FOUR)
    assert names == ("drums", "rest")
    np.testing.assert_allclose(
        (block @ matrix)[..., 1], by_name["vocals"] + by_name["bass"] + by_name["other"], rtol=1e-6
    )
    names, matrix = stem_mix("vocals", FOUR)
    assert names == ("vocals",) and matrix[:, 0].tolist() == [1, 0, 0, 0]
    names, matrix = stem_mix("no_drums=vocals+bass+other,drums", FOUR)
    assert matrix.T.tolist() == [[1, 0, 1, 1], [0, 1, 0, 0]]
    names, matrix = stem_mix(None, FOUR)
    assert names == FOUR and mix_is_identity(matrix)
    assert not mix_is_identity(stem_mix("other,bass,drums,vocals", FOUR)[1])


@pytest.mark.parametrize(
    "spec,message",
    [
        ("voice", "unknown stem 'voice'; the model's stems are vocals, drums, bass, other"),
        ("vocals,x=drums+piano", "unknown stem 'piano'"),
        ("vocals,vocals", "vocals named twice"),
        ("vocals,drums,bass,other,rest", "'rest' is empty"),
        ("vocals,", "bad item ''"),
        ("a b=drums", "bad item"),
        ("x=drums+", "bad item"),
    ],
)
def test_stem_mix_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        stem_mix(spec, FOUR)
