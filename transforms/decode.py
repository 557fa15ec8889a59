"""DecodeSegments: stream-decode a track, bring it to the model's rate and to stereo, cut segments.

The track is never held in memory: blocks flow from the decoder through a streaming resampler
into a sliding window that cuts the samples each segment's STFT needs
(``model.segmentation.segment_sample_range``). Decoding uses soundfile (libsndfile: WAV, FLAC,
AIFF, OGG/Vorbis/Opus, MP3) and falls back to PyAV (ffmpeg's decoders: AAC/M4A, ALAC, anything
libsndfile rejects). Every problem ends the track with an error a person can act on.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import apache_beam as beam
import numpy as np
import soundfile
import soxr

from stembeam.model.config import ModelConfig
from stembeam.model.segmentation import SegmentPlan, plan_segments, segment_sample_range
from stembeam.model.spectral import frame_count
from stembeam.transforms import metrics, storage
from stembeam.transforms.records import AudioInfo, Segment

BLOCK_FRAMES = 1 << 16
log = logging.getLogger("stembeam")
# Containers whose header states the exact length; others are counted while they are decoded.
EXACT_LENGTH_FORMATS = frozenset({"WAV", "WAVEX", "AIFF", "FLAC", "W64", "RF64", "CAF", "AU"})
# Bytes per sample of the uncompressed subtypes, whose data chunk length gives the sample count.
_PCM_WIDTHS = {
    "PCM_S8": 1,
    "PCM_U8": 1,
    "PCM_16": 2,
    "PCM_24": 3,
    "PCM_32": 4,
    "FLOAT": 4,
    "DOUBLE": 8,
    "ULAW": 1,
    "ALAW": 1,
}
_OPEN_LENGTH = 0x7FFFF000  # 32-bit data sizes from here up are placeholders (sox, ffmpeg pipes)
_W64_DATA = bytes.fromhex("64617461f3acd311 8cd100c04f8edb8a".replace(" ", ""))
# ITU-R BS.775 fold-down weight of centre and surround channels.
_SURROUND_GAIN = 1.0 / np.sqrt(2.0)


class DecodeError(Exception):
    """The input cannot be turned into audio; the message says why, for a person to act on."""


@dataclasses.dataclass
class AudioSource:
    """An opened input.

    Attributes:
      sample_rate: Hz.
      channels: channel count.
      codec: ``'<container>/<codec>'`` as decoded.
      frames: exact length in samples when the container states it reliably, else None.
      blocks: returns a fresh iterator over ``(n, channels)`` float32 blocks from the start.
    """

    sample_rate: int
    channels: int
    codec: str
    frames: int | None
    blocks: Callable[[], Iterator[np.ndarray]]


def _data_chunk(f: BinaryIO, size: int, frame_bytes: int) -> tuple[int, int] | None:
    """``(stated bytes, offset)`` of the sample data of a RIFF/RIFX/RF64/W64/AIFF/AIFC file of
    ``frame_bytes`` a frame, as its chunk headers state them, or None (another container, or a
    length left open by a streaming writer: 0, or 0x7FFFF000 and up in a 32-bit field)."""
    f.seek(0)
    head = f.read(16)
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        order, pos, data64 = ("<" if head[:4] != b"RIFX" else ">"), 12, None
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack(order + "4sI", f.read(8))
            if chunk == b"ds64":
                data64 = struct.unpack("<Q", f.read(16)[8:16])[0]
            elif chunk == b"data":
                if head[:4] == b"RF64" and length == 0xFFFFFFFF:
                    return (data64, pos + 8) if data64 else None
                return (length, pos + 8) if 0 < length < _OPEN_LENGTH else None
            pos += 8 + length + (length & 1)
    elif head[:4] == b"riff":  # Sony Wave64: GUID chunk ids, 64-bit sizes, 8-byte alignment
        pos = 40
        while pos + 24 <= size:
            f.seek(pos)
            guid, length = struct.unpack("<16sQ", f.read(24))
            if guid == _W64_DATA:
                return (length - 24, pos + 24) if length > 24 else None
            pos += max(24, length + (-length % 8))
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        pos, frames, data = 12, None, None
        while pos + 8 <= size and (frames is None or data is None):
            f.seek(pos)
            chunk, length = struct.unpack(">4sI", f.read(8))
            if chunk == b"COMM":
                frames = struct.unpack(">hI", f.read(6))[1]
            elif chunk == b"SSND":
                data = pos + 16 + struct.unpack(">I", f.read(4))[0]
            pos += 8 + length + (length & 1)
        if frames and data is not None:
            return frames * frame_bytes, data
    return None


def _truncation(f: BinaryIO, sf: soundfile.SoundFile) -> str | None:
    """Why an uncompressed WAV/RF64/W64/AIFF file is shorter than its header states, or None.

    libsndfile clamps such a file's frame count to the samples present, so the cut would pass
    unnoticed; the chunk headers still state the length written.
    """
    width = _PCM_WIDTHS.get(sf.subtype)
    if width is None or sf.format not in ("WAV", "WAVEX", "RF64", "W64", "AIFF"):
        return None
    frame_bytes = width * sf.channels
    position = f.tell()
    try:
        f.seek(0, 2)
        size = f.tell()
        found = _data_chunk(f, size, frame_bytes)
    except (OSError, struct.error):
        return None
    finally:
        f.seek(position)
    if found is None:
        return None
    stated, offset = found
    if size - offset >= stated:
        return None
    return (
        f"the file is truncated: its header states {stated // frame_bytes} samples but only "
        f"{max(0, size - offset) // frame_bytes} are present"
    )


def _soundfile_source(f: BinaryIO) -> tuple[AudioSource, soundfile.SoundFile]:
    """libsndfile's view of ``f``; raises DecodeError when an uncompressed file is cut short."""
    sf = soundfile.SoundFile(f)
    truncated = _truncation(f, sf)
    if truncated:
        sf.close()
        raise DecodeError(truncated)

    def blocks() -> Iterator[np.ndarray]:
        sf.seek(0)
        position = 0
        while True:
            try:
                block = sf.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
            except soundfile.LibsndfileError as e:
                where = f" after {position / sf.samplerate:.2f} s" if position else ""
                raise DecodeError(
                    f"the file is damaged or truncated{where} (libsndfile: {_reason(e)})"
                ) from e
            if not len(block):
                return
            position += len(block)
            yield block

    exact = sf.format in EXACT_LENGTH_FORMATS
    source = AudioSource(
        sf.samplerate,
        sf.channels,
        f"{sf.format}/{sf.subtype}",
        sf.frames if exact else None,
        blocks,
    )
    return source, sf


