"""`stembeam separate` from gs:// to gs:// against gcp-storage-emulator on 127.0.0.1.

Catalog, model folder and output all live in the emulator's bucket; the command runs in this
process on its default runner (FnApiRunner, worker threads), under the loopback guard, so any
credential lookup or request that would leave the machine fails the test. Checked: glob listing
on gs://, streaming decode from gs://, stems equal to an independent numpy separation, no chunk
or partial objects left, done-markers, a failed row for a broken file, and a rerun that skips
(objects not rewritten). Only gs:// is tested against an object store; s3:// goes through the
same FileSystems calls but no S3 emulator runs in the suite.
"""
from __future__ import annotations

import io
import os
import sqlite3

import keras
import numpy as np
import pytest
import soundfile
from apache_beam.io.filesystems import FileSystems

from model.segmentation import default_context
from pipeline.cli import main
from tests.audio_files import tone
from tests.conftest import TINY, numpy_separate


def upload(uri: str, data: bytes) -> None:
    with FileSystems.create(uri) as handle:
        handle.write(data)


def wav_bytes(audio: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def read_audio(uri: str) -> tuple[np.ndarray, int]:
    with FileSystems.open(uri) as handle:
        return soundfile.read(io.BytesIO(handle.read()), dtype="float32")


def rows_of(db_path: str, run_id: str) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(db_path) as db:
        return {t: (s, e) for t, s, e in db.execute(
            "select track_id, status, error from results where run_id = ?", (run_id,))}


def objects(root: str) -> list[str]:
    return sorted(m.path[len(root) + 1:] for m in FileSystems.match([f"{root}/**"])[0].metadata_list)


@pytest.fixture
def gs_catalog(gcs_emulator, tiny_model, loopback_only):
    """A bucket holding masters/ (two good tracks, one broken) and models/tiny/."""
    root = gcs_emulator.bucket("catalog")
    one, two = tone(2.5, seed=4), tone(1.5, 48000, seed=5)
    upload(f"{root}/masters/one.wav", wav_bytes(one, 44100))
    upload(f"{root}/masters/sub/two.flac", wav_bytes(two, 48000, "FLAC", "PCM_24"))
    upload(f"{root}/masters/broken.wav", b"RIFF\x00\x00\x00\x00WAVEnot audio")
    for name in sorted(os.listdir(tiny_model)):
        with open(os.path.join(tiny_model, name), "rb") as handle:
            upload(f"{root}/models/tiny/{name}", handle.read())
    return root, one


@pytest.mark.slow
def test_separate_gs_to_gs_then_rerun_skips(gs_catalog, gcs_emulator, tiny_model, tmp_path):
    root, one = gs_catalog
    db = str(tmp_path / "results.sqlite")

    def separate(run_id: str) -> int:
        return main(["separate", "--input", f"{root}/masters/**", "--output", f"{root}/out",
                     "--model", f"{root}/models/tiny", "--results", f"sqlite:///{db}",
                     "--model_cache", str(tmp_path / "cache"), "--run_id", run_id])

    assert separate("r1") == 0
    rows = rows_of(db, "r1")
    assert {t: s for t, (s, _) in rows.items()} == {
        "one": "ok", "sub/two": "ok", "broken": "failed"}
    assert rows["broken"][1]

    written = objects(f"{root}/out")
    stems = [f"{track}/{stem}.wav" for track in ("one", "sub/two") for stem in TINY.stems]
    markers = [p for p in written if os.path.basename(p).startswith(".done-")]
    assert sorted(set(written) - set(markers)) == sorted(stems)  # no chunks, no partials
    assert sorted(os.path.dirname(p) for p in markers) == ["one", "sub/two"]

    model = keras.saving.load_model(os.path.join(tiny_model, "model.keras"), compile=False)
    want = numpy_separate(one, lambda x: np.asarray(model(x)), TINY, default_context(TINY.T))
    for s, stem in enumerate(TINY.stems):
        got, rate = read_audio(f"{root}/out/one/{stem}.wav")
        assert rate == 44100 and got.shape == one.shape
        np.testing.assert_allclose(got, want[:, :, s], atol=2e-5)
        got, rate = read_audio(f"{root}/out/sub/two/{stem}.wav")
        assert (rate, got.shape) == (48000, (72000, 2))

    bucket = gcs_emulator.client().bucket(root[len("gs://"):])
    generations = {p: bucket.get_blob(f"out/{p}").generation for p in written}
    assert separate("r2") == 0
    assert {t: s for t, (s, _) in rows_of(db, "r2").items()} == {
        "one": "skipped", "sub/two": "skipped", "broken": "failed"}
    assert objects(f"{root}/out") == written
    assert {p: bucket.get_blob(f"out/{p}").generation for p in written} == generations
