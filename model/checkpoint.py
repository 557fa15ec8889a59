"""Import of Spleeter's TF1 checkpoints, and model folders (``model.keras`` + ``model.json``).

Spleeter's checkpoints name variables by Keras auto-naming in graph-construction order: for each
stem, in the checkpoint's instrument order, 6 encoder ``conv2d``, 12 ``batch_normalization``
(6 encoder, 6 decoder), 6 ``conv2d_transpose`` and the final ``conv2d`` (the 7th of the stem),
numbered globally across stems: stem ``k``'s ``i``-th encoder conv is ``conv2d_{7k+i-1}``, its
mask conv ``conv2d_{7k+6}``, its ``j``-th deconv ``conv2d_transpose_{6k+j-1}``, its ``i``-th
encoder BatchNorm ``batch_normalization_{12k+i-1}`` and ``j``-th decoder BatchNorm
``batch_normalization_{12k+5+j}`` (index 0 carries no ``_0`` suffix). The 6th encoder BatchNorm
of each stem is unused by Spleeter's graph and is skipped.

A model folder holds ``model.keras`` (Keras 3) and ``model.json``: the ``ModelConfig`` fields plus
``format_version``, ``source`` and ``sha256`` (of the weights, see ``weights_sha256``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from stembeam.model.config import ModelConfig

# Keras and TensorFlow load inside the functions that use them: resolving a model folder (the
# launcher's work) never imports them.
if TYPE_CHECKING:
    import keras

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
META_FILE = "model.json"

# Instrument order of the released checkpoints (Spleeter's ``instrument_list``), which numbers
# the variables; it can differ from the output order of our presets (5stems).
SPLEETER_INSTRUMENT_ORDER: dict[str, tuple[str, ...]] = {
    "2stems": ("vocals", "accompaniment"),
    "4stems": ("vocals", "drums", "bass", "other"),
    "5stems": ("vocals", "piano", "drums", "bass", "other"),
}

_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")


def _keras_name(base: str, index: int) -> str:
    """Keras auto-name: ``conv2d``, ``conv2d_1``, ..."""
    return base if index == 0 else f"{base}_{index}"


def spleeter_variable_map(
    stems: tuple[str, ...], instrument_order: tuple[str, ...]
) -> dict[str, list[str]]:
    """Maps each weighted layer of ``build_unet`` to its checkpoint variables.

    Args:
      stems: the model's stems (its output order).
      instrument_order: the checkpoint's instrument order; must hold the same stems.

    Returns:
      layer name -> checkpoint variable names, in the order of the layer's ``weights``.
    """
    from stembeam.model.unet import DECODER_FILTERS, ENCODER_FILTERS

    if sorted(stems) != sorted(instrument_order):
        raise ValueError(f"checkpoint stems {instrument_order} differ from model stems {stems}")
    convs_per_stem, deconvs_per_stem = len(ENCODER_FILTERS) + 1, len(DECODER_FILTERS)
    bns_per_stem = len(ENCODER_FILTERS) + len(DECODER_FILTERS)
    mapping: dict[str, list[str]] = {}
    for k, stem in enumerate(instrument_order):

        def conv(n: int) -> list[str]:
            name = _keras_name("conv2d", convs_per_stem * k + n)
            return [f"{name}/kernel", f"{name}/bias"]

        def bn(n: int) -> list[str]:
            name = _keras_name("batch_normalization", bns_per_stem * k + n)
            return [f"{name}/{w}" for w in _BN_WEIGHTS]

        for i in range(len(ENCODER_FILTERS)):
            mapping[f"{stem}_enc{i + 1}_conv"] = conv(i)
            if i < len(ENCODER_FILTERS) - 1:
                mapping[f"{stem}_enc{i + 1}_bn"] = bn(i)
        for j in range(len(DECODER_FILTERS)):
            deconv = _keras_name("conv2d_transpose", deconvs_per_stem * k + j)
            mapping[f"{stem}_dec{j + 1}_deconv"] = [f"{deconv}/kernel", f"{deconv}/bias"]
            mapping[f"{stem}_dec{j + 1}_bn"] = bn(len(ENCODER_FILTERS) + j)
        mapping[f"{stem}_mask"] = conv(len(ENCODER_FILTERS))
    return mapping


def import_spleeter_checkpoint(
    checkpoint: str, cfg: ModelConfig, instrument_order: tuple[str, ...] | None = None
) -> keras.Model:
    """Builds ``build_unet(cfg)`` and loads a Spleeter TF1 checkpoint into it.

    Args:
      checkpoint: checkpoint directory (with a ``checkpoint`` file) or prefix (``.../model``).
      cfg: the model configuration (stems in output order).
      instrument_order: the checkpoint's instrument order; defaults to ``cfg.stems``.

    Raises:
      ValueError: a variable is missing or has the wrong shape.
    """
    import tensorflow as tf

    from stembeam.model.unet import build_unet

    reader = tf.train.load_checkpoint(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    model = build_unet(cfg)
    mapping = spleeter_variable_map(cfg.stems, instrument_order or cfg.stems)
    for layer_name, names in mapping.items():
        layer = model.get_layer(layer_name)
        values = []
        for name, weight in zip(names, layer.weights):
            if name not in shapes:
                raise ValueError(
                    f"checkpoint {checkpoint} has no variable {name} "
                    f"(needed for layer {layer_name}); is it a {cfg.name} model?"
                )
            if tuple(shapes[name]) != tuple(weight.shape):
                raise ValueError(
                    f"checkpoint variable {name} has shape {shapes[name]}, layer "
                    f"{layer_name} expects {tuple(weight.shape)}"
                )
            values.append(reader.get_tensor(name))
        layer.set_weights(values)
    return model


def weights_sha256(model: keras.Model) -> str:
    """sha256 of a model's weights: each weight's path, shape and little-endian float32 bytes,
    in ``model.weights`` order. Independent of the file format the weights are stored in."""
    import keras

    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight), dtype="<f4")
        digest.update(f"{weight.path}:{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def write_model_folder(model: keras.Model, cfg: ModelConfig, path: str, source: str) -> str:
    """Writes ``model.keras`` and ``model.json`` into the local folder ``path``.

    ``source`` says where the weights came from. ``model.json`` is written last, so a folder
    with a ``model.json`` is complete.
    Returns the weights' sha256.
    """
    os.makedirs(path, exist_ok=True)
    model.save(os.path.join(path, MODEL_FILE))
    sha256 = weights_sha256(model)
    meta = {**cfg.to_dict(), "format_version": FORMAT_VERSION, "source": source, "sha256": sha256}
    tmp = os.path.join(path, META_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(path, META_FILE))
    return sha256


def read_model_meta(path: str) -> dict[str, Any]:
    """The parsed ``model.json`` of a local model folder, format version checked."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{path} is not a model folder: it has no {META_FILE}")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: format_version {meta.get('format_version')!r}, this "
            f"version of stembeam reads {FORMAT_VERSION}"
        )
    return meta


