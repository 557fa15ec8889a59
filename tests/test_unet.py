"""U-Net builder: shapes for every preset, parameter counts, mask semantics, precision."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from stembeam.model.config import SPLEETER_PRESETS, ModelConfig, spleeter_config
from stembeam.model.unet import (
    BF16_MAX_SDR_COST_DB,
    BF16_SDR_COST_DB,
    DilatedMaskConv,
    build_unet,
    resolve_precision,
)

ENC = (16, 32, 64, 128, 256, 512)
DEC = (256, 128, 64, 32, 16, 1)


def expected_params_per_stem(channels: int = 2) -> int:
    """Spleeter's U-Net parameter count per stem, from its layer list (the 6th encoder
    BatchNorm is unused and left out)."""
    n, cin = 0, channels
    for i, f in enumerate(ENC):
        n += 25 * cin * f + f + (4 * f if i < 5 else 0)
        cin = f
    for k, f in enumerate(DEC):
        n += 25 * cin * f + f + 4 * f
        cin = f + (ENC[4 - k] if k < 5 else 0)
    return n + 16 * cin * channels + channels


def _seeded(model: keras.Model, seed: int = 0) -> keras.Model:
    """Gives every weight (BatchNorm statistics included) seeded random values."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            rng.uniform(0.5, 1.5, w.shape).astype("float32")
            if "variance" in w.path or "gamma" in w.path
            else rng.normal(0, 0.3, w.shape).astype("float32")
            for w in model.weights
        ]
    )
    return model


def test_param_count_matches_released_checkpoint_size():
    # The released 2stems model.data-00000-of-00001 is 78,614,080 bytes: float32 weights of two
    # U-Nets including the two unused 512-channel encoder BatchNorms (4 x 512 floats each), plus
    # an int64 global_step.
    released_floats = (78_614_080 - 8) // 4
    assert 2 * expected_params_per_stem() + 2 * 4 * 512 == released_floats


@pytest.mark.parametrize("name", ["2stems", "4stems-16kHz", "5stems"])
def test_full_size_param_count_and_shapes(name):
    cfg = spleeter_config(name)
    model = build_unet(cfg)
    assert model.count_params() == len(cfg.stems) * expected_params_per_stem()
    bins = 1536 if name.endswith("16kHz") else 1024
    assert model.input_shape == (None, 512, bins, 2)
    assert model.output_shape == (None, 512, bins, 2, len(cfg.stems))


@pytest.mark.parametrize("name", sorted(SPLEETER_PRESETS))
def test_tiny_variant_shapes(name):
    cfg = dataclasses.replace(spleeter_config(name), T=64, F=128 if name.endswith("16kHz") else 64)
    x = np.random.default_rng(1).uniform(0, 2, (3, cfg.T, cfg.F, 2)).astype("float32")
    y = build_unet(cfg)(x, training=False).numpy()
    assert y.shape == (3, cfg.T, cfg.F, 2, len(cfg.stems))
    assert y.dtype == np.float32


def test_softmax_masks_sum_to_one():
    cfg = ModelConfig(
        name="tiny5", stems=("vocals", "drums", "bass", "piano", "other"), T=64, F=64, softmax=True
    )
    model = _seeded(build_unet(cfg))
    x = np.random.default_rng(2).uniform(0.1, 3, (2, 64, 64, 2)).astype("float32")
    y = model(x, training=False).numpy()
    np.testing.assert_allclose(y.sum(axis=-1), x, rtol=1e-5)
    # the stems differ: the masks are not all 1/S
    assert np.abs(y[..., 0] - y[..., 1]).max() > 1e-3 * x.max()


def test_sigmoid_masks_lie_in_unit_interval():
    cfg = ModelConfig(
        name="tiny2",
        stems=("vocals", "accompaniment"),
        T=64,
        F=64,
        encoder_activation="leaky_relu",
        decoder_activation="relu",
    )
    model = _seeded(build_unet(cfg))
    x = np.random.default_rng(3).uniform(0.1, 3, (2, 64, 64, 2)).astype("float32")
    masks = model(x, training=False).numpy() / x[..., None]
    assert masks.min() >= 0 and masks.max() <= 1
    assert masks.std() > 1e-3