def _pyav_source(f: BinaryIO) -> AudioSource:
    import av  # imported here: only needed for what libsndfile cannot read

    def open_stream():
        f.seek(0)
        container = av.open(f, mode="r")
        if not container.streams.audio:
            container.close()
            raise DecodeError("the file has no audio stream")
        return container, container.streams.audio[0]

    container, stream = open_stream()
    ctx = stream.codec_context
    rate, channels = ctx.sample_rate, ctx.layout.nb_channels
    codec = f"{container.format.name.split(',')[0]}/{ctx.name}"
    container.close()
    if not rate or not channels:
        raise DecodeError(f"the audio stream ({codec}) states no sample rate or channel count")

    def blocks() -> Iterator[np.ndarray]:
        container, stream = open_stream()
        resampler = av.AudioResampler(format="fltp")  # planar float32, same rate and layout
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().T.astype(np.float32, copy=False)
            for out in resampler.resample(None):
                yield out.to_ndarray().T.astype(np.float32, copy=False)
        finally:
            container.close()

    return AudioSource(rate, channels, codec, None, blocks)


def _reason(error: Exception) -> str:
    """A decoder error's own words, without the file object's repr."""
    text = getattr(error, "error_string", None) or getattr(error, "strerror", None)
    return str(text or error).strip()


