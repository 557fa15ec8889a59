"""Delivery formats of the stem files: codec and bit depth or bitrate, clipping, file names,
and which stems are delivered (a subset, or sums of the model's stems).

Formats (``--format``), all written through soundfile (libsndfile 1.2):

- lossless ``wav``, ``flac``, ``aiff`` with ``--bit_depth`` 16 or 24 (integer PCM) or 32 (float;
  not FLAC). Defaults: wav 32-bit float (the model's samples exactly), flac and aiff 24-bit.
- lossy ``mp3`` (LAME, constant bitrate), ``ogg`` (Vorbis, VBR at the quality whose nominal
  bitrate is ``--bitrate``) and ``opus`` (Ogg Opus, VBR around ``--bitrate``); kbps, defaults
  320 / 256 / 256. libsndfile takes a "compression level" in [0, 1], mapped from kbps here.
  At MPEG-2 rates (below 32 kHz) MP3 tops out at 160 kbps; a higher bitrate is lowered to that.

Sample rates: stems come back at the input's rate and most formats keep it. Opus only encodes at
8, 12, 16, 24 or 48 kHz, and MP3 only at the MPEG rates up to 48 kHz: other rates are resampled
(soxr HQ, streaming) to 48 kHz (MP3: 44.1 kHz for multiples of 44.1 kHz), keeping the duration.
``StemWriter.sample_rate`` is the file's rate.

Clipping (``--clip_mode``), for integer and lossy formats (float files store values beyond
+-1 unchanged, unless normalised):

- ``clip``: samples are clipped to [-1, 1] and counted (``StemWriter.clipped``), streaming.
- ``normalise``: the stem is scaled by 1/peak when its peak passes 1 (each file on its own, like
  demucs's ``--clip-mode rescale``; the stems then no longer sum to the mixture). The peak is
  known only at the end, so the writer streams float32 to a raw staging file next to the target
  (4 bytes x channels per sample: about 85 MB for 4 minutes of 44.1 kHz stereo) and encodes the
  target from it on ``close()``: one extra local write and read of that size, encoding cost
  unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
import tempfile

import numpy as np
import soundfile
import soxr

LOSSLESS = {"wav": "WAV", "flac": "FLAC", "aiff": "AIFF"}
LOSSY = {"mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS")}
FORMAT_NAMES = tuple(LOSSLESS) + tuple(LOSSY)
BIT_DEPTHS = {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}
DEFAULT_BIT_DEPTH = {"wav": 32, "flac": 24, "aiff": 24}
DEFAULT_BITRATE = {"mp3": 320, "ogg": 256, "opus": 256}
CLIP_MODES = ("clip", "normalise")

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# libsndfile's linear compression-level -> bitrate maps (kbps at level 0 and 1).
MP3_MPEG1_KBPS = (320, 32)  # 32-48 kHz
MP3_MPEG2_KBPS = (160, 8)  # below 32 kHz
OPUS_KBPS_PER_CHANNEL, OPUS_MIN_KBPS = 256, 6
# libvorbis's nominal bitrates (44.1 kHz stereo) of its quality levels 0..10; libsndfile's
# compression level is 1 - quality / 10.
VORBIS_NOMINAL_KBPS = (64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 500)
BITRATE_RANGE = {
    "mp3": (32, 320),
    "ogg": (VORBIS_NOMINAL_KBPS[0], VORBIS_NOMINAL_KBPS[-1]),
    "opus": (OPUS_MIN_KBPS, 2 * OPUS_KBPS_PER_CHANNEL),
}


def parse_bitrate(value: str | int | None) -> int | None:
    """``'320'``, ``'320k'`` (Spleeter's spelling) or 320 -> 320 kbps; None stays None."""
    if value is None or isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*k?\s*", str(value).lower())
    if not match:
        raise ValueError(f"--bitrate must be kbps such as 192 or 192k, got {value!r}")
    return int(match.group(1))


@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """A validated delivery format; build it with ``parse`` or ``from_options``.

    Attributes:
      name: one of ``FORMAT_NAMES``.
      bit_depth: 16, 24 or 32 (float) for lossless formats, None for lossy ones.
      bitrate: kbps for lossy formats, None for lossless ones.
      clip_mode: ``'clip'`` or ``'normalise'``.
    """

    name: str
    bit_depth: int | None
    bitrate: int | None
    clip_mode: str = "clip"

    @classmethod
    def parse(
        cls,
        name: str = "wav",
        bit_depth: int | None = None,
        bitrate: str | int | None = None,
        clip_mode: str | None = None,
    ) -> OutputFormat:
        """Validates a combination of options and fills in the defaults.

        Raises:
          ValueError: a one-line message naming the offending option.
        """
        name = name.lower()
        bitrate = parse_bitrate(bitrate)
        clip_mode = clip_mode or "clip"
        if name not in FORMAT_NAMES:
            raise ValueError(f"--format {name!r} is not one of {', '.join(FORMAT_NAMES)}")
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"--clip_mode {clip_mode!r} is not one of {', '.join(CLIP_MODES)}")
        if name in LOSSLESS:
            if bitrate is not None:
                raise ValueError(
                    f"--bitrate applies to lossy formats ({', '.join(LOSSY)}), "
                    f"not {name}; use --bit_depth"
                )
            bit_depth = DEFAULT_BIT_DEPTH[name] if bit_depth is None else int(bit_depth)
            if bit_depth not in BIT_DEPTHS:
                raise ValueError(f"--bit_depth must be 16, 24 or 32 (float), got {bit_depth}")
            if name == "flac" and bit_depth == 32:
                raise ValueError("FLAC stores integers only: --bit_depth 16 or 24 with flac")
            return cls(name, bit_depth, None, clip_mode)
        if bit_depth is not None:
            raise ValueError(
                f"--bit_depth applies to lossless formats ({', '.join(LOSSLESS)}), "
                f"not {name}; use --bitrate"
            )
        bitrate = DEFAULT_BITRATE[name] if bitrate is None else bitrate
        low, high = BITRATE_RANGE[name]
        if not low <= bitrate <= high:
            raise ValueError(f"--bitrate {bitrate} is outside {name}'s {low}..{high} kbps")
        return cls(name, None, bitrate, clip_mode)

    @classmethod
    def from_options(cls, options) -> OutputFormat:
        """From ``SeparateOptions`` (``--format``, ``--bit_depth``, ``--bitrate``,
        ``--clip_mode``)."""
        return cls.parse(options.format, options.bit_depth, options.bitrate, options.clip_mode)

    @property
    def extension(self) -> str:
        """File extension without the dot: the format's name (``opus`` for Ogg Opus)."""
        return self.name

    @property
    def lossy(self) -> bool:
        return self.name in LOSSY

    @property
    def is_float(self) -> bool:
        """True when the file stores float samples (values beyond +-1 survive)."""
        return self.bit_depth == 32

    @property
    def key(self) -> str:
        """Short id of the delivery settings, e.g. ``wav-f32``, ``flac-24``, ``mp3-320k``,
        ``mp3-320k-normalise`` (for done-markers and result rows)."""
        quality = (
            f"{self.bitrate}k" if self.lossy else ("f32" if self.is_float else str(self.bit_depth))
        )
        suffix = "" if self.clip_mode == "clip" else f"-{self.clip_mode}"
        return f"{self.name}-{quality}{suffix}"

    def file_rate(self, sample_rate: int) -> int:
        """The sample rate a stem at ``sample_rate`` Hz is stored at (see the module doc)."""
        if self.name == "opus" and sample_rate not in OPUS_RATES:
            return 48000
        if self.name == "mp3" and sample_rate not in MP3_RATES:
            return 44100 if sample_rate % 44100 == 0 else 48000
        return sample_rate

    def soundfile_args(self, sample_rate: int, channels: int) -> dict:
        """Keyword arguments of ``soundfile.SoundFile`` for a file at ``sample_rate`` (the
        file's rate, ``file_rate``) with ``channels`` channels."""
        if not self.lossy:
            return {"format": LOSSLESS[self.name], "subtype": BIT_DEPTHS[self.bit_depth]}
        file_format, subtype = LOSSY[self.name]
        args = {"format": file_format, "subtype": subtype}
        if self.name == "mp3":
            top, bottom = MP3_MPEG1_KBPS if sample_rate >= 32000 else MP3_MPEG2_KBPS
            kbps = min(self.bitrate, top)
            # libsndfile refuses level 1.0 at MPEG-1 rates; 0.999 still gives its lowest bitrate
            args["compression_level"] = min((top - kbps) / (top - bottom), 0.999)
            args["bitrate_mode"] = "CONSTANT"
        elif self.name == "opus":
            top = OPUS_KBPS_PER_CHANNEL * channels
            kbps = min(self.bitrate, top)
            args["compression_level"] = (top - kbps) / (top - OPUS_MIN_KBPS)
        else:
            quality = float(np.interp(self.bitrate, VORBIS_NOMINAL_KBPS, range(11)))
            args["compression_level"] = 1.0 - quality / 10.0
        return args

    def open_writer(self, local_path: str, sample_rate: int, channels: int) -> StemWriter:
        """A writer of one stem file at the local path ``local_path``, fed ``(n, channels)``
        float32 blocks at ``sample_rate`` Hz."""
        return StemWriter(self, local_path, sample_rate, channels)