def test_dropout_only_in_training():
    cfg = ModelConfig(name="tiny", stems=("a",), T=64, F=64)
    model = _seeded(build_unet(cfg))
    x = np.random.default_rng(4).uniform(0.1, 3, (1, 64, 64, 2)).astype("float32")
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    dropouts = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == ["a_dec1_dropout", "a_dec2_dropout", "a_dec3_dropout"]


def test_bfloat16_close_to_float32():
    cfg = ModelConfig(name="tiny", stems=("a", "b"), T=64, F=64)
    f32 = _seeded(build_unet(cfg))
    bf16 = build_unet(cfg, precision="bfloat16")
    bf16.set_weights(f32.get_weights())
    assert bf16.get_layer("a_enc2_conv").compute_dtype == "bfloat16"
    x = np.random.default_rng(5).uniform(0.1, 3, (2, 64, 64, 2)).astype("float32")
    y32 = f32(x, training=False).numpy()
    y16 = bf16(x, training=False).numpy()
    assert y16.dtype == np.float32
    # bfloat16 keeps 8 mantissa bits: masks agree to a few percent
    assert np.abs(y16 - y32).mean() < 0.05 * np.abs(y32).mean()


def test_rejects_bad_sizes_and_precision():
    with pytest.raises(ValueError, match="multiples of 64"):
        build_unet(ModelConfig(name="x", stems=("a",), T=100, F=64))
    with pytest.raises(ValueError, match="precision"):
        build_unet(ModelConfig(name="x", stems=("a",), T=64, F=64), precision="float16")


@pytest.mark.parametrize("shape", [(2, 16, 24, 2), (1, 9, 5, 3)])
def test_dilated_mask_conv_equals_keras_conv(shape):
    batch, t, f, c_out = shape
    rng = np.random.default_rng(14)
    x = rng.normal(size=(batch, t, f, 1)).astype("float32")
    reference = keras.layers.Conv2D(c_out, (4, 4), dilation_rate=(2, 2), padding="same")
    fast = DilatedMaskConv(c_out, (4, 4), dilation_rate=(2, 2), padding="same")
    reference.build(x.shape)
    fast.build(x.shape)
    reference.set_weights(
        [rng.normal(size=v.shape).astype("float32") for v in reference.get_weights()]
    )
    fast.set_weights(reference.get_weights())
    np.testing.assert_allclose(fast(x).numpy(), reference(x).numpy(), rtol=1e-5, atol=1e-5)