@contextlib.contextmanager
def open_audio(uri: str) -> Iterator[AudioSource]:
    """Open ``uri`` for streaming decode; raises DecodeError when nothing can decode it."""
    try:
        f = storage.open_read(uri)
    except Exception as e:
        raise DecodeError(f"cannot open the file: {e}") from e
    with contextlib.ExitStack() as stack:
        stack.enter_context(f)
        try:
            source, sf = _soundfile_source(f)
            stack.enter_context(sf)
        except (soundfile.LibsndfileError, RuntimeError) as sf_error:
            try:
                source = _pyav_source(f)
            except DecodeError:
                raise
            except Exception as av_error:
                raise DecodeError(
                    "not a decodable audio file (empty, damaged or an unsupported format): "
                    f"libsndfile: {_reason(sf_error)}; ffmpeg: {_reason(av_error)}"
                ) from av_error
        yield source


def to_stereo(block: np.ndarray) -> np.ndarray:
    """``(n, C)`` -> ``(n, 2)``: mono is duplicated, 5.1 (L R C LFE Ls Rs) folded down per
    ITU-R BS.775 (LFE dropped, normalised so a full-scale input stays within [-1, 1]), other
    layouts average even channels into left and odd channels into right."""
    channels = block.shape[1]
    if channels == 2:
        return block
    if channels == 1:
        return np.repeat(block, 2, axis=1)
    if channels == 6:
        left = block[:, 0] + _SURROUND_GAIN * (block[:, 2] + block[:, 4])
        right = block[:, 1] + _SURROUND_GAIN * (block[:, 2] + block[:, 5])
        return (np.stack([left, right], axis=1) / (1 + 2 * _SURROUND_GAIN)).astype(np.float32)
    return np.stack([block[:, 0::2].mean(axis=1), block[:, 1::2].mean(axis=1)], axis=1)


def _checked(blocks: Iterable[np.ndarray], sample_rate: int) -> Iterator[np.ndarray]:
    """Pass blocks through, raising DecodeError at the first non-finite sample."""
    position = 0
    for block in blocks:
        if not np.isfinite(block).all():
            bad = position + int(np.argmin(np.isfinite(block).all(axis=1)))
            raise DecodeError(
                f"the audio contains NaN or infinite samples (first at "
                f"{bad / sample_rate:.3f} s): the file is corrupt"
            )
        position += len(block)
        yield block


def _resampled(blocks: Iterable[np.ndarray], in_rate: int, out_rate: int) -> Iterator[np.ndarray]:
    """Streaming resampling of ``(n, 2)`` float32 blocks (soxr, high quality)."""
    if in_rate == out_rate:
        yield from blocks
        return
    stream = soxr.ResampleStream(in_rate, out_rate, 2, dtype="float32", quality="HQ")
    for block in blocks:
        out = stream.resample_chunk(np.ascontiguousarray(block), last=False)
        if len(out):
            yield out
    yield stream.resample_chunk(np.zeros((0, 2), np.float32), last=True)


def _exact(blocks: Iterable[np.ndarray], length: int) -> Iterator[np.ndarray]:
    """Crop or zero-pad the stream to exactly ``length`` samples."""
    position = 0
    for block in blocks:
        block = block[: max(0, length - position)]
        position += len(block)
        if len(block):
            yield block
    if position < length:
        yield np.zeros((length - position, 2), np.float32)


def model_length(num_samples: int, in_rate: int, out_rate: int) -> int:
    """Samples of a ``num_samples`` input once resampled from ``in_rate`` to ``out_rate``."""
    return int(round(num_samples * out_rate / in_rate))


