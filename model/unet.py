"""Spleeter's U-Net as one Keras 3 model holding one U-Net per stem.

The model maps a batch of magnitude spectrogram segments ``(B, T, F, C)`` (float32, linear
magnitudes) to every stem's magnitude estimate ``(B, T, F, C, S)`` (float32): the stem's mask times
the input, stems in ``cfg.stems`` order. This is Spleeter's ``<stem>_spectrogram`` output.

Each stem's U-Net follows Spleeter's graph:

- encoder ``enc1..enc6``: Conv2D 5x5 stride 2 'same' (16, 32, 64, 128, 256, 512 filters), each
  followed by BatchNorm (eps 1e-3) then the encoder activation. The 6th BatchNorm feeds nothing in
  Spleeter's graph, so it is left out here (its checkpoint variables are skipped on import).
- decoder ``dec1..dec6``: Conv2DTranspose 5x5 stride 2 'same' (256, 128, 64, 32, 16, 1 filters),
  each followed by the decoder activation then BatchNorm; Dropout 0.5 after the first three
  (training only). ``dec1`` reads the raw output of ``enc6``'s convolution; ``dec(k+1)``
  (k = 1..5) reads the channel concatenation [raw (pre-BatchNorm) output of ``enc(6-k)``'s
  convolution, output of ``dec_k``], in that order.
- ``mask`` : Conv2D 2 filters 4x4 dilation 2 'same' giving mask logits, one per channel.

The mask convolution (``DilatedMaskConv``) is computed another way than Keras would, with the
same weights and the same result up to float round-off: as 16 shifted multiply-adds fused by XLA.
TensorFlow's CPU kernel for a 1-channel dilated convolution runs at about 1 GFLOP/s; this makes
the whole 2stems model 1.09x faster at batch 4 (``python3 -m bench.unet_flops`` for the layers).

Masks are per-stem sigmoids, or (``cfg.softmax``, 5stems) a softmax across the stems' logits.
Layer names are ``<stem>_enc<i>_conv``, ``<stem>_enc<i>_bn``, ``<stem>_dec<i>_deconv``,
``<stem>_dec<i>_bn`` and ``<stem>_mask`` so that checkpoint import is a name mapping.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from stembeam.model.config import ModelConfig

ENCODER_FILTERS = (16, 32, 64, 128, 256, 512)
DECODER_FILTERS = (256, 128, 64, 32, 16, 1)
KERNEL_SIZE = (5, 5)
STRIDES = (2, 2)
BN_EPSILON = 1e-3
DROPOUT_RATE = 0.5
DROPOUT_LAYERS = 3
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
PRECISION_CHOICES = ("auto", *PRECISIONS)
# Layers kept in float32 in every precision (name suffixes): the 2-channel input conv, the
# 1-channel last deconv with its activation and BatchNorm, and the dilated mask conv. They hold
# 0.5 % of the FLOPs, but their bfloat16 kernels are slow on CPUs (few channels to vectorise).
THIN_LAYERS = ("_enc1_conv", "_dec6_deconv", "_dec6_act", "_dec6_bn", "_mask")
# Median SDR change of bfloat16 against float32 (worst stem, dB; bench/precision.py sdr: 0.00 on
# an Intel Xeon and on an AMD Zen 4): ``auto`` picks bfloat16 only while it costs at most
# BF16_MAX_SDR_COST_DB.
BF16_SDR_COST_DB = 0.0
BF16_MAX_SDR_COST_DB = 0.05
# CPUs on which bfloat16 beats float32 (bench.unet_flops --precision-ab, BENCHMARKS.md sections 7,
# 9 and 10): any with AMX, and AMD ones with AVX512_BF16 (thin layers float32: a Zen 4 1.30-1.37x
# float32 at batch 1 and 4, a Zen 5 1.18-1.40x at batch 1-8). Intel CPUs with AVX512_BF16 but no
# AMX ran it at 0.59-0.71x float32, so ``auto`` keeps float32 there.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16",)
NATIVE_BF16_CPU_FLAGS_BY_VENDOR = {"AuthenticAMD": ("avx512_bf16",)}


@tf.function(jit_compile=True)
def _dilated_taps(padded: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Sum over the 4x4 taps (dilation 2) of shifted ``padded`` (B, T + 6, F + 6, 1) times
    ``kernel[a, b, 0]`` (C_out,): (B, T, F, C_out). XLA fuses the 16 terms into one pass."""
    t, f = padded.shape[1] - 6, padded.shape[2] - 6
    out = 0.0
    for a in range(4):
        for b in range(4):
            out += padded[:, 2 * a : 2 * a + t, 2 * b : 2 * b + f, :] * kernel[a, b, 0]
    return out