def _keras_archive_names(model: keras.Model) -> list[str]:
    """The group name of each of ``model.layers`` inside a ``.keras`` archive's weights file:
    the snake_case class name, numbered ``_1``, ``_2``... by order among layers of that class
    (Keras 3's naming when it saves a model's layer list)."""
    used: dict[str, int] = {}
    names = []
    for layer in model.layers:
        name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", layer.__class__.__name__)
        name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
        count = used.get(name)
        used[name] = 0 if count is None else count + 1
        names.append(name if count is None else f"{name}_{count + 1}")
    return names


def _read_archive_weights(model: keras.Model, archive: str) -> None:
    """Assigns ``model``'s weights from the ``model.weights.h5`` of the ``.keras`` file
    ``archive``, matching layers by their position among layers of the same class. A model of
    another structure gets other weights or raises; callers check ``weights_sha256``."""
    import h5py

    with (
        zipfile.ZipFile(archive) as z,
        h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5,
    ):
        for layer, name in zip(model.layers, _keras_archive_names(model), strict=True):
            if layer.weights:
                group = h5["layers"][name]["vars"]
                layer.set_weights([group[str(i)][()] for i in range(len(layer.weights))])


def load_model_folder(
    path: str, precision: str = "float32"
) -> tuple[keras.Model, ModelConfig, dict[str, Any]]:
    """Loads a local model folder, building the model once.

    The model is built by this version's ``build_unet`` in ``precision`` and its weights read
    straight from ``model.keras``; folders that an older layout wrote (other layer classes)
    fall back to Keras' loader, then the same build. Either way the folder runs with this
    version's layers.

    Args:
      path: folder holding ``model.keras`` and ``model.json``.
      precision: ``'float32'``, ``'bfloat16'`` or ``'auto'`` (see ``build_unet``).

    Returns:
      (model, config, meta) with ``meta`` the parsed ``model.json``.

    Raises:
      ValueError: the weights' sha256 differs from the one ``model.json`` records.
    """
    import keras

    from stembeam.model.unet import build_unet

    meta = read_model_meta(path)
    cfg = ModelConfig.from_dict(meta)
    model = build_unet(cfg, precision)
    try:
        _read_archive_weights(model, os.path.join(path, MODEL_FILE))
        fast = weights_sha256(model) == meta["sha256"]
    except (KeyError, ValueError):
        fast = False
    if not fast:
        saved = keras.saving.load_model(os.path.join(path, MODEL_FILE), compile=False)
        model.set_weights(saved.get_weights())
    sha256 = weights_sha256(model)
    if sha256 != meta["sha256"]:
        raise ValueError(
            f"{path}: weights sha256 {sha256} differs from {meta['sha256']} "
            f"recorded in {META_FILE}; the folder is corrupt"
        )
    return model, cfg, meta