class SampleWindow:
    """Reads ranges ``[start, stop)`` of a block stream in increasing order; samples outside
    the stream read as zeros. Holds only the samples not yet dropped."""

    def __init__(self, blocks: Iterable[np.ndarray], channels: int = 2):
        self._blocks = iter(blocks)
        self._channels = channels
        self._pending: list[np.ndarray] = []
        self._buffer = np.zeros((0, channels), np.float32)
        self._start = 0  # stream position of self._buffer[0]
        self.ended = False

    @property
    def end(self) -> int:
        """Stream position after the last sample pulled so far."""
        return self._start + len(self._buffer) + sum(len(b) for b in self._pending)

    def fill(self, stop: int) -> bool:
        """Pull blocks until ``stop`` samples are in or the stream ends; True when it ended
        short of ``stop``."""
        end = self.end
        if end >= stop:
            return False
        for block in self._blocks:
            self._pending.append(block)
            end += len(block)
            if end >= stop:
                return False
        self.ended = True
        return True

    def truncate(self, length: int) -> None:
        """Forget anything past stream position ``length`` (samples there read as zeros)."""
        self.read(length, length)
        self._buffer = self._buffer[: max(0, length - self._start)]

    def read(self, start: int, stop: int) -> np.ndarray:
        """``(stop - start, C)`` float32; ``start`` must not precede an earlier ``drop``."""
        self.fill(stop)
        if self._pending:
            self._buffer = np.concatenate([self._buffer, *self._pending])
            self._pending = []
        out = np.zeros((stop - start, self._channels), np.float32)
        lo, hi = max(start, self._start), min(stop, self._start + len(self._buffer))
        if hi > lo:
            out[lo - start : hi - start] = self._buffer[lo - self._start : hi - self._start]
        return out

    def drop(self, before: int) -> None:
        """Forget samples before stream position ``before``."""
        cut = min(max(0, before - self._start), len(self._buffer))
        self._buffer = self._buffer[cut:].copy()
        self._start += cut


def _plans(
    window: SampleWindow,
    known: int | None,
    cfg: ModelConfig,
    segmentation: str,
    in_count: Callable[[], int],
    source: AudioSource,
) -> Iterator[tuple[SegmentPlan, bool, int]]:
    """``(plan, is_last, model_samples)`` for each segment, planned as samples arrive.

    ``known``: the model-rate length when the header states it. Otherwise the window reads ahead
    until the next plan can no longer change: a plan depends on the track's length only through
    ``min(., n_frames)`` of frames before its ``keep_start + T`` (at most ``frame_start + 2 T``:
    the context is at most T), so once more than ``frame_start + 2 T`` frames are in (or the
    stream ended: the length is then exact) it is final and, when not at the track's end, not the
    last; its input ends by then too. ``model_samples`` is exact with the last.
    """
    T, step, index = cfg.T, cfg.frame_step, 0
    while True:
        length = known
        if length is None and window.ended:
            length = model_length(in_count(), source.sample_rate, cfg.sample_rate)
            window.truncate(length)
        if length is not None:
            if length <= 0:
                raise DecodeError(f"the file holds no audio samples (zero-length {source.codec})")
            plans = plan_segments(frame_count(length, cfg.frame_length, step), T, segmentation)
            yield from ((plan, plan is plans[-1], length) for plan in plans[index:])
            return
        # the plan as on an endless track (any track of (index + 3) T frames has it, not last)
        plan = plan_segments((index + 3) * T, T, segmentation)[index]
        if window.fill((plan.frame_start + 2 * T + 2) * step):
            continue  # the stream ended first: plan from the exact length
        yield plan, False, 0  # more than frame_start + 2 T frames are in
        index += 1


