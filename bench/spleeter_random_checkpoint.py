"""Writes seeded random Spleeter checkpoints (4stems, 5stems) in Spleeter's exact format.

Runs INSIDE the Spleeter venv (bench/spleeter_venv.sh): it builds the U-Net graph with Spleeter's
own model function, so the variable names, shapes and numbering are Spleeter's, then gives every
variable a value drawn from a numpy generator seeded per model (Spleeter's initializer uses one
seed for every layer, which would make all stems identical) and saves it with a tf.compat.v1 Saver.

    ~/.cache/stembeam/spleeter-venv/bin/python bench/spleeter_random_checkpoint.py OUT_DIR
writes OUT_DIR/4stems and OUT_DIR/5stems (model.index, model.data-*, checkpoint, .probe).
"""

import argparse
import os

import numpy as np
import tensorflow as tf
from spleeter.model import get_model_function
from spleeter.utils.configuration import load_configuration

SEEDS = {"4stems": 4, "5stems": 5}


def random_value(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """A value for the variable ``name``: He-scaled kernels, small biases, BatchNorm statistics
    of moderate spread."""
    if name.endswith("/kernel"):
        fan_in = np.prod(shape[:2]) * (shape[3] if "transpose" in name else shape[2])
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    if name.endswith("/bias") or name.endswith("/beta") or name.endswith("/moving_mean"):
        return rng.normal(0.0, 0.1, shape)
    if name.endswith("/gamma"):
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith("/moving_variance"):
        return rng.uniform(0.5, 2.0, shape)
    raise ValueError(f"unexpected variable {name}")


def write_checkpoint(name: str, out_dir: str) -> None:
    params = load_configuration(f"spleeter:{name}")
    rng = np.random.default_rng(SEEDS[name])
    model_dir = os.path.join(out_dir, name)
    os.makedirs(model_dir, exist_ok=True)
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, (1, params["T"], params["F"], 2))
        get_model_function(params["model"]["type"])(
            x, params["instrument_list"], params["model"]["params"]
        )
        global_step = tf.compat.v1.train.get_or_create_global_step()
        variables = [v for v in tf.compat.v1.global_variables() if v is not global_step]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for v in variables:  # creation order: the same draws every run
                v.load(random_value(v.op.name, tuple(v.shape), rng).astype(np.float32), sess)
            tf.compat.v1.train.Saver().save(
                sess, os.path.join(model_dir, "model"), write_meta_graph=False, write_state=False
            )
    with open(os.path.join(model_dir, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model"\n')
    with open(os.path.join(model_dir, ".probe"), "w") as f:
        f.write("OK")
    print(
        f"{model_dir}: {len(variables)} variables, seed {SEEDS[name]}, "
        f"instruments {params['instrument_list']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    args = parser.parse_args()
    for name in SEEDS:
        write_checkpoint(name, args.out_dir)


if __name__ == "__main__":
    main()
