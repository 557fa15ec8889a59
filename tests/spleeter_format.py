"""Test helpers: Spleeter-format TF1 checkpoints with known values, and an independent U-Net.

``write_spleeter_checkpoint`` names variables the way Spleeter's graph does (Keras auto-naming,
numbered globally across stems in instrument order), written with a tf.compat.v1 Saver like the
released checkpoints. ``reference_unet`` recomputes one stem's U-Net with raw TensorFlow ops
straight from those variable names, following the layer wiring of Spleeter's published
architecture; it shares no code with ``model.unet``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

ENC = (16, 32, 64, 128, 256, 512)
DEC = (256, 128, 64, 32, 16, 1)


def _name(base: str, i: int) -> str:
    return base if i == 0 else f"{base}_{i}"


def spleeter_variables(
    instrument_order: tuple[str, ...], channels: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random values for every variable of a Spleeter U-Net checkpoint.

    Kernels are drawn at a He-like scale so activations stay O(1); BatchNorm statistics are
    random too (positive variances), so a wrong mapping changes the output.
    """
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    conv = deconv = bn = 0

    def kernel(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def add_bn(n):
        nonlocal bn
        name = _name("batch_normalization", bn)
        values[f"{name}/gamma"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
        values[f"{name}/beta"] = rng.normal(0, 0.1, n).astype(np.float32)
        values[f"{name}/moving_mean"] = rng.normal(0, 0.1, n).astype(np.float32)
        values[f"{name}/moving_variance"] = rng.uniform(0.5, 2.0, n).astype(np.float32)
        bn += 1

    for _ in instrument_order:
        cin = channels
        for f in ENC:
            name = _name("conv2d", conv)
            values[f"{name}/kernel"] = kernel((5, 5, cin, f), 25 * cin)
            values[f"{name}/bias"] = rng.normal(0, 0.05, f).astype(np.float32)
            conv += 1
            add_bn(f)
            cin = f
        for k, f in enumerate(DEC):
            name = _name("conv2d_transpose", deconv)
            values[f"{name}/kernel"] = kernel((5, 5, f, cin), 25 * cin / 4)
            values[f"{name}/bias"] = rng.normal(0, 0.05, f).astype(np.float32)
            deconv += 1
            add_bn(f)
            cin = f + (ENC[4 - k] if k < 5 else 0)
        name = _name("conv2d", conv)
        values[f"{name}/kernel"] = kernel((4, 4, 1, channels), 16)
        values[f"{name}/bias"] = rng.normal(0, 0.05, channels).astype(np.float32)
        conv += 1
    values["global_step"] = np.int64(1000)
    return values


def write_spleeter_checkpoint(prefix: str, values: dict[str, np.ndarray]) -> None:
    """Saves ``values`` as a TF1 checkpoint at ``prefix`` (``prefix.index``, ``.data-...``)."""
    with tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(v, name=k) for k, v in values.items()]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False, write_state=False)


def reference_logits(
    values: dict[str, np.ndarray], k: int, x: np.ndarray, encoder: str, decoder: str
) -> np.ndarray:
    """Mask logits of the ``k``-th instrument's U-Net on ``x`` (B, T, F, C), with raw TF ops."""
    act = {"leaky_relu": lambda t: tf.nn.leaky_relu(t, 0.2), "relu": tf.nn.relu, "elu": tf.nn.elu}

    def v(base, i, w):
        return tf.constant(values[f"{_name(base, i)}/{w}"])

    def bn(t, i):
        return tf.nn.batch_normalization(
            t,
            v("batch_normalization", i, "moving_mean"),
            v("batch_normalization", i, "moving_variance"),
            v("batch_normalization", i, "beta"),
            v("batch_normalization", i, "gamma"),
            1e-3,
        )

    t = tf.constant(x)
    convs = []
    for i in range(6):
        c = tf.nn.conv2d(t, v("conv2d", 7 * k + i, "kernel"), 2, "SAME") + v(
            "conv2d", 7 * k + i, "bias"
        )
        convs.append(c)
        t = act[encoder](bn(c, 12 * k + i))
    t = convs[5]
    for j in range(6):
        w = v("conv2d_transpose", 6 * k + j, "kernel")
        shape = [t.shape[0], t.shape[1] * 2, t.shape[2] * 2, w.shape[2]]
        t = tf.nn.conv2d_transpose(t, w, shape, 2, "SAME") + v(
            "conv2d_transpose", 6 * k + j, "bias"
        )
        t = bn(act[decoder](t), 12 * k + 6 + j)
        if j < 5:
            t = tf.concat([convs[4 - j], t], axis=-1)
    out = tf.nn.conv2d(t, v("conv2d", 7 * k + 6, "kernel"), 1, "SAME", dilations=2)
    return (out + v("conv2d", 7 * k + 6, "bias")).numpy()
