"""Reconstruct, WriteChunks and AssembleStems: model estimates back to stem files.

Reconstruct turns a segment's estimates into the overlap-add of its kept frames (ratio masks or
Wiener filtering, ``model.separate.reconstruct_segment``); WriteChunks stores that as a temporary
chunk file next to the output and emits a small ``ChunkRef``. After a GroupByKey by track (only
ChunkRefs travel), AssembleStems streams the chunks in order through
``model.segmentation.StreamingOverlapAdd`` into the final stem files: same length and sample rate
as the input, written atomically, then the done-marker, then the chunks are deleted.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np
import soundfile
import soxr

from model.config import ModelConfig
from model.segmentation import StreamingOverlapAdd
from model.separate import reconstruct_segment
from transforms import storage
from transforms.catalog import done_marker
from transforms.inference import ModelInfo
from transforms.records import AudioInfo, ChunkRef, DecodeSummary, Segment, Track, result_row, utc_now

CHUNK_DIR = ".chunks"
# soundfile (format, subtype) per output format: WAV keeps the model's float32 exactly.
FORMATS = {"wav": ("WAV", "FLOAT"), "flac": ("FLAC", "PCM_24")}


def chunk_uri(output: str, track_id: str, index: int) -> str:
    return storage.join(output, track_id, CHUNK_DIR, f"{index:06d}.npy")


class _ReconstructAndWriteFn(beam.DoFn):
    def __init__(self, cfg: ModelConfig, postprocess: str, output: str):
        self._cfg, self._postprocess, self._output = cfg, postprocess, output

    def process(self, segment: Segment) -> Iterator[ChunkRef]:
        track_id, index = segment.track.track_id, segment.plan.index
        if segment.error is not None:
            yield ChunkRef(track_id, index, "", 0, segment.error)
            return
        try:
            start, samples = reconstruct_segment(segment.mix_stft, segment.estimates,
                                                 segment.plan, self._cfg, self._postprocess)
        except Exception as e:
            yield ChunkRef(track_id, index, "", 0,
                           f"reconstruction ({self._postprocess}) failed: {type(e).__name__}: {e}")
            return
        segment.mix_stft = segment.estimates = None
        uri = chunk_uri(self._output, track_id, index)
        try:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(samples, dtype=np.float32))
            storage.write_atomic(uri, buffer.getvalue())
        except Exception as e:
            yield ChunkRef(track_id, index, "", 0, f"writing a chunk to {uri} failed: {e}")
            return
        yield ChunkRef(track_id, index, uri, int(start))


class ReconstructAndWriteChunks(beam.PTransform):
    """``Segment`` (estimates) -> ``ChunkRef``: Reconstruct, then WriteChunks."""

    def __init__(self, cfg: ModelConfig, postprocess: str, output: str):
        super().__init__()
        self._fn = _ReconstructAndWriteFn(cfg, postprocess, output)

    def expand(self, segments):
        return segments | beam.ParDo(self._fn)


class TrackFailed(Exception):
    """A track cannot be completed; the message is the reason stored in its result row."""


def _read_chunks(chunks: Iterable[ChunkRef]) -> Iterator[tuple[int, np.ndarray]]:
    for chunk in chunks:
        with storage.open_read(chunk.uri) as f:
            yield chunk.start, np.load(io.BytesIO(f.read()))


def _overlap_added(chunks: list[ChunkRef], num_samples: int, n_stems: int
                   ) -> Iterator[np.ndarray]:
    """The track's stems ``(n, 2, S)`` float32 in order, chunk by chunk."""
    ola = StreamingOverlapAdd(num_samples)
    for start, block in _read_chunks(chunks):
        done = ola.push(start, block)
        if len(done):
            yield done
    done = ola.finish()
    if len(done):
        yield done


def _at_input_rate(blocks: Iterable[np.ndarray], info: AudioInfo, model_rate: int,
                   n_stems: int) -> Iterator[np.ndarray]:
    """Resample ``(n, 2, S)`` blocks back to the input rate, exactly ``info.num_samples`` long."""
    shape = (2, n_stems)
    if info.sample_rate != model_rate:
        stream = soxr.ResampleStream(model_rate, info.sample_rate, 2 * n_stems, dtype="float32",
                                     quality="HQ")
        flat = (stream.resample_chunk(np.ascontiguousarray(b.reshape(len(b), -1)), last=False)
                for b in blocks)
        tail = (stream.resample_chunk(np.zeros((0, 2 * n_stems), np.float32), last=True)
                for _ in range(1))
        blocks = (b.reshape(-1, *shape) for part in (flat, tail) for b in part)
    position = 0
    for block in blocks:
        block = block[: max(0, info.num_samples - position)]
        position += len(block)
        if len(block):
            yield block
    if position < info.num_samples:
        yield np.zeros((info.num_samples - position, *shape), np.float32)


