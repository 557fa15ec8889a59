"""The separate job end to end on the FnApiRunner with a tiny seeded model and generated audio.

Stems are compared with an independent numpy separation (tests/conftest.py:numpy_separate);
a catalog mixing good and hostile inputs must give every track exactly one row.
"""

import json
import os
import sqlite3
import time

import apache_beam as beam
import numpy as np
import pytest
import soundfile
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from stembeam.model.registry import describe_model
from stembeam.model.segmentation import DEFAULT_CONTEXT
from stembeam.pipeline.options import SeparateOptions, results_url
from stembeam.pipeline.separate import build
from tests.audio_files import hostile_files, tone, write, write_m4a
from tests.conftest import TINY, numpy_separate, unet_predict

GOOD = {"good": "ok", "low": "ok", "high": "ok", "surround": "ok", "aac": "ok", "__/evil": "ok"}
BAD = {
    "bad_empty": "not a decodable audio file",
    "bad_garbage": "not a decodable audio file",
    "bad_zero_length": "zero-length",
    "bad_nan": "NaN",
    "bad_truncated": "truncated",
    "missing": "cannot open",
}


def make_catalog(folder: str) -> str:
    """A CSV manifest of good inputs (one with references) and hostile ones."""
    audio = os.path.join(folder, "audio")
    rows = [
        (
            "good",
            write(os.path.join(audio, "good.wav"), tone(4.0, seed=1), subtype="FLOAT"),
            write(os.path.join(audio, "good_v.wav"), tone(4.0, seed=2) * 0.5, subtype="FLOAT"),
            write(os.path.join(audio, "good_a.wav"), tone(4.0, seed=3) * 0.5, subtype="FLOAT"),
        ),
        ("low", write(os.path.join(audio, "low.wav"), tone(1.5, 8000, 1), 8000), "", ""),
        ("high", write(os.path.join(audio, "high.flac"), tone(1.0, 192000), 192000), "", ""),
        ("surround", write(os.path.join(audio, "surround.wav"), tone(1.0, channels=6)), "", ""),
        ("aac", write_m4a(os.path.join(audio, "aac.m4a"), tone(1.5)), "", ""),
        ("../evil", os.path.join(audio, "good.wav"), "", ""),
        ("missing", os.path.join(audio, "missing.wav"), "", ""),
    ]
    rows += [
        (f"bad_{name}", path, "", "")
        for name, path in hostile_files(os.path.join(folder, "bad")).items()
    ]
    manifest = os.path.join(folder, "catalog.csv")
    with open(manifest, "w") as f:
        f.write("track_id,uri,vocals,accompaniment\n")
        f.writelines(",".join(row) + "\n" for row in rows)
    return manifest


def options(manifest: str, output: str, model: str, *extra: str) -> SeparateOptions:
    """Without the residual and in float32, as the numpy reference separates (``--precision
    auto`` picks bfloat16 on some CPUs)."""
    return SeparateOptions(
        ["--input", manifest, "--output", output, "--model", model, "--residual", "none"]
        + ["--precision", "float32", *extra]
    )