class StemWriter:
    """Streams one stem into a file of an ``OutputFormat``; a context manager.

    Attributes (final after ``close``):
      sample_rate: the file's sample rate, Hz.
      peak: max |sample| of the stem as it reached the encoder (after resampling, before gain
        and clipping).
      clipped: samples (values, all channels) clipped to +-1.
      gain: the gain applied (1.0 unless ``normalise`` scaled the stem down).
    """

    def __init__(self, fmt: OutputFormat, path: str, sample_rate: int, channels: int):
        self.format, self.path, self.channels = fmt, path, channels
        self.sample_rate = fmt.file_rate(sample_rate)
        self.peak, self.clipped, self.gain = 0.0, 0, 1.0
        self._resampler = None
        if self.sample_rate != sample_rate:
            self._resampler = soxr.ResampleStream(
                sample_rate, self.sample_rate, channels, dtype="float32", quality="HQ"
            )
        self._staging = self._file = None
        self._closed = False
        if fmt.clip_mode == "normalise":
            fd, self._staging_path = tempfile.mkstemp(
                dir=os.path.dirname(os.path.abspath(path)),
                prefix=f".{os.path.basename(path)}.",
                suffix=".f32",
            )
            self._staging = os.fdopen(fd, "wb")
        else:
            self._file = self._open_target()

    def _open_target(self) -> soundfile.SoundFile:
        return soundfile.SoundFile(
            self.path,
            "w",
            samplerate=self.sample_rate,
            channels=self.channels,
            **self.format.soundfile_args(self.sample_rate, self.channels),
        )

    def write(self, block: np.ndarray) -> None:
        """Appends ``(n, channels)`` float32 samples at the input rate."""
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected (n, {self.channels}) samples, got {block.shape}")
        if self._resampler is not None:
            block = self._resampler.resample_chunk(np.ascontiguousarray(block), last=False)
        self._take(block)

    def _take(self, block: np.ndarray) -> None:
        if not len(block):
            return
        self.peak = max(self.peak, float(np.abs(block).max()))
        if self._staging is not None:
            self._staging.write(np.ascontiguousarray(block).tobytes())
        else:
            self._encode(block)

    def _encode(self, block: np.ndarray) -> None:
        if self.gain != 1.0:
            block = block * np.float32(self.gain)
        if not self.format.is_float:
            over = np.abs(block) > 1.0
            count = int(np.count_nonzero(over))
            if count:
                self.clipped += count
                block = np.clip(block, -1.0, 1.0)
        self._file.write(block)

    def close(self) -> None:
        """Flushes the resampler, and for ``normalise`` encodes the staged stem; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._resampler is not None:
                self._take(
                    self._resampler.resample_chunk(
                        np.zeros((0, self.channels), np.float32), last=True
                    )
                )
            if self._staging is not None:
                self._staging.close()
                self._encode_staged()
        finally:
            if self._file is not None:
                self._file.close()
            if self._staging is not None:
                self._staging.close()
                if os.path.exists(self._staging_path):
                    os.remove(self._staging_path)

    def _encode_staged(self, frames_per_block: int = 1 << 16) -> None:
        """Second pass of ``normalise``: scale by 1/peak if the peak passes 1, then encode."""
        self.gain = 1.0 / self.peak if self.peak > 1.0 else 1.0
        self._file = self._open_target()
        with open(self._staging_path, "rb") as staged:
            while True:
                data = staged.read(frames_per_block * self.channels * 4)
                if not data:
                    break
                self._encode(np.frombuffer(data, np.float32).reshape(-1, self.channels))

    def __enter__(self) -> StemWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- file names -----------------------------------------------------------------------------

DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"
TEMPLATE_FIELDS = ("track", "track_name", "stem", "ext", "model")


def validate_template(template: str) -> str:
    """Checks a ``--filename_template`` once; returns it.

    Placeholders: ``{track}`` (the track id, may hold '/'), ``{track_name}`` (its last part),
    ``{stem}``, ``{ext}`` (the format's extension), ``{model}`` (the model, made path-safe).
    The template must hold ``{track}`` (names must differ across tracks) and ``{stem}`` (and
    across stems), be relative and hold no '..'.

    Raises:
      ValueError: one line saying what is wrong.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"--filename_template {template!r}: {e}") from None
    fields = [f for _, f, _, _ in parsed if f is not None]
    for _, field, spec, conversion in parsed:
        if field is not None and (field not in TEMPLATE_FIELDS or spec or conversion):
            raise ValueError(
                f"--filename_template {template!r}: unknown placeholder "
                f"{{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}; use "
                + ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
            )
    for needed in ("track", "stem"):
        if needed not in fields:
            raise ValueError(
                f"--filename_template {template!r} must contain {{{needed}}} so "
                f"every {needed}'s file has its own name"
            )
    if template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]+:", template):
        raise ValueError(f"--filename_template {template!r} must be relative to --output")
    if ".." in re.split(r"[/\\]", template):
        raise ValueError(f"--filename_template {template!r} must not contain '..'")
    return template