@keras.saving.register_keras_serializable(package="stembeam")
class DilatedMaskConv(layers.Conv2D):
    """``Conv2D(filters, (4, 4), dilation_rate=(2, 2), padding='same')`` on a 1-channel input,
    same kernel (4, 4, 1, C_out) and bias, computed as 16 shifted multiply-adds:
    (B, T, F, 1) -> (B, T, F, C_out)."""

    def build(self, input_shape):
        if (
            tuple(self.kernel_size) != (4, 4)
            or tuple(self.dilation_rate) != (2, 2)
            or self.padding != "same"
            or tuple(self.strides) != (1, 1)
            or input_shape[-1] != 1
        ):
            raise ValueError(
                "DilatedMaskConv supports only 4x4, dilation 2, stride 1, 'same' "
                f"on one input channel, got input shape {input_shape}"
            )
        super().build(input_shape)

    def call(self, inputs):
        # 'same' with effective size 7 pads 3 on each side
        padded = tf.pad(inputs, [[0, 0], [3, 3], [3, 3], [0, 0]])
        outputs = _dilated_taps(padded, ops.cast(self.kernel, self.compute_dtype))
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, self.compute_dtype)
        return self.activation(outputs) if self.activation is not None else outputs


@keras.saving.register_keras_serializable(package="stembeam")
class StemMasks(layers.Layer):
    """Turns per-stem mask logits into masked magnitudes, in float32.

    Call with ``[mix, logits_0, ..., logits_{S-1}]``: ``mix`` (B, T, F, C) magnitudes and each
    logits tensor (B, T, F, C). Returns (B, T, F, C, S) = mask * mix, where the mask is
    ``sigmoid(logits)`` per stem or, with ``softmax=True``, the softmax over the S stems.
    """

    def __init__(self, softmax: bool = False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.softmax = softmax

    def call(self, inputs):
        mix, *logits = inputs
        stacked = ops.stack([ops.cast(x, "float32") for x in logits], axis=-1)
        masks = ops.softmax(stacked, axis=-1) if self.softmax else ops.sigmoid(stacked)
        return masks * ops.expand_dims(ops.cast(mix, "float32"), -1)

    def compute_output_shape(self, input_shapes):
        return (*input_shapes[0], len(input_shapes) - 1)

    def get_config(self):
        return {**super().get_config(), "softmax": self.softmax}


def _activation(kind: str, name: str, dtype) -> layers.Layer:
    """The Keras layer for an activation name from ``ModelConfig``."""
    if kind == "leaky_relu":
        return layers.LeakyReLU(negative_slope=0.2, name=name, dtype=dtype)
    if kind in ("relu", "elu"):
        return layers.Activation(kind, name=name, dtype=dtype)
    raise ValueError(f"unknown activation {kind!r}; expected 'leaky_relu', 'relu' or 'elu'")


def _stem_logits(
    mix, stem: str, cfg: ModelConfig, dtype: Callable[[str], keras.DTypePolicy]
) -> keras.KerasTensor:
    """One stem's U-Net on ``mix`` (B, T, F, C); returns its mask logits (B, T, F, C).
    ``dtype(name)`` is the dtype policy of the layer called ``name``."""
    raw_convs = []
    x = mix
    for i, filters in enumerate(ENCODER_FILTERS, start=1):
        name = f"{stem}_enc{i}_conv"
        conv = layers.Conv2D(
            filters, KERNEL_SIZE, strides=STRIDES, padding="same", name=name, dtype=dtype(name)
        )(x)
        raw_convs.append(conv)
        if i < len(ENCODER_FILTERS):
            name = f"{stem}_enc{i}_bn"
            x = layers.BatchNormalization(epsilon=BN_EPSILON, name=name, dtype=dtype(name))(conv)
            name = f"{stem}_enc{i}_act"
            x = _activation(cfg.encoder_activation, name, dtype(name))(x)
    x = raw_convs[-1]
    for i, filters in enumerate(DECODER_FILTERS, start=1):
        name = f"{stem}_dec{i}_deconv"
        x = layers.Conv2DTranspose(
            filters, KERNEL_SIZE, strides=STRIDES, padding="same", name=name, dtype=dtype(name)
        )(x)
        name = f"{stem}_dec{i}_act"
        x = _activation(cfg.decoder_activation, name, dtype(name))(x)
        name = f"{stem}_dec{i}_bn"
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=name, dtype=dtype(name))(x)
        if i <= DROPOUT_LAYERS:
            name = f"{stem}_dec{i}_dropout"
            x = layers.Dropout(DROPOUT_RATE, name=name, dtype=dtype(name))(x)
        if i < len(DECODER_FILTERS):
            skip = raw_convs[len(ENCODER_FILTERS) - 1 - i]
            name = f"{stem}_dec{i}_skip"
            x = layers.Concatenate(axis=-1, name=name, dtype=dtype(name))([skip, x])
    name = f"{stem}_mask"
    return DilatedMaskConv(
        cfg.channels, (4, 4), dilation_rate=(2, 2), padding="same", name=name, dtype=dtype(name)
    )(x)