def rows_of(output: str, run_id: str) -> dict[str, dict]:
    db = sqlite3.connect(os.path.join(output, "results.sqlite"))
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM results WHERE run_id = ?", (run_id,))]
    ids = [r["track_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a track has more than one row in the run"
    return {r["track_id"]: r for r in rows}


def run_test_pipeline(opts: SeparateOptions, run_id: str, expected: dict[str, str]) -> None:
    model = describe_model(opts.model)
    with BeamTestPipeline(runner="FnApiRunner", options=opts) as p:
        rows = build(p, opts, model, run_id, results_url(opts), time.time())
        assert_that(
            rows | beam.Map(lambda r: (r["track_id"], r["status"])),
            equal_to(list(expected.items())),
        )


@pytest.fixture(scope="module")
def first_run(tiny_model, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("catalog"))
    manifest, output = make_catalog(folder), os.path.join(folder, "out")
    expected = {**GOOD, **{k: "failed" for k in BAD}}
    run_test_pipeline(options(manifest, output, tiny_model), "run1", expected)
    return manifest, output, folder


def test_every_track_gets_one_row_with_a_reason(first_run):
    _, output, _ = first_run
    rows = rows_of(output, "run1")
    assert set(rows) == set(GOOD) | set(BAD)
    for track_id, words in BAD.items():
        assert rows[track_id]["status"] == "failed" and words in rows[track_id]["error"]
        assert not os.path.exists(os.path.join(output, track_id, "vocals.wav"))
    for track_id in GOOD:
        row = rows[track_id]
        assert row["status"] == "ok" and row["error"] == "" and row["wall_s"] > 0
        assert set(json.loads(row["stems"])) == {"vocals", "accompaniment"}
    assert (rows["low"]["sample_rate"], rows["low"]["channels"]) == (8000, 1)
    assert (rows["surround"]["channels"], rows["aac"]["codec"]) == (6, "mov/aac")
    db = sqlite3.connect(os.path.join(output, "results.sqlite"))
    ok, skipped, failed = db.execute(
        "SELECT tracks_ok, tracks_skipped, tracks_failed FROM runs WHERE run_id='run1'"
    ).fetchone()
    assert (ok, skipped, failed) == (len(GOOD), 0, len(BAD))


def test_stems_match_numpy_reference(first_run, tiny_model):
    import keras

    _, output, folder = first_run
    model = keras.saving.load_model(os.path.join(tiny_model, "model.keras"), compile=False)
    wave, _ = soundfile.read(os.path.join(folder, "audio", "good.wav"), dtype="float32")
    want = numpy_separate(wave, unet_predict(model), TINY, DEFAULT_CONTEXT)
    for s, stem in enumerate(TINY.stems):
        got, rate = soundfile.read(os.path.join(output, "good", f"{stem}.wav"), dtype="float32")
        assert rate == 44100 and got.shape == wave.shape
        np.testing.assert_allclose(got, want[:, :, s], atol=2e-5)
    assert os.path.exists(os.path.join(output, "__", "evil", "vocals.wav"))


def test_resampled_and_downmixed_stems_keep_input_length_and_rate(first_run):
    manifest, output, folder = first_run
    for track_id, name in [("low", "low.wav"), ("high", "high.flac"), ("surround", "surround.wav")]:
        source = soundfile.info(os.path.join(folder, "audio", name))
        for stem in TINY.stems:
            info = soundfile.info(os.path.join(output, track_id, f"{stem}.wav"))
            assert (info.frames, info.samplerate, info.channels) == (
                source.frames,
                source.samplerate,
                2,
            )
    aac = rows_of(output, "run1")["aac"]  # no header length: as many samples as were decoded
    info = soundfile.info(os.path.join(output, "aac", "vocals.wav"))
    assert info.frames == round(aac["duration_s"] * 44100) and abs(info.frames - 66150) <= 2048


def test_museval_metrics_where_references_exist(first_run):
    manifest, output, _ = first_run
    rows = rows_of(output, "run1")
    for metric in ("sdr", "sir", "sar", "isr"):
        for stem in TINY.stems:
            assert np.isfinite(rows["good"][f"{metric}_{stem}"])
            assert rows["low"][f"{metric}_{stem}"] is None
    scores = json.loads(open(os.path.join(output, "good", "museval.json")).read())
    assert [t["name"] for t in scores["targets"]] == ["vocals", "accompaniment"]
    frames = scores["targets"][0]["frames"]
    assert len(frames) == 4 and frames[0]["duration"] == 1.0
    median = np.median([f["metrics"]["SDR"] for f in frames])
    assert median == pytest.approx(rows["good"]["sdr_vocals"], abs=1e-3)

    # museval itself on the written stems and the manifest's references: the independent figure
    import museval

    good = next(line.strip().split(",") for line in open(manifest) if line.startswith("good,"))
    references = dict(zip(["vocals", "accompaniment"], good[2:4], strict=True))
    refs = np.stack([soundfile.read(references[s], dtype="float32")[0] for s in TINY.stems])
    ests = np.stack(
        [
            soundfile.read(os.path.join(output, "good", f"{s}.wav"), dtype="float32")[0]
            for s in TINY.stems
        ]
    )
    sdr, isr, sir, sar = museval.evaluate(refs, ests, win=44100, hop=44100)
    for metric, values in zip(("sdr", "isr", "sir", "sar"), (sdr, isr, sir, sar), strict=True):
        for i, stem in enumerate(TINY.stems):
            want = np.nanmedian(values[i])
            assert rows["good"][f"{metric}_{stem}"] == pytest.approx(want, abs=0.01)


def test_no_temporary_files_left(first_run):
    _, output, _ = first_run
    for root, dirs, files in os.walk(output):
        assert ".chunks" not in dirs, root
        assert not [f for f in files if ".partial-" in f], root


def test_rerun_skips_done_tracks_and_force_redoes_them(first_run, tiny_model):
    manifest, output, _ = first_run
    stem = os.path.join(output, "good", "vocals.wav")
    before = os.stat(stem).st_mtime_ns
    expected = {**{k: "skipped" for k in GOOD}, **{k: "failed" for k in BAD}}
    run_test_pipeline(options(manifest, output, tiny_model), "run2", expected)
    assert os.stat(stem).st_mtime_ns == before
    rows = rows_of(output, "run2")
    assert rows["good"]["duration_s"] == 4.0 and "--force" in rows["good"]["error"]
    assert len(rows_of(output, "run1")) == len(GOOD) + len(BAD)  # run1 untouched


def test_flac_wiener_spleeter_cut_then_force(tmp_path, tiny_model):
    folder = str(tmp_path)
    write(os.path.join(folder, "in", "x.wav"), tone(2.0))
    opts = options(
        os.path.join(folder, "in", "*.wav"),
        os.path.join(folder, "out"),
        tiny_model,
        "--format",
        "flac",
        "--postprocess",
        "wiener",
        "--segmentation",
        "spleeter",
    )
    run_test_pipeline(opts, "a", {"x": "ok"})
    info = soundfile.info(os.path.join(folder, "out", "x", "vocals.flac"))
    assert (info.format, info.frames) == ("FLAC", 88200)
    forced = options(
        os.path.join(folder, "in", "*.wav"),
        os.path.join(folder, "out"),
        tiny_model,
        "--format",
        "flac",
        "--force",
    )
    run_test_pipeline(forced, "c", {"x": "ok"})


def test_graph_spectral_path(tmp_path, tiny_model):
    """``--spectral_path graph``: the same stems as the numpy reference, a failed row for a bad
    file; with the residual shared out the stems sum to the mixture."""
    import keras

    folder = str(tmp_path)
    wave = tone(4.0, seed=4)
    write(os.path.join(folder, "in", "x.wav"), wave, subtype="FLOAT")
    with open(os.path.join(folder, "in", "y.wav"), "wb") as f:
        f.write(b"RIFF not audio")
    inputs = os.path.join(folder, "in", "*.wav")
    out = os.path.join(folder, "out")
    run_test_pipeline(
        options(inputs, out, tiny_model, "--spectral_path", "graph"),
        "g",
        {"x": "ok", "y": "failed"},
    )
    model = keras.saving.load_model(os.path.join(tiny_model, "model.keras"), compile=False)
    want = numpy_separate(wave, unet_predict(model), TINY, DEFAULT_CONTEXT)
    for s, stem in enumerate(TINY.stems):
        got, _ = soundfile.read(os.path.join(out, "x", f"{stem}.wav"), dtype="float32")
        np.testing.assert_allclose(got, want[:, :, s], atol=2e-5)
    shared = SeparateOptions(
        ["--input", inputs, "-o", os.path.join(folder, "shared"), "--model", tiny_model]
        + ["--spectral_path", "graph"]
    )
    run_test_pipeline(shared, "s", {"x": "ok", "y": "failed"})
    stems = [
        soundfile.read(os.path.join(folder, "shared", "x", f"{stem}.wav"), dtype="float32")[0]
        for stem in TINY.stems
    ]
    np.testing.assert_allclose(sum(stems), wave, atol=1e-5)
