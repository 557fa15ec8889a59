"""Spleeter checkpoint import and model folders, against checkpoints written here."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from stembeam.model.checkpoint import (
    META_FILE,
    import_spleeter_checkpoint,
    load_model_folder,
    write_model_folder,
)
from stembeam.model.config import ModelConfig
from tests.spleeter_format import reference_logits, spleeter_variables, write_spleeter_checkpoint

TWO = ModelConfig(
    name="tiny2",
    stems=("vocals", "accompaniment"),
    T=64,
    F=64,
    encoder_activation="leaky_relu",
    decoder_activation="relu",
)
# 5stems-like: softmax, and a checkpoint instrument order that differs from the output order.
THREE = ModelConfig(name="tiny3", stems=("vocals", "drums", "piano"), T=64, F=128, softmax=True)
THREE_ORDER = ("vocals", "piano", "drums")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def two_stem_checkpoint(tmp_path_factory):
    values = spleeter_variables(TWO.stems, seed=11)
    prefix = str(tmp_path_factory.mktemp("ckpt2") / "model")
    write_spleeter_checkpoint(prefix, values)
    return prefix, values, import_spleeter_checkpoint(prefix, TWO)


def test_import_sets_exactly_the_checkpoint_values(two_stem_checkpoint):
    _, values, model = two_stem_checkpoint
    # second stem: conv2d_7.. / conv2d_transpose_6.. / batch_normalization_12..
    np.testing.assert_array_equal(
        model.get_layer("accompaniment_enc1_conv").kernel.numpy(), values["conv2d_7/kernel"]
    )
    np.testing.assert_array_equal(
        model.get_layer("accompaniment_mask").bias.numpy(), values["conv2d_13/bias"]
    )
    np.testing.assert_array_equal(
        model.get_layer("accompaniment_dec2_deconv").kernel.numpy(),
        values["conv2d_transpose_7/kernel"],
    )
    bn = model.get_layer("accompaniment_dec1_bn")
    np.testing.assert_array_equal(
        bn.moving_variance.numpy(), values["batch_normalization_18/moving_variance"]
    )
    np.testing.assert_array_equal(
        model.get_layer("vocals_enc5_bn").gamma.numpy(), values["batch_normalization_4/gamma"]
    )


def test_first_layer_matches_numpy_conv_bn(two_stem_checkpoint):
    _, values, model = two_stem_checkpoint
    probe = keras.Model(model.input, model.get_layer("vocals_enc1_act").output)
    x = np.random.default_rng(0).uniform(0, 2, (1, 64, 64, 2)).astype("float32")
    got = probe(x, training=False).numpy()[0]
    # 5x5 stride 2 'same' on 64: output 32, padding 1 before and 2 after
    padded = np.pad(x[0].astype(np.float64), ((1, 2), (1, 2), (0, 0)))
    k = values["conv2d/kernel"].astype(np.float64)
    conv = np.zeros((32, 32, 16))
    for i in range(32):
        for j in range(32):
            conv[i, j] = np.einsum("abc,abcd->d", padded[2 * i : 2 * i + 5, 2 * j : 2 * j + 5], k)
    conv += values["conv2d/bias"]
    bn = (conv - values["batch_normalization/moving_mean"]) / np.sqrt(
        values["batch_normalization/moving_variance"] + 1e-3
    ) * values["batch_normalization/gamma"] + values["batch_normalization/beta"]
    expected = np.where(bn > 0, bn, 0.2 * bn)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_two_stem_output_matches_raw_tf_reference(two_stem_checkpoint):
    _, values, model = two_stem_checkpoint
    x = np.random.default_rng(1).uniform(0, 2, (2, 64, 64, 2)).astype("float32")
    got = model(x, training=False).numpy()
    for k in range(2):
        expected = _sigmoid(reference_logits(values, k, x, "leaky_relu", "relu")) * x
        np.testing.assert_allclose(got[..., k], expected, rtol=1e-4, atol=1e-5)


def test_softmax_model_with_reordered_instruments(tmp_path):
    values = spleeter_variables(THREE_ORDER, seed=5)
    prefix = str(tmp_path / "model")
    write_spleeter_checkpoint(prefix, values)
    model = import_spleeter_checkpoint(prefix, THREE, instrument_order=THREE_ORDER)
    x = np.random.default_rng(2).uniform(0, 2, (1, 64, 128, 2)).astype("float32")
    got = model(x, training=False).numpy()
    logits = np.stack(
        [reference_logits(values, THREE_ORDER.index(s), x, "elu", "elu") for s in THREE.stems],
        axis=-1,
    )
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    expected = e / e.sum(axis=-1, keepdims=True) * x[..., None]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_missing_variable_is_a_clear_error(tmp_path):
    values = spleeter_variables(("vocals",), seed=1)  # one stem only
    prefix = str(tmp_path / "model")
    write_spleeter_checkpoint(prefix, values)
    with pytest.raises(ValueError, match="no variable conv2d_7/kernel"):
        import_spleeter_checkpoint(prefix, TWO)


def test_model_folder_round_trip(two_stem_checkpoint, tmp_path):
    _, values, model = two_stem_checkpoint
    folder = str(tmp_path / "folder")
    sha = write_model_folder(model, TWO, folder, source="test checkpoint")
    loaded, cfg, meta = load_model_folder(folder)
    assert cfg == TWO
    assert meta["source"] == "test checkpoint" and meta["sha256"] == sha
    x = np.random.default_rng(3).uniform(0, 2, (1, 64, 64, 2)).astype("float32")
    np.testing.assert_array_equal(
        loaded(x, training=False).numpy(), model(x, training=False).numpy()
    )
    np.testing.assert_array_equal(
        loaded.get_layer("vocals_dec3_deconv").kernel.numpy(), values["conv2d_transpose_2/kernel"]
    )
    bf16, _, _ = load_model_folder(folder, precision="bfloat16")
    assert bf16.get_layer("vocals_enc2_conv").compute_dtype == "bfloat16"


def test_model_folder_detects_changed_weights(two_stem_checkpoint, tmp_path):
    model = two_stem_checkpoint[2]
    folder = str(tmp_path / "folder")
    write_model_folder(model, TWO, folder, source="test")
    meta_path = os.path.join(folder, META_FILE)
    meta = json.load(open(meta_path))
    meta["sha256"] = "0" * 64
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(ValueError, match="corrupt"):
        load_model_folder(folder)


def _weights_by_name(model: keras.Model) -> dict[str, np.ndarray]:
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def test_model_folder_weights_equal_keras_loader(two_stem_checkpoint, tmp_path):
    # the weights read straight from model.keras are the ones Keras' own loader reads, every
    # one under the same layer/variable path, and the checkpoint's values
    _, values, model = two_stem_checkpoint
    folder = str(tmp_path / "folder")
    write_model_folder(model, TWO, folder, source="test")
    keras_loaded = keras.saving.load_model(os.path.join(folder, "model.keras"), compile=False)
    for precision in ("float32", "bfloat16"):
        loaded, _, _ = load_model_folder(folder, precision)
        got, expected = _weights_by_name(loaded), _weights_by_name(keras_loaded)
        assert got.keys() == expected.keys()
        for path, value in expected.items():
            np.testing.assert_array_equal(got[path], value, err_msg=path)
        np.testing.assert_array_equal(
            got["accompaniment_dec2_bn/moving_variance"],
            values["batch_normalization_19/moving_variance"],
        )


def test_model_folder_of_an_older_layout_loads(two_stem_checkpoint, tmp_path):
    # a folder saved when the mask layers were Keras' Conv2D (other archive names) loads
    # through Keras' loader into this version's layers, with the same outputs
    _, _, model = two_stem_checkpoint
    from stembeam.model.unet import DilatedMaskConv

    def older(layer):
        cls = keras.layers.Conv2D if isinstance(layer, DilatedMaskConv) else layer.__class__
        return cls.from_config(layer.get_config())

    old = keras.models.clone_model(model, clone_function=older)
    old.set_weights(model.get_weights())
    folder = str(tmp_path / "old")
    write_model_folder(old, TWO, folder, source="older layout")
    loaded, _, _ = load_model_folder(folder)
    assert isinstance(loaded.get_layer("vocals_mask"), DilatedMaskConv)
    x = np.random.default_rng(8).uniform(0, 2, (2, 64, 64, 2)).astype("float32")
    np.testing.assert_allclose(
        loaded(x, training=False).numpy(), old(x, training=False).numpy(), rtol=1e-5, atol=1e-6
    )
