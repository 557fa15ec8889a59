"""Model configurations: the Spleeter presets and the parameters a model folder records.

A ``ModelConfig`` carries everything the signal path needs to turn audio into model input and
model output back into stems: sample rate, STFT framing, segment length ``T`` (frames), number of
frequency bins fed to the U-Net ``F``, the stems in output order, and the U-Net's activations.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

SAMPLE_RATE = 44100
FRAME_LENGTH = 4096
FRAME_STEP = 1024
SEGMENT_FRAMES = 512
# Model arithmetic a run or a training may ask for (model.unet maps each to a Keras dtype policy).
PRECISIONS = ("float32", "bfloat16")
# Every stem a preset separates, in the results table's column order.
ALL_STEMS = ("vocals", "accompaniment", "drums", "bass", "piano", "other")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Parameters of one separation model.

    Attributes:
      name: preset name, e.g. ``'4stems'`` or ``'2stems-16kHz'``.
      stems: stem names in the model's output order (last axis of its output).
      sample_rate: audio rate the model works at, Hz.
      frame_length: STFT window length, samples (periodic Hann).
      frame_step: STFT hop, samples.
      T: segment length fed to the U-Net, STFT frames.
      F: frequency bins fed to the U-Net (the lowest ``F`` of ``frame_length // 2 + 1``).
      encoder_activation: ``'leaky_relu'`` (LeakyReLU 0.2) or ``'elu'``.
      decoder_activation: ``'relu'`` or ``'elu'``.
      softmax: True when the stems' masks are a softmax across stems (5stems), else
        an independent sigmoid mask per stem.
      mask_extension: how masks extend above ``F``: ``'zeros'`` or ``'average'``.
      channels: audio channels the model expects (2: stereo).
    """

    name: str
    stems: tuple[str, ...]
    sample_rate: int = SAMPLE_RATE
    frame_length: int = FRAME_LENGTH
    frame_step: int = FRAME_STEP
    T: int = SEGMENT_FRAMES
    F: int = 1024
    encoder_activation: str = "elu"
    decoder_activation: str = "elu"
    softmax: bool = False
    mask_extension: str = "zeros"
    channels: int = 2

    @property
    def n_bins(self) -> int:
        """Bins of the full one-sided spectrum, ``frame_length // 2 + 1``."""
        return self.frame_length // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stems"] = list(self.stems)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["stems"] = tuple(kwargs["stems"])
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _preset(name: str) -> ModelConfig:
    base, _, variant = name.partition("-")
    stems = {
        "2stems": ("vocals", "accompaniment"),
        "4stems": ("vocals", "drums", "bass", "other"),
        "5stems": ("vocals", "drums", "bass", "piano", "other"),
    }[base]
    two = base == "2stems"
    return ModelConfig(
        name=name,
        stems=stems,
        F=1536 if variant == "16kHz" else 1024,
        encoder_activation="leaky_relu" if two else "elu",
        decoder_activation="relu" if two else "elu",
        softmax=base == "5stems",
    )


SPLEETER_PRESETS: dict[str, ModelConfig] = {
    name: _preset(name)
    for base in ("2stems", "4stems", "5stems")
    for name in (base, f"{base}-16kHz")
}


def spleeter_config(name: str) -> ModelConfig:
    """The preset for a Spleeter model name such as ``'4stems'`` or ``'spleeter:5stems-16kHz'``."""
    key = name.removeprefix("spleeter:")
    try:
        return SPLEETER_PRESETS[key]
    except KeyError:
        known = ", ".join(sorted(SPLEETER_PRESETS))
        raise ValueError(f"unknown Spleeter model {name!r}; known: {known}") from None
