"""`stembeam separate` from object store to object store: gs:// against gcp-storage-emulator and
s3:// against moto's S3 server, both on 127.0.0.1.

Catalog, model folder and output all live in the emulator's bucket; the command runs in this
process on its default runner (FnApiRunner, worker threads), under the loopback guard, so any
credential lookup or request that would leave the machine fails the test. Checked: glob listing,
streaming decode from the store, stems equal to an independent numpy separation, no chunk or
partial objects left, done-markers, a failed row for a broken file, and a rerun that skips
(objects not rewritten).
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

from stembeam.model.segmentation import DEFAULT_CONTEXT
from stembeam.pipeline.cli import main
from tests.audio_files import tone
from tests.conftest import TINY, numpy_separate, unet_predict


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
        return {
            t: (s, e)
            for t, s, e in db.execute(
                "select track_id, status, error from results where run_id = ?", (run_id,)
            )
        }


def objects(root: str) -> list[str]:
    listed = FileSystems.match([f"{root}/**"])[0].metadata_list
    return sorted(m.path[len(root) + 1 :] for m in listed)


def versions(store, root: str, paths: list[str]) -> dict[str, object]:
    """What changes when an object is rewritten: GCS generation, S3 ETag + modification time."""
    bucket = root.split("://")[1]
    if root.startswith("gs://"):
        blobs = store.client().bucket(bucket)
        return {p: blobs.get_blob(f"out/{p}").generation for p in paths}
    client = store.client()
    return {
        p: (lambda h: (h["ETag"], h["LastModified"]))(
            client.head_object(Bucket=bucket, Key=f"out/{p}")
        )
        for p in paths
    }


@pytest.fixture(params=["gs", "s3"])
def store(request):
    """The emulator of one object store (gs: gcp-storage-emulator, s3: moto)."""
    return request.getfixturevalue({"gs": "gcs_emulator", "s3": "s3_emulator"}[request.param])


@pytest.fixture
def catalog(store, tiny_model, loopback_only):
    """A bucket holding masters/ (two good tracks, one broken) and models/tiny/."""
    root = store.bucket("catalog")
    one, two = tone(2.5, seed=4), tone(1.5, 48000, seed=5)
    upload(f"{root}/masters/one.wav", wav_bytes(one, 44100))
    upload(f"{root}/masters/sub/two.flac", wav_bytes(two, 48000, "FLAC", "PCM_24"))
    upload(f"{root}/masters/broken.wav", b"RIFF\x00\x00\x00\x00WAVEnot audio")
    for name in sorted(os.listdir(tiny_model)):
        with open(os.path.join(tiny_model, name), "rb") as handle:
            upload(f"{root}/models/tiny/{name}", handle.read())
    return root, one


@pytest.mark.slow
def test_separate_store_to_store_then_rerun_skips(catalog, store, tiny_model, tmp_path):
    root, one = catalog
    db = str(tmp_path / "results.sqlite")

    def separate(run_id: str) -> int:
        return main(
            [
                "separate",
                "--input",
                f"{root}/masters/**",
                "--output",
                f"{root}/out",
                "--model",
                f"{root}/models/tiny",
                "--results",
                f"sqlite:///{db}",
                "--model_cache",
                str(tmp_path / "cache"),
                "--run_id",
                run_id,
                "--residual",
                "none",
                "--precision",  # as the numpy reference (auto picks bfloat16 on some CPUs)
                "float32",
            ]
        )  # as the numpy reference separates

    assert separate("r1") == 3  # the broken track failed; the others are written
    rows = rows_of(db, "r1")
    assert {t: s for t, (s, _) in rows.items()} == {
        "one": "ok",
        "sub/two": "ok",
        "broken": "failed",
    }
    assert rows["broken"][1]

    written = objects(f"{root}/out")
    stems = [f"{track}/{stem}.wav" for track in ("one", "sub/two") for stem in TINY.stems]
    markers = [p for p in written if p.startswith(".stembeam/")]
    assert sorted(set(written) - set(markers)) == sorted(stems)  # no partial files
    # only the done-markers remain of the run's own files (no lock, no staging files)
    assert sorted(markers) == [".stembeam/done/one.json", ".stembeam/done/sub/two.json"]

    model = keras.saving.load_model(os.path.join(tiny_model, "model.keras"), compile=False)
    want = numpy_separate(one, unet_predict(model), TINY, DEFAULT_CONTEXT)
    for s, stem in enumerate(TINY.stems):
        got, rate = read_audio(f"{root}/out/one/{stem}.wav")
        assert rate == 44100 and got.shape == one.shape
        np.testing.assert_allclose(got, want[:, :, s], atol=2e-5)
        got, rate = read_audio(f"{root}/out/sub/two/{stem}.wav")
        assert (rate, got.shape) == (48000, (72000, 2))

    before = versions(store, root, written)
    assert separate("r2") == 3
    assert {t: s for t, (s, _) in rows_of(db, "r2").items()} == {
        "one": "skipped",
        "sub/two": "skipped",
        "broken": "failed",
    }
    assert objects(f"{root}/out") == written
    assert versions(store, root, written) == before