def build_unet(
    cfg: ModelConfig, precision: str = "float32", thin_layers_float32: bool = True
) -> keras.Model:
    """Builds the multi-stem U-Net for ``cfg``.

    Args:
      cfg: model configuration; ``cfg.T`` and ``cfg.F`` must be multiples of 64 (six stride-2
        levels).
      precision: ``'float32'``, ``'bfloat16'`` for Keras mixed precision (bfloat16 compute,
        float32 variables, float32 masks and output), or ``'auto'`` (``resolve_precision``).
      thin_layers_float32: keep the ``THIN_LAYERS`` in float32 in a bfloat16 model (False only
        to measure what it saves).

    Returns:
      A Keras model mapping (B, T, F, C) float32 magnitudes to (B, T, F, C, S) float32 stem
      magnitude estimates, S = ``len(cfg.stems)`` in ``cfg.stems`` order.
    """
    precision = resolve_precision(precision)
    if cfg.T % 64 or cfg.F % 64:
        raise ValueError(f"T and F must be multiples of 64, got T={cfg.T}, F={cfg.F}")
    main = keras.DTypePolicy(PRECISIONS[precision])
    thin = keras.DTypePolicy("float32") if thin_layers_float32 else main

    def dtype(name: str) -> keras.DTypePolicy:
        return thin if name.endswith(THIN_LAYERS) else main

    mix = keras.Input((cfg.T, cfg.F, cfg.channels), name="magnitude", dtype="float32")
    logits = [_stem_logits(mix, stem, cfg, dtype) for stem in cfg.stems]
    out = StemMasks(softmax=cfg.softmax, name="stem_masks")([mix, *logits])
    return keras.Model(mix, out, name=f"unet_{cfg.name}")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU runs bfloat16 convolutions faster than float32: one of
    ``NATIVE_BF16_CPU_FLAGS``, or of its vendor's ``NATIVE_BF16_CPU_FLAGS_BY_VENDOR``, among the
    flags of ``cpuinfo`` (False where the file is missing, e.g. not Linux)."""
    try:
        with open(cpuinfo) as f:
            lines = f.readlines()
    except OSError:
        return False
    flags = {word for line in lines if line.startswith("flags") for word in line.split()}
    vendors = {line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")}
    native = set(NATIVE_BF16_CPU_FLAGS)
    for vendor in vendors:
        native.update(NATIVE_BF16_CPU_FLAGS_BY_VENDOR.get(vendor, ()))
    return bool(native & flags)


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """``'float32'`` or ``'bfloat16'`` for a ``PRECISION_CHOICES`` value.

    ``auto`` is bfloat16 where it is native (a visible GPU, or ``cpu_has_native_bf16``) and
    its measured SDR cost ``BF16_SDR_COST_DB`` is within ``BF16_MAX_SDR_COST_DB``; float32
    elsewhere.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {', '.join(PRECISION_CHOICES)}"
        )
    if precision != "auto":
        return precision
    if BF16_SDR_COST_DB > BF16_MAX_SDR_COST_DB:
        return "float32"
    return "bfloat16" if gpu_visible() or cpu_has_native_bf16(cpuinfo) else "float32"


def batch_predictor(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """``model`` in inference mode as a function of a (B, T', F, C) float32 array, any B, T' a
    multiple of 64 frames (``model.segmentation.SegmentPlan.length``), returning the
    (B, T', F, C, S) float32 estimates as a numpy array.

    The forward pass is traced once per T' for every batch size (Keras' ``predict_on_batch``
    retraces for each new batch size, about 1 s each time); only the small XLA mask kernel is
    compiled per batch size.
    """
    _, t, f, c = model.input.shape
    forwards = {}  # frames -> traced forward pass

    def predict(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        frames = batch.shape[1]
        if frames not in forwards:  # model.call: the layers take any multiple of 64 frames
            run = model if frames == t else model.call
            forwards[frames] = tf.function(
                lambda x: run(x, training=False),
                input_signature=[tf.TensorSpec((None, frames, f, c), tf.float32)],
            )
        return forwards[frames](batch).numpy()

    return predict
