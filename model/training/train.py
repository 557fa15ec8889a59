"""Training and fine-tuning the Spleeter U-Net on MUSDB18-HQ style multitrack folders.

Data: ``<root>/train/<track>/{mixture,vocals,drums,bass,other}.wav`` (and ``<root>/test/...``
for validation), local or on any Beam filesystem (gs://, s3://: copied once into a local cache).
Each example is a random excerpt of ``(T - 1) * frame_step + frame_length`` samples per stem,
every stem from a random track at a random offset (stems remixed across tracks), with a random
gain and a random channel swap; the mixture is the sum of the augmented stems. The U-Net sees
the mixture's magnitude STFT (T, F, C) and is trained to output each stem's magnitude.

Defaults follow Spleeter's training configs: L1 loss between the masked mixture magnitude and
the target magnitude, averaged over batch, frames, bins and channels, summed over stems; Adam
with learning rate 1e-4 (TF1 ``AdamOptimizer`` defaults: beta 0.9 / 0.999, epsilon 1e-8);
batch 4; a checkpoint every 300 steps; random seed 3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np
import soundfile
import tensorflow as tf

from stembeam.model.checkpoint import write_model_folder
from stembeam.model.config import ModelConfig
from stembeam.model.evaluation import median_global_sdr, stem_global_sdrs
from stembeam.model.reconstruct import separate_waveform
from stembeam.model.registry import cache_root, load_model
from stembeam.model.spectral import stft_frames
from stembeam.model.unet import batch_predictor, build_unet

MUSDB_STEMS = ("vocals", "drums", "bass", "other")
# Stems a model may have that MUSDB-style folders hold as a sum of their files.
STEM_COMPONENTS = {"accompaniment": ("drums", "bass", "other")}
CHECKPOINT_DIR = "checkpoints"
TRAIN_LOG = "train_log.jsonl"


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation and augmentation settings (defaults: Spleeter's configs)."""

    steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-4
    seed: int = 3
    checkpoint_every: int = 300
    validate_every: int = 0  # 0: validate once, at the end
    validation_tracks: int = 4
    validation_seconds: float = 20.0
    gain_range: tuple[float, float] = (0.25, 1.25)
    remix: bool = True
    precision: str = "float32"


@dataclasses.dataclass(frozen=True)
class Track:
    """One multitrack: for each model stem, the WAV files that sum to it, and its length."""

    name: str
    stems: dict[str, tuple[str, ...]]
    num_samples: int


@dataclasses.dataclass
class TrainResult:
    """What a ``train`` call did: the step reached, the loss of every step it ran, and the
    validation SDR (dB, median over tracks per stem) of the last validation."""

    step: int
    losses: list[float]
    validation: dict[str, float]
    initialized_stems: list[str]


def _has_scheme(path: str) -> bool:
    return "://" in path


def localize(uri: str, cache_dir: str | None = None) -> str:
    """A local folder with the contents of ``uri``; remote folders are copied once (Beam
    FileSystems) into ``<cache_dir or cache_root()/datasets>/<sha of uri>``."""
    if not _has_scheme(uri):
        return uri
    from apache_beam.io.filesystems import FileSystems  # lazy: model/ needs no Beam otherwise

    cache = cache_dir or os.path.join(cache_root(), "datasets")
    dest = os.path.join(cache, hashlib.sha256(uri.encode()).hexdigest()[:16])
    done = os.path.join(dest, ".complete")
    if os.path.exists(done):
        return dest
    prefix = uri.rstrip("/") + "/"
    for match in FileSystems.match([prefix + "**"])[0].metadata_list:
        local = os.path.join(dest, match.path[len(prefix) :])
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with FileSystems.open(match.path) as src, open(local + ".tmp", "wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
        os.replace(local + ".tmp", local)
    pathlib.Path(done).touch()
    return dest


def find_tracks(root: str, split: str, stems: Sequence[str]) -> list[Track]:
    """The tracks of ``<root>/<split>/`` that hold every stem in ``stems`` (sorted by name).

    A stem is ``<stem>.wav``, or for ``accompaniment`` the sum of drums, bass and other. All
    files must be 44.1 kHz; a track's length is its shortest file's.
    """
    split_dir = pathlib.Path(root, split)
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"{split_dir} does not exist: expected MUSDB18-HQ style "
            f"{root}/{split}/<track>/<stem>.wav"
        )
    tracks = []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files: dict[str, tuple[str, ...]] = {}
        for stem in stems:
            own = folder / f"{stem}.wav"
            parts = (
                (own,)
                if own.exists()
                else tuple(folder / f"{c}.wav" for c in STEM_COMPONENTS.get(stem, (stem,)))
            )
            if not all(p.exists() for p in parts):
                break
            files[stem] = tuple(str(p) for p in parts)
        else:
            infos = [soundfile.info(f) for fs in files.values() for f in fs]
            bad = [i.name for i in infos if i.samplerate != 44100]
            if bad:
                raise ValueError(f"{folder}: {bad} are not 44.1 kHz")
            tracks.append(Track(folder.name, files, min(i.frames for i in infos)))
    if not tracks:
        raise FileNotFoundError(f"no track in {split_dir} has all of {list(stems)}")
    return tracks


