"""`stembeam train` and `stembeam make-dataset`: argument parsing around model.training and
model.training.dataset."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from stembeam.model.config import PRECISIONS, ModelConfig, spleeter_config


def make_dataset_main(argv: Sequence[str] | None = None) -> int:
    """Renders a MUSDB18-HQ style dataset from GM MIDI songs (see model/training/dataset.py)."""
    from stembeam.model.training.dataset import (
        DEFAULT_MIDI_SOURCES,
        DEFAULT_SOUNDFONT,
        render_dataset,
    )

    parser = argparse.ArgumentParser(
        prog="stembeam make-dataset",
        description="Render MIDI songs into MUSDB18-HQ style multitracks (train/ and test/).",
    )
    parser.add_argument("--output", required=True, help="local output folder")
    parser.add_argument("--tracks", type=int, default=100, help="tracks to render (train + test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per track")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.125,
        help="share of tracks (from songs held out of train/) in test/",
    )
    parser.add_argument(
        "--midi",
        nargs="*",
        default=list(DEFAULT_MIDI_SOURCES),
        help="MIDI files, folders of them, or Doom WADs (default: freedoom, "
        "planetblupi-music-midi)",
    )
    parser.add_argument("--soundfont", default=DEFAULT_SOUNDFONT)
    args = parser.parse_args(argv)
    folders = render_dataset(
        args.midi,
        args.output,
        args.tracks,
        args.seed,
        args.duration,
        args.soundfont,
        args.test_fraction,
    )
    print(f"rendered {len(folders)} tracks into {args.output}")
    return 0


def training_config(
    name: str | None,
    init_config: ModelConfig | None,
    T: int | None,
    F: int | None,
    frame_length: int | None,
    frame_step: int | None,
) -> ModelConfig:
    """The config to train: a Spleeter preset (or the ``--init`` model's), with overrides."""
    if name is not None:
        cfg = spleeter_config(name)
    elif init_config is not None:
        cfg = init_config
    else:
        cfg = spleeter_config("4stems")
    overrides = {
        k: v
        for k, v in dict(T=T, F=F, frame_length=frame_length, frame_step=frame_step).items()
        if v is not None
    }
    if overrides:
        suffix = "-".join(f"{k}{v}" for k, v in overrides.items())
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{suffix}", **overrides)
    return cfg


def train_main(argv: Sequence[str] | None = None) -> int:
    """Trains or fine-tunes a U-Net and exports a model folder (see model/training/train.py)."""
    from stembeam.model.training.train import TrainSettings, train

    defaults = TrainSettings()
    parser = argparse.ArgumentParser(
        prog="stembeam train",
        description="Train the U-Net on MUSDB18-HQ style folders (<data>/train, <data>/test).",
    )
    parser.add_argument("--data", required=True, help="dataset root, local or gs://")
    parser.add_argument("--output", required=True, help="local model folder to write")
    parser.add_argument(
        "--config",
        default=None,
        help="Spleeter preset: 2stems, 4stems, 5stems[-16kHz] (default: the "
        "--init model's, else 4stems)",
    )
    parser.add_argument(
        "--init",
        default=None,
        help="start from this model's weights for the stems both have: "
        "spleeter:2stems, a model folder, gs://...",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in <output>/checkpoints",
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="total steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument(
        "--validate-every",
        type=int,
        default=defaults.validate_every,
        help="steps between validations (0: only at the end)",
    )
    parser.add_argument("--validation-tracks", type=int, default=defaults.validation_tracks)
    parser.add_argument("--validation-seconds", type=float, default=defaults.validation_seconds)
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision)
    parser.add_argument("--T", type=int, help="override the segment length (frames)")
    parser.add_argument("--F", type=int, help="override the bins fed to the U-Net")
    parser.add_argument("--frame-length", type=int, help="override the STFT window")
    parser.add_argument("--frame-step", type=int, help="override the STFT hop")
    args = parser.parse_args(argv)

    init_config = None
    if args.init and args.config is None:
        from stembeam.model.registry import load_model

        init_config = load_model(args.init).config
    cfg = training_config(
        args.config, init_config, args.T, args.F, args.frame_length, args.frame_step
    )
    settings = dataclasses.replace(
        defaults,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        validation_tracks=args.validation_tracks,
        validation_seconds=args.validation_seconds,
        precision=args.precision,
    )
    train(args.data, cfg, args.output, settings, init=args.init, resume=args.resume)
    return 0