def model_label(model_name: str) -> str:
    """A path-safe form of a model spec: ``spleeter:4stems`` -> ``spleeter-4stems``, a folder
    or URI -> its last part."""
    if "/" in model_name.rstrip("/"):
        model_name = model_name.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") or "model"


def stem_path(template: str, track_id: str, stem: str, ext: str, model_name: str) -> str:
    """The stem file's path relative to the output root ('/'-separated).

    ``stem_path(DEFAULT_TEMPLATE, 'a/b', 'vocals', 'wav', m) == 'a/b/vocals.wav'``: today's
    layout. Call ``validate_template`` once first (this re-checks the result only).
    """
    path = validate_template(template).format(
        track=track_id,
        track_name=track_id.rstrip("/").rsplit("/", 1)[-1],
        stem=stem,
        ext=ext,
        model=model_label(model_name),
    )
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or "" in parts:
        raise ValueError(
            f"--filename_template {template!r} gives the bad path {path!r} for track {track_id!r}"
        )
    return path


# --- stem subsets and sums ------------------------------------------------------------------

REST = "rest"
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def stem_mix(spec: str | None, model_stems: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    """Which stems to deliver, as sums of the model's stems (``--stems``).

    Syntax: comma-separated items, each ``NAME`` (a model stem, or ``rest``) or
    ``NAME=TERM+TERM...`` with each TERM a model stem or ``rest``. ``rest`` is every model stem
    that no item names explicitly. Examples with 4stems (vocals, drums, bass, other):
    ``vocals`` (vocals only), ``vocals,rest`` (vocals and rest = drums+bass+other),
    ``vocals,accompaniment=drums+bass+other``, ``drums,no_drums=vocals+bass+other`` (a stem may
    feed several outputs). None or '' delivers the model's stems unchanged.

    Returns:
      (output names, matrix) with matrix (S_model, S_out) float32 of 0/1: the delivered stems
      are ``block @ matrix`` for (n, C, S_model) blocks.
    Raises:
      ValueError: unknown stem, duplicate or bad name, empty ``rest``, empty spec item.
    """
    if not spec or not spec.strip():
        return tuple(model_stems), np.eye(len(model_stems), dtype=np.float32)
    items = []
    for item in spec.split(","):
        name, eq, terms = (part.strip() for part in item.partition("="))
        terms = [t.strip() for t in terms.split("+")] if eq else [name]
        if not _NAME.fullmatch(name) or not all(terms):
            raise ValueError(
                f"--stems {spec!r}: bad item {item.strip()!r}; expected NAME or "
                "NAME=STEM+STEM (letters, digits, _ and -)"
            )
        for term in terms:
            if term != REST and term not in model_stems:
                raise ValueError(
                    f"--stems {spec!r}: unknown stem {term!r}; the model's stems "
                    f"are {', '.join(model_stems)} (and '{REST}')"
                )
        items.append((name, terms))
    names = [name for name, _ in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--stems {spec!r}: {', '.join(duplicates)} named twice")
    named = {t for _, terms in items for t in terms if t != REST}
    rest = [s for s in model_stems if s not in named]
    matrix = np.zeros((len(model_stems), len(items)), np.float32)
    for j, (_, terms) in enumerate(items):
        for term in terms:
            if term == REST and not rest:
                raise ValueError(
                    f"--stems {spec!r}: '{REST}' is empty, every model stem is named already"
                )
            for stem in rest if term == REST else [term]:
                matrix[model_stems.index(stem), j] = 1.0
    return tuple(names), matrix


def mix_is_identity(matrix: np.ndarray) -> bool:
    """True when ``stem_mix`` delivers the model's stems unchanged (skip the matmul)."""
    return matrix.shape[0] == matrix.shape[1] and bool(
        np.array_equal(matrix, np.eye(len(matrix), dtype=matrix.dtype))
    )