def test_dilated_mask_conv_gradients_equal_keras():
    # training goes through the fast layer: its gradients must be the dilated convolution's
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(15).normal(size=(2, 12, 10, 1)).astype("float32"))
    grads = []
    for cls in (keras.layers.Conv2D, DilatedMaskConv):
        layer = cls(2, (4, 4), dilation_rate=(2, 2), padding="same")
        layer.build(x.shape)
        layer.set_weights(
            [
                np.random.default_rng(16).normal(size=v.shape).astype("float32")
                for v in layer.get_weights()
            ]
        )
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x)))
        grads.append([g.numpy() for g in tape.gradient(loss, [x, *layer.trainable_variables])])
    for got, expected in zip(grads[1], grads[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_dilated_mask_conv_refuses_other_geometries():
    with pytest.raises(ValueError, match="one input channel"):
        DilatedMaskConv(2, (4, 4), dilation_rate=(2, 2), padding="same").build((1, 8, 8, 2))


def test_thin_layers_stay_float32_in_bfloat16():
    cfg = ModelConfig(name="tiny", stems=("a", "b"), T=64, F=64)
    f32 = _seeded(build_unet(cfg))
    mixed = build_unet(cfg, precision="bfloat16")
    throughout = build_unet(cfg, precision="bfloat16", thin_layers_float32=False)
    float32_layers = {layer.name for layer in mixed.layers if layer.compute_dtype == "float32"}
    thin = {
        f"{s}_{n}"
        for s in cfg.stems
        for n in ("enc1_conv", "dec6_deconv", "dec6_act", "dec6_bn", "mask")
    }
    assert float32_layers == thin | {"magnitude", "stem_masks"}
    assert {layer.compute_dtype for layer in throughout.layers if layer.name in thin} == {
        "bfloat16"
    }
    # the mask layer computes in float32: its output is float32 even though its input
    # (dec6's BatchNorm) and everything before dec6 run in bfloat16
    assert mixed.get_layer("a_mask").output.dtype == "float32"
    assert mixed.get_layer("a_dec5_bn").output.dtype == "bfloat16"
    x = np.random.default_rng(6).uniform(0.1, 3, (2, 64, 64, 2)).astype("float32")
    y32 = f32(x, training=False).numpy()
    for model in (mixed, throughout):
        model.set_weights(f32.get_weights())
        assert np.abs(model(x, training=False).numpy() - y32).mean() < 0.05 * np.abs(y32).mean()


def _cpuinfo(tmp_path, flags: str, vendor: str = "GenuineIntel") -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(
        "".join(
            f"processor\t: {i}\nvendor_id\t: {vendor}\nflags\t\t: fpu sse2 avx2 {flags}\n\n"
            for i in range(2)
        )
    )
    return str(path)


def test_resolve_precision(tmp_path, monkeypatch):
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert resolve_precision("float32", _cpuinfo(tmp_path, "amx_bf16")) == "float32"
    assert resolve_precision("bfloat16", _cpuinfo(tmp_path, "")) == "bfloat16"
    assert resolve_precision("auto", _cpuinfo(tmp_path, "amx_bf16 amx_tile")) == "bfloat16"
    # AVX512_BF16 without AMX ran bfloat16 slower than float32 on Intel, faster on AMD
    # (BENCHMARKS.md sections 7 and 9)
    expected = "bfloat16" if gpu else "float32"
    assert resolve_precision("auto", _cpuinfo(tmp_path, "avx512f avx512_bf16")) == expected
    amd = _cpuinfo(tmp_path, "avx512f avx512_bf16", vendor="AuthenticAMD")
    assert resolve_precision("auto", amd) == "bfloat16"
    amd_without = _cpuinfo(tmp_path, "avx512f", vendor="AuthenticAMD")
    assert resolve_precision("auto", amd_without) == expected
    assert resolve_precision("auto", str(tmp_path / "missing")) == expected
    assert BF16_SDR_COST_DB <= BF16_MAX_SDR_COST_DB
    monkeypatch.setattr("stembeam.model.unet.BF16_SDR_COST_DB", BF16_MAX_SDR_COST_DB + 0.01)
    assert resolve_precision("auto", _cpuinfo(tmp_path, "amx_bf16")) == "float32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float16")


def test_batch_predictor_takes_shorter_segments():
    """T' < T frames (a short last segment) give what a model built for T' with the same weights
    gives; the model's own T still works after."""
    from stembeam.model.unet import batch_predictor

    cfg = ModelConfig(name="tiny", stems=("vocals", "accompaniment"), T=128, F=64)
    model = _seeded(build_unet(cfg))
    short = build_unet(dataclasses.replace(cfg, T=64))
    short.set_weights(model.get_weights())
    predict = batch_predictor(model)
    x = np.random.default_rng(1).uniform(0, 1, (3, 64, 64, 2)).astype(np.float32)
    got = predict(x)
    assert got.shape == (3, 64, 64, 2, 2)
    np.testing.assert_allclose(got, short.predict_on_batch(x), rtol=1e-4, atol=1e-5)
    full = np.concatenate([x, x[:, ::-1]], axis=1)
    np.testing.assert_allclose(predict(full), model.predict_on_batch(full), rtol=1e-4, atol=1e-5)
