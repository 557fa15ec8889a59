"""U-Net efficiency: achieved GFLOP/s of the model's forward pass against this machine's peak.

FLOPs are counted analytically from the layer shapes, one multiply-add = 2 FLOPs:
  Conv2D           2 * H_out * W_out * C_out * (k_h * k_w * C_in)
  Conv2DTranspose  2 * H_in  * W_in  * C_in  * (k_h * k_w * C_out)
('same' padding counted as full kernels; BatchNorm, activations, masks are not counted: they are
<1% of the FLOPs but memory bound). Spleeter's U-Net on one (512, 1024, 2) segment: 12.4 GFLOP
per stem.

Two ceilings, both measured here in the same run:
  conv peak    every Conv2D / Conv2DTranspose of the model timed in isolation at batch
               ``--peak-batch``; ceiling = sum of their FLOPs / sum of their times, i.e. the speed
               the whole model would reach if every conv ran as fast as it does alone;
  matmul peak  a 4096^3 matmul, the machine's arithmetic ceiling for the dtype.

A/B of the mask convolution: the same model with Keras' own dilated Conv2D as the mask layer
instead of ``model.unet.DilatedMaskConv`` (same weights), both timed in alternation, ``--runs``
calls each at ``--ab-batch``.

A/B of the precisions (``--precision-ab``): float32, bfloat16 with the thin layers in float32
(``build_unet``'s default) and bfloat16 throughout, same weights, calls interleaved, at each
``--batches`` size; prints medians, speed-ups over float32 and the largest output difference.

    python3 -m bench.unet_flops [--preset spleeter:2stems] [--batches 1 2 4 8] [--runs 3]
    python3 -m bench.unet_flops --precision-ab [--batches 1 4] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import keras
import tensorflow as tf

from stembeam.model.config import spleeter_config
from stembeam.model.unet import DilatedMaskConv, batch_predictor, build_unet

CONV_TYPES = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)


def conv_flops(layer: keras.layers.Layer) -> int:
    """FLOPs of one sample through ``layer`` (formulas in the module docstring)."""
    k_h, k_w = layer.kernel_size
    _, h_in, w_in, c_in = layer.input.shape
    _, h_out, w_out, c_out = layer.output.shape
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return 2 * h_in * w_in * c_in * k_h * k_w * c_out
    return 2 * h_out * w_out * c_out * k_h * k_w * c_in


def convs(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, CONV_TYPES)]


def median_seconds(fn, arg, runs: int) -> float:
    """Median wall time of ``fn(arg)`` over ``runs`` calls after one warm-up call."""
    fn(arg).numpy()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(arg).numpy()  # .numpy() waits for the result
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def isolated_conv_seconds(layer: keras.layers.Layer, batch: int, runs: int) -> float:
    """Median seconds of a fresh copy of ``layer`` (same config and dtype policy) on a batch."""
    clone = layer.__class__.from_config(layer.get_config())
    shape = (batch, *layer.input.shape[1:])
    x = tf.random.normal(shape, dtype=tf.float32)
    x = tf.cast(x, clone.compute_dtype)
    clone.build(shape)
    return median_seconds(tf.function(clone), x, runs)


def matmul_gflops(dtype: tf.DType, runs: int, n: int = 4096) -> float:
    a = tf.cast(tf.random.normal((n, n)), dtype)
    seconds = median_seconds(tf.function(lambda m: tf.matmul(m, m)), a, runs)
    return 2 * n**3 / seconds / 1e9


def with_keras_mask_conv(model: keras.Model) -> keras.Model:
    """A copy of ``model`` whose mask layers are Keras' dilated Conv2D, same weights."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        cls = keras.layers.Conv2D if isinstance(layer, DilatedMaskConv) else layer.__class__
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def mask_conv_ab(model: keras.Model, batch: int, runs: int) -> None:
    """Prints the median forward time with DilatedMaskConv and with Keras' Conv2D masks."""
    cfg_shape = model.input.shape[1:]
    x = tf.random.uniform((batch, *cfg_shape)).numpy()
    predictors = {
        "DilatedMaskConv": batch_predictor(model),
        "keras Conv2D": batch_predictor(with_keras_mask_conv(model)),
    }
    difference = abs(predictors["DilatedMaskConv"](x) - predictors["keras Conv2D"](x)).max()
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(runs):
        for name, predict in predictors.items():
            t0 = time.perf_counter()
            predict(x)
            times[name].append(time.perf_counter() - t0)
    fast, slow = (statistics.median(times[k]) for k in predictors)
    print(
        f"mask conv A/B at batch {batch}, {runs} alternating calls each (largest output "
        f"difference {difference:.1e}): DilatedMaskConv {fast:.2f} s, Keras Conv2D {slow:.2f} s "
        f"per call: {slow / fast:.2f}x"
    )