def write_stems(blocks: Iterable[np.ndarray], uris: dict[str, str], sample_rate: int,
                fmt: str) -> None:
    """Stream ``(n, 2, S)`` blocks into one stereo file per stem (``uris`` in stem order),
    all appearing atomically once complete."""
    file_format, subtype = FORMATS[fmt]
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(soundfile.SoundFile(
                stack.enter_context(storage.local_staging(uri)), "w", samplerate=sample_rate,
                channels=2, format=file_format, subtype=subtype))
            for uri in uris.values()]
        for block in blocks:
            if subtype.startswith("PCM"):
                block = np.clip(block, -1.0, 1.0)
            for s, writer in enumerate(writers):
                writer.write(block[:, :, s])


class _AssembleStemsFn(beam.DoFn):
    def __init__(self, model: ModelInfo, output: str, fmt: str, run_id: str):
        self._model, self._output, self._fmt, self._run_id = model, output, fmt, run_id

    def process(self, element) -> Iterator[tuple[Track, dict]]:
        _, grouped = element
        summary: DecodeSummary = list(grouped["summary"])[0]
        chunks = sorted(grouped["chunks"], key=lambda c: c.index)
        track = summary.track
        cfg = self._model.config
        try:
            self._check(summary, chunks)
            info = summary.info
            stems = {stem: storage.join(self._output, track.track_id, f"{stem}.{self._fmt}")
                     for stem in cfg.stems}
            blocks = _overlap_added(chunks, info.model_samples, len(cfg.stems))
            write_stems(_at_input_rate(blocks, info, cfg.sample_rate, len(cfg.stems)), stems,
                        info.sample_rate, self._fmt)
            self._clean_up(track.track_id)
            self._write_marker(track, info, stems)  # last: the track counts as done from here
            row = result_row(track, self._run_id, self._model.spec, self._model.sha256, "ok",
                             info=info, stems=stems, wall_s=time.time() - summary.started_at)
            beam.metrics.Metrics.counter("stembeam", "tracks_ok").inc()
            beam.metrics.Metrics.counter("stembeam", "audio_ms").inc(int(info.duration_s * 1e3))
        except Exception as e:
            reason = str(e) if isinstance(e, TrackFailed) else (
                f"writing stems failed: {type(e).__name__}: {e}")
            self._clean_up(track.track_id)
            row = result_row(track, self._run_id, self._model.spec, self._model.sha256, "failed",
                             error=reason, info=summary.info,
                             wall_s=time.time() - summary.started_at)
            beam.metrics.Metrics.counter("stembeam", "tracks_failed").inc()
        yield track, row

    @staticmethod
    def _check(summary: DecodeSummary, chunks: list[ChunkRef]) -> None:
        if summary.error:
            raise TrackFailed(summary.error)
        errors = [c.error for c in chunks if c.error]
        if errors:
            raise TrackFailed(errors[0])
        if [c.index for c in chunks] != list(range(summary.n_segments)):
            raise TrackFailed(f"internal error: {len(chunks)} of {summary.n_segments} segments "
                              "were separated; run again")

    def _write_marker(self, track: Track, info: AudioInfo, stems: dict[str, str]) -> None:
        marker = {
            "track_id": track.track_id, "source_uri": track.uri, "model": self._model.spec,
            "model_sha256": self._model.sha256, "stems": stems, "run_id": self._run_id,
            "duration_s": info.duration_s, "sample_rate": info.sample_rate,
            "channels": info.channels, "codec": info.codec,
            "finished_at": utc_now().isoformat(),
        }
        storage.write_atomic(done_marker(self._output, track.track_id, self._model.key),
                             json.dumps(marker, indent=1).encode())

    def _clean_up(self, track_id: str) -> None:
        """Delete the track's chunk files and partial files a killed run left behind (hidden
        files: failing to delete them is logged, never fatal)."""
        track_dir = storage.join(self._output, track_id)
        try:
            storage.delete_matching(storage.join(track_dir, CHUNK_DIR, "*"))
            storage.remove_empty_folder(storage.join(track_dir, CHUNK_DIR))
            storage.delete_matching(storage.join(track_dir, ".*.partial-*"))
        except Exception as e:
            logging.getLogger("stembeam").warning("could not delete temporary files of %s: %s",
                                                  track_id, e)


class AssembleStems(beam.PTransform):
    """``{'summary': DecodeSummary, 'chunks': ChunkRef}`` PCollections -> ``(Track, row)``:
    one result row per decoded track, ``ok`` with its stems written, or ``failed``."""

    def __init__(self, model: ModelInfo, output: str, fmt: str, run_id: str):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; choose one of {sorted(FORMATS)}")
        self._fn = _AssembleStemsFn(model, output, fmt, run_id)

    def expand(self, inputs):
        keyed = {
            "summary": inputs["summary"] | "KeySummary" >> beam.Map(
                lambda s: (s.track.track_id, s)),
            "chunks": inputs["chunks"] | "KeyChunks" >> beam.Map(lambda c: (c.track_id, c)),
        }
        return keyed | "GroupByTrack" >> beam.CoGroupByKey() | beam.ParDo(self._fn)