def read_stem(track: Track, stem: str, start: int, num_samples: int) -> np.ndarray:
    """``num_samples`` samples of a stem from ``start``, (num_samples, 2) float32; zeros past the
    end, mono files duplicated to stereo."""
    out = np.zeros((num_samples, 2), np.float32)
    for path in track.stems[stem]:
        audio, _ = soundfile.read(
            path, start=start, frames=num_samples, dtype="float32", always_2d=True
        )
        out[: len(audio)] += audio if audio.shape[1] == 2 else np.repeat(audio[:, :1], 2, axis=1)
    return out


def excerpt_samples(cfg: ModelConfig) -> int:
    """Samples whose 'valid' STFT has exactly ``cfg.T`` frames."""
    return (cfg.T - 1) * cfg.frame_step + cfg.frame_length


def examples(
    tracks: Sequence[Track], cfg: ModelConfig, settings: TrainSettings, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless augmented examples: (mixture magnitude (T, F, 2), stem magnitudes (T, F, 2, S))."""
    length = excerpt_samples(cfg)
    while True:
        shared = int(rng.integers(len(tracks)))
        stems = []
        for stem in cfg.stems:
            track = tracks[int(rng.integers(len(tracks)))] if settings.remix else tracks[shared]
            start = int(rng.integers(max(1, track.num_samples - length + 1)))
            audio = read_stem(track, stem, start, length) * np.float32(
                rng.uniform(*settings.gain_range)
            )
            stems.append(audio[:, ::-1] if rng.random() < 0.5 else audio)
        waves = np.stack(stems, axis=-1)  # (L, 2, S)
        mixture = waves.sum(axis=-1)
        mix_mag = np.abs(stft_frames(mixture, cfg.frame_length, cfg.frame_step)[:, : cfg.F])
        stem_mag = np.stack(
            [
                np.abs(
                    stft_frames(
                        np.ascontiguousarray(waves[..., s]), cfg.frame_length, cfg.frame_step
                    )[:, : cfg.F]
                )
                for s in range(len(cfg.stems))
            ],
            axis=-1,
        )
        yield mix_mag.astype(np.float32), stem_mag.astype(np.float32)


def input_pipeline(
    tracks: Sequence[Track], cfg: ModelConfig, settings: TrainSettings, seed: int
) -> tf.data.Dataset:
    """Batched tf.data pipeline of ``examples``: ((B, T, F, 2), (B, T, F, 2, S)) float32."""
    shape = (cfg.T, cfg.F, cfg.channels)
    dataset = tf.data.Dataset.from_generator(
        lambda: examples(tracks, cfg, settings, np.random.default_rng(seed)),
        output_signature=(
            tf.TensorSpec(shape, tf.float32),
            tf.TensorSpec(shape + (len(cfg.stems),), tf.float32),
        ),
    )
    return dataset.batch(settings.batch_size, drop_remainder=True).prefetch(2)


def spleeter_l1_loss(estimates: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Spleeter's ``L1_mask`` loss.

    Args:
      estimates, targets: (B, T, F, C, S) magnitudes.
    Returns:
      (loss, per_stem): per-stem mean absolute error (S,) and its sum over stems (scalar).
    """
    per_stem = tf.reduce_mean(tf.abs(estimates - targets), axis=[0, 1, 2, 3])
    return tf.reduce_sum(per_stem), per_stem


def init_from(model: keras.Model, source: keras.Model) -> list[str]:
    """Copies every layer's weights from ``source`` whose name and weight shapes match.

    Layer names carry the stem (``vocals_enc1_conv``), so this loads the stems both models share.
    Returns the stems that received all their weights' layers, sorted.
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    copied, missed = set(), set()
    for layer in model.layers:
        if not layer.weights:
            continue
        stem = layer.name.split("_")[0]
        other = source_layers.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is not None and [tuple(w.shape) for w in other.weights] == shapes:
            layer.set_weights(other.get_weights())
            copied.add(stem)
        else:
            missed.add(stem)
    return sorted(copied - missed)


def evaluation_excerpt(
    track: Track, stems: Sequence[str], seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """The middle ``seconds`` of a track: mixture (N, 2) = sum of the stems, stems (N, 2, S)."""
    n = min(track.num_samples, round(seconds * 44100))
    start = (track.num_samples - n) // 2
    references = np.stack([read_stem(track, s, start, n) for s in stems], axis=-1)
    return references.sum(axis=-1), references


def validate(
    model: keras.Model, cfg: ModelConfig, tracks: Sequence[Track], seconds: float
) -> dict[str, float]:
    """Median SDR per stem (dB) of the model on the middle ``seconds`` of each track, separated
    with ``separate_waveform`` (overlapping segments, ratio masks) as the pipeline does."""
    predict = batch_predictor(model)
    results = []
    for track in tracks:
        mixture, references = evaluation_excerpt(track, cfg.stems, seconds)
        estimates = separate_waveform(mixture, predict, cfg)
        results.append(stem_global_sdrs(references, estimates, cfg.stems))
    return median_global_sdr(results, cfg.stems)


def _log(path: pathlib.Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def train(
    data: str,
    cfg: ModelConfig,
    output: str,
    settings: TrainSettings = TrainSettings(),
    init: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Trains ``cfg``'s U-Net on ``data`` and exports it as a model folder at ``output``.

    Checkpoints go to ``<output>/checkpoints`` every ``settings.checkpoint_every`` steps and at
    the end; ``resume=True`` continues from the latest one up to ``settings.steps`` in total.
    ``init`` (a registry spec: ``spleeter:2stems``, a model folder) initialises the stems the two
    models share before step 0. The export (``model.keras`` + ``model.json``) is written at the
    end, with the validation SDR on ``<data>/test`` in ``<output>/validation.json``.
    """
    if _has_scheme(output):
        raise ValueError(
            "train writes checkpoints locally: give a local --output and copy the "
            "exported folder afterwards"
        )
    root = localize(data)
    train_tracks = find_tracks(root, "train", cfg.stems)
    valid_tracks = (
        find_tracks(root, "test", cfg.stems)[: settings.validation_tracks]
        if pathlib.Path(root, "test").is_dir()
        else []
    )
    out = pathlib.Path(output)
    ckpt_dir = out / CHECKPOINT_DIR
    if ckpt_dir.exists() and tf.train.latest_checkpoint(str(ckpt_dir)) and not resume:
        raise FileExistsError(
            f"{ckpt_dir} holds checkpoints: pass resume=True (--resume) or use "
            "another output folder"
        )
    out.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(settings.seed)
    model = build_unet(cfg, settings.precision)
    optimizer = keras.optimizers.Adam(
        settings.learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8
    )
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, name="step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=3)
    initialized: list[str] = []
    if resume and manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(step)}")
    elif init:
        initialized = init_from(model, load_model(init).model)
        if not initialized:
            raise ValueError(
                f"{init} shares no stem (with the same layer shapes) with "
                f"{cfg.name} {list(cfg.stems)}"
            )
        log(f"initialised stems {initialized} from {init}")

    @tf.function
    def train_step(mix: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss, per_stem = spleeter_l1_loss(model(mix, training=True), target)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, per_stem

    dataset = input_pipeline(
        train_tracks, cfg, settings, seed=settings.seed * 1_000_003 + int(step)
    )
    losses: list[float] = []
    validation: dict[str, float] = {}
    validated_at = -1
    started = time.time()
    for mix, target in dataset.take(max(0, settings.steps - int(step))):
        loss, per_stem = train_step(mix, target)
        step.assign_add(1)
        current = int(step)
        losses.append(float(loss))
        record = {
            "step": current,
            "loss": float(loss),
            **{s: float(v) for s, v in zip(cfg.stems, per_stem.numpy())},
        }
        _log(out / TRAIN_LOG, record)
        if current % settings.checkpoint_every == 0:
            manager.save(checkpoint_number=current)
        if current % 10 == 0:
            log(f"step {current}: loss {float(loss):.4f} ({time.time() - started:.0f} s)")
        last = current == settings.steps
        if valid_tracks and (
            last or settings.validate_every and current % settings.validate_every == 0
        ):
            validation = validate(model, cfg, valid_tracks, settings.validation_seconds)
            validated_at = current
            _log(out / TRAIN_LOG, {"step": current, "validation_sdr": validation})
            log(f"step {current}: validation SDR (dB) {validation}")
    if manager.latest_checkpoint != os.path.join(str(ckpt_dir), f"ckpt-{int(step)}"):
        manager.save(checkpoint_number=int(step))
    if valid_tracks and validated_at != int(step):
        validation = validate(model, cfg, valid_tracks, settings.validation_seconds)
    (out / "validation.json").write_text(
        json.dumps(
            {
                "step": int(step),
                "tracks": [t.name for t in valid_tracks],
                "seconds": settings.validation_seconds,
                "median_global_sdr_db": validation,
            },
            indent=2,
        )
    )
    source = f"trained on {data} for {int(step)} steps" + (f" from {init}" if init else "")
    write_model_folder(model, cfg, str(out), source)
    log(f"exported {out} (step {int(step)}); validation SDR {validation}")
    return TrainResult(int(step), losses, validation, initialized)