def precision_ab(cfg, batches: list[int], runs: int) -> None:
    """Interleaved A/B of float32, bfloat16 (thin layers float32) and bfloat16 throughout."""
    reference = build_unet(cfg, "float32")
    weights = reference.get_weights()
    variants = {"float32": reference}
    for name, thin in (("bfloat16 (thin float32)", True), ("bfloat16 throughout", False)):
        variants[name] = build_unet(cfg, "bfloat16", thin_layers_float32=thin)
        variants[name].set_weights(weights)
    flops = sum(conv_flops(layer) for layer in convs(reference))
    predictors = {name: batch_predictor(model) for name, model in variants.items()}
    for batch in batches:
        x = tf.random.uniform((batch, cfg.T, cfg.F, cfg.channels), 0, 2).numpy()
        outputs = {name: predict(x) for name, predict in predictors.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in predictors}
        for _ in range(runs):
            for name, predict in predictors.items():
                t0 = time.perf_counter()
                predict(x)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["float32"])
        print(f"batch {batch}, {runs} interleaved calls each, load {os.getloadavg()[0]:.2f}")
        for name, ts in times.items():
            seconds = statistics.median(ts)
            error = abs(outputs[name] - outputs["float32"]).max() / abs(outputs["float32"]).max()
            print(
                f"  {name:26s} {seconds:6.2f} s/call  {batch * flops / seconds / 1e9:5.0f} "
                f"GFLOP/s  {base / seconds:5.2f}x float32  max |diff| / max {error:.1e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="spleeter:2stems")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--peak-batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ab-batch", type=int, default=4)
    parser.add_argument(
        "--precision-ab", action="store_true", help="only the interleaved A/B of the precisions"
    )
    args = parser.parse_args()

    cfg = spleeter_config(args.preset)
    if args.precision_ab:
        precision_ab(cfg, args.batches, args.runs)
        return
    print(
        f"{cfg.name}: {len(cfg.stems)} U-Nets, segment ({cfg.T}, {cfg.F}, {cfg.channels}); "
        f"TF {tf.__version__}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    )
    for precision in args.precisions:
        model = build_unet(cfg, precision=precision)
        layers = convs(model)
        flops = sum(conv_flops(layer) for layer in layers)  # per segment, all stems
        print(
            f"\n[{precision}] {flops / 1e9:.2f} GFLOP per segment "
            f"({flops / len(cfg.stems) / 1e9:.2f} per stem), "
            f"{flops / (cfg.T * cfg.frame_step / cfg.sample_rate) / 1e9:.2f} GFLOP per second "
            "of audio"
        )
        peak = matmul_gflops(tf.bfloat16 if precision == "bfloat16" else tf.float32, args.runs)
        stem_layers = [layer for layer in layers if layer.name.startswith(cfg.stems[0] + "_")]
        per_layer = []
        for layer in stem_layers:
            seconds = isolated_conv_seconds(layer, args.peak_batch, args.runs) / args.peak_batch
            per_layer.append((layer.name, conv_flops(layer), seconds))
        stem_flops = sum(f for _, f, _ in per_layer)
        conv_peak = stem_flops / sum(s for _, _, s in per_layer) / 1e9
        print(
            f"matmul peak {peak:.0f} GFLOP/s; conv peak (isolated layers, batch "
            f"{args.peak_batch}) {conv_peak:.0f} GFLOP/s"
        )
        for name, f, s in per_layer:
            print(
                f"  {name:28s} {f / 1e9:6.2f} GFLOP  {f / s / 1e9:6.0f} GFLOP/s  "
                f"{100 * s / sum(x for _, _, x in per_layer):4.1f}% of conv time"
            )
        forward = tf.function(lambda x: model(x, training=False))
        print("batch  s/call   GFLOP/s  % conv peak  % matmul peak  audio s per s")
        for batch in args.batches:
            x = tf.random.uniform((batch, cfg.T, cfg.F, cfg.channels))
            seconds = median_seconds(forward, x, args.runs)
            rate = batch * flops / seconds / 1e9
            audio = batch * cfg.T * cfg.frame_step / cfg.sample_rate / seconds
            print(
                f"{batch:5d}  {seconds:6.2f}  {rate:8.0f}  {100 * rate / conv_peak:10.0f}%"
                f"  {100 * rate / peak:12.0f}%  {audio:12.1f}"
            )
        if precision == "float32":
            mask_conv_ab(model, args.ab_batch, max(args.runs, 5))


if __name__ == "__main__":
    main()