def decode_segments(
    uri: str, cfg: ModelConfig, segmentation: str
) -> tuple[AudioInfo, Iterator[tuple[SegmentPlan, np.ndarray, AudioInfo]]]:
    """Open ``uri`` and cut its segments while decoding it once.

    Returns ``(info, segments)``: ``info`` as the header states it (``num_samples`` and
    ``model_samples`` None when the container does not state the length: MP3, OGG, M4A...);
    ``segments`` lazily yields ``(plan, samples (L_s, 2) float32, final)`` in plan order at
    ``cfg.sample_rate``, ``final`` None except with the last segment: the track's exact
    ``AudioInfo``. Raises DecodeError, also while iterating (NaN samples, truncation, no audio).
    """
    stack = contextlib.ExitStack()
    source = stack.enter_context(open_audio(uri))
    frames = source.frames
    if frames is not None and frames <= 0:
        stack.close()
        raise DecodeError(f"the file holds no audio samples (zero-length {source.codec})")
    known = None if frames is None else model_length(frames, source.sample_rate, cfg.sample_rate)
    info = AudioInfo(source.sample_rate, source.channels, source.codec, frames, known)
    decoded = [0]  # input samples decoded so far

    def counted(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            decoded[0] += len(block)
            yield block
        if frames is not None and decoded[0] < frames:
            raise DecodeError(
                f"the file is truncated: its header states {frames} samples but "
                f"only {decoded[0]} could be decoded"
            )

    def segments() -> Iterator[tuple[SegmentPlan, np.ndarray, AudioInfo | None]]:
        with stack:
            stream = counted(_checked(source.blocks(), source.sample_rate))
            stereo = (to_stereo(b) for b in stream)
            resampled = _resampled(stereo, source.sample_rate, cfg.sample_rate)
            window = SampleWindow(resampled if known is None else _exact(resampled, known))
            for plan, last, length in _plans(
                window, known, cfg, segmentation, lambda: decoded[0], source
            ):
                start, stop = segment_sample_range(plan, cfg.T, cfg.frame_length, cfg.frame_step)
                final = None
                if last:  # decode to the end first: a bad tail fails the track
                    window.fill(max(stop, length + 1))
                    final = dataclasses.replace(
                        info, num_samples=frames or decoded[0], model_samples=length
                    )
                yield plan, window.read(start, stop), final
                window.drop(start)

    return info, segments()


def limit_heap_fragmentation() -> None:
    """Keep glibc from growing the heap with every segment-sized array freed.

    glibc raises its mmap threshold each time a large block is freed, after which segment-sized
    arrays (0.3-20 MB) come from heap arenas (up to 8 per core with threads) that fragment: peak
    RSS then grows by ~0.2 MB per segment processed. A fixed threshold and two arenas keep it
    flat. Call it early (the CLI does) and in each worker; no-op off glibc, and without effect
    under tcmalloc (``pipeline.allocator``), which keeps freed memory for reuse instead.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_arena_max, m_mmap_threshold = -8, -3
    libc.mallopt(m_arena_max, 2)
    libc.mallopt(m_mmap_threshold, 256 * 1024)


class _DecodeSegmentsFn(beam.DoFn):
    def __init__(self, cfg: ModelConfig, segmentation: str):
        self._cfg = cfg
        self._segmentation = segmentation

    def setup(self):
        limit_heap_fragmentation()

    def process(self, track):
        started = time.time()
        info, index = None, 0
        try:
            info, segments = decode_segments(track.uri, self._cfg, self._segmentation)
            for plan, samples, final in segments:
                index = plan.index + 1
                yield Segment(
                    track, plan, final is not None, final or info, started, samples=samples
                )
        except Exception as e:  # an unexpected decoder failure is still one track's failure
            reason = (
                str(e)
                if isinstance(e, DecodeError)
                else (f"decoding failed: {type(e).__name__}: {e}")
            )
            metrics.count(metrics.DECODE_FAILURES)
            plan = SegmentPlan(index, 0, 0, 0) if index else None
            yield Segment(track, plan, False, info, started, error=reason)
            return
        metrics.count(metrics.SEGMENTS, index)


class DecodeSegments(beam.PTransform):
    """``Track`` -> its ``Segment`` records (with ``samples``) in order; a track that cannot be
    decoded (or fails part-way) ends with one ``Segment`` whose ``error`` says why."""

    def __init__(self, cfg: ModelConfig, segmentation: str = "overlap"):
        super().__init__()
        self._cfg = cfg
        self._segmentation = segmentation

    def expand(self, tracks):
        return tracks | beam.ParDo(
            _DecodeSegmentsFn(self._cfg, self._segmentation)
        ).with_output_types(Segment)
