"""WriteStems: separated segments streamed straight into each track's final stem files.

Runs in the same fused stage as decoding and inference, so no shuffle stands between a track's
first decoded sample and its published stems. Per track it keeps one open writer per stem, a
``StreamingOverlapAdd`` and (for inputs not at the model's rate) a streaming resampler; segments
are reconstructed (ratio masks or Wiener filtering, then iSTFT), overlap-added, resampled back to
the input's rate and appended to the stem files as they arrive. The files are staged under the
run's own temporary folder (``output_state.run_temp_dir``) and published (renamed into place)
together when the track's last segment is in. Temporary storage is therefore bounded by the
tracks in flight on each worker thread (those whose segments share an inference batch), never
by the catalog.

A runner hands one bundle's elements to the fused DoFns in order, and decoding emits all of a
track's segments in one call, so a track never spans two bundles; segments arriving out of order
(a runner may reorder within a bundle) are held until their turn.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import soxr
from apache_beam.transforms.window import GlobalWindows

from stembeam.model.config import ModelConfig
from stembeam.model.reconstruct import reconstruct_segment
from stembeam.model.segmentation import StreamingOverlapAdd
from stembeam.transforms import metrics, storage
from stembeam.transforms.delivery import (
    DEFAULT_TEMPLATE,
    OutputFormat,
    mix_is_identity,
    stem_mix,
    stem_path,
    validate_template,
)
from stembeam.transforms.output_state import run_temp_dir
from stembeam.transforms.records import AudioInfo, Segment, Track, result_row

log = logging.getLogger("stembeam")


@dataclasses.dataclass(frozen=True)
class StemSettings:
    """What the writer needs to know about the run.

    Attributes:
      output: output root (absolute for local paths).
      run_id: this run; its staging files go to ``run_temp_dir(output, run_id)``.
      model: model spec as given; model_sha256: its weights' sha256.
      config: the model's config (stems, rates, framing).
      postprocess: ``'ratio'`` or ``'wiener'``.
      fmt: the delivery format.
      template: file name template (``delivery.stem_path``), relative to ``output``.
      stems: ``--stems`` spec (``delivery.stem_mix``): which sums of the model's stems to deliver.
      residual: ``'none'``, ``'last'`` or ``'share'`` (``model.reconstruct.reconstruct_segment``).
    """

    output: str
    run_id: str
    model: str
    model_sha256: str
    config: ModelConfig
    postprocess: str = "ratio"
    fmt: OutputFormat = OutputFormat.parse("wav")
    template: str = DEFAULT_TEMPLATE
    stems: str | None = None
    residual: str = "none"

    def delivered(self) -> tuple[tuple[str, ...], np.ndarray]:
        """(stem names delivered, ``(S_model, S_out)`` mixing matrix)."""
        return stem_mix(self.stems, self.config.stems)

    def stem_uris(self, track_id: str) -> dict[str, str]:
        """delivered stem -> final URI, in delivery order."""
        return {
            stem: storage.join(
                self.output,
                stem_path(self.template, track_id, stem, self.fmt.extension, self.model),
            )
            for stem in self.delivered()[0]
        }


class TrackFailed(Exception):
    """A track cannot be completed; the message is the reason stored in its result row."""


class _StagedFile:
    """A stem file being written: a local file, published to ``final`` in two steps (into the
    run's temporary folder, then renamed), so every partial file lies under that folder."""

    def __init__(self, final: str, staged: str):
        self.final, self.staged = final, staged
        if storage.is_local(staged):
            storage.makedirs(os.path.dirname(staged))
            self.local = staged
        else:
            fd, self.local = tempfile.mkstemp(prefix="stembeam-", suffix=os.path.splitext(final)[1])
            os.close(fd)

    def stage(self) -> None:
        """Make the staged copy complete (remote outputs: upload the local file)."""
        if self.local != self.staged:
            with open(self.local, "rb") as src, storage.atomic_writer(self.staged) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.remove(self.local)

    def publish(self) -> None:
        if storage.is_local(self.final):
            os.makedirs(os.path.dirname(self.final), exist_ok=True)
        storage.replace(self.staged, self.final)

    def discard(self) -> None:
        for path in {self.local, self.staged}:
            try:
                if storage.is_local(path):
                    if os.path.exists(path):
                        os.remove(path)
                else:
                    storage.delete([path])
            except Exception as e:  # never fatal: the next run on OUT deletes dead runs' files
                log.warning("could not delete temporary file %s: %s", path, e)


class _TrackWriter:
    """Streams one track's separated segments into its stem files."""

    def __init__(self, first: Segment, settings: StemSettings):
        self.track, self.info = first.track, first.info
        self.started_at = first.started_at
        self._last: int | None = None  # index of the last segment, once it arrived
        self._settings, self._cfg = settings, settings.config
        self._next = 0
        self._waiting: dict[int, Segment] = {}
        self._ola = StreamingOverlapAdd(self.info.model_samples)
        n_channels = 2 * len(self._cfg.stems)
        self._resampler = None
        if self.info.sample_rate != self._cfg.sample_rate:
            self._resampler = soxr.ResampleStream(
                self._cfg.sample_rate,
                self.info.sample_rate,
                n_channels,
                dtype="float32",
                quality="HQ",
            )
        self._written = 0  # samples at the input rate
        names, self._mix = settings.delivered()
        if mix_is_identity(self._mix):
            self._mix = None
        self.uris = settings.stem_uris(self.track.track_id)
        tmp = run_temp_dir(settings.output, settings.run_id)
        ext = settings.fmt.extension
        self._files = [
            _StagedFile(uri, storage.join(tmp, self.track.track_id, f"{stem}.{ext}"))
            for stem, uri in self.uris.items()
        ]
        self._writers = []
        try:
            for staged in self._files:
                self._writers.append(
                    settings.fmt.open_writer(staged.local, self.info.sample_rate, 2)
                )
        except BaseException:
            self.abort()
            raise

    @property
    def complete(self) -> bool:
        return self._last is not None and self._next > self._last

    def add(self, segment: Segment) -> None:
        """Takes the next segment(s) in order; raises TrackFailed on a failed segment."""
        if segment.error is not None:
            raise TrackFailed(segment.error)
        self._waiting[segment.plan.index] = segment
        if segment.is_last:  # its info has the exact lengths (counted while decoding)
            self._last, self.info = segment.plan.index, segment.info
            self._ola.num_samples = self.info.model_samples
        while self._next in self._waiting:
            self._push(self._waiting.pop(self._next))
            self._next += 1
        if self.complete:
            self._write_model_rate(self._ola.finish(), last=True)

    def _push(self, segment: Segment) -> None:
        if segment.stem_block is not None:  # the graph path reconstructed it already
            self._write_model_rate(self._ola.push(*segment.stem_block), last=False)
            return
        try:
            start, samples = reconstruct_segment(
                segment.mix_stft,
                segment.estimates,
                segment.plan,
                self._cfg,
                self._settings.postprocess,
                self._settings.residual,
                segment.samples,
            )
        except Exception as e:
            raise TrackFailed(
                f"reconstruction ({self._settings.postprocess}) failed: {type(e).__name__}: {e}"
            ) from e
        self._write_model_rate(self._ola.push(start, samples), last=False)

    def _write_model_rate(self, block: np.ndarray, last: bool) -> None:
        """Resample ``(n, 2, S)`` model-rate samples to the input rate and append them; the
        last call pads or crops to exactly the input's length."""
        n_stems = len(self._cfg.stems)
        block = block.reshape(len(block), 2, n_stems)
        if self._resampler is not None:
            flat = np.ascontiguousarray(block.reshape(len(block), 2 * n_stems), dtype=np.float32)
            block = self._resampler.resample_chunk(flat, last=last).reshape(-1, 2, n_stems)
        if self.info.num_samples is not None:  # known at the latest with the last segment
            block = block[: max(0, self.info.num_samples - self._written)]
        if last and self._written + len(block) < self.info.num_samples:
            pad = np.zeros(
                (self.info.num_samples - self._written - len(block), 2, n_stems), np.float32
            )
            block = np.concatenate([block, pad])
        if not len(block):
            return
        self._written += len(block)
        if self._mix is not None:
            block = block @ self._mix
        for s, writer in enumerate(self._writers):
            writer.write(block[:, :, s])

    def publish(self) -> dict[str, str]:
        """Close the files and move them into place together; returns stem -> URI."""
        for writer in self._writers:
            writer.close()
        clipped = sum(writer.clipped for writer in self._writers)
        if clipped:
            log.warning(
                "track %s: %d samples clipped to full scale in its %s stems (use "
                "--clip_mode normalise or a float format to keep them)",
                self.track.track_id,
                clipped,
                self._settings.fmt.name,
            )
        for staged in self._files:
            staged.stage()
        for staged in self._files:
            staged.publish()
        return self.uris

    def abort(self) -> None:
        for writer in self._writers:
            try:
                writer.close()
            except Exception:  # already failing: the file is discarded either way
                pass
        for staged in self._files:
            staged.discard()


class _WriteStemsFn(beam.DoFn):
    def __init__(self, settings: StemSettings):
        self._settings = settings

    def start_bundle(self):
        self._open: dict[str, _TrackWriter] = {}
        self._ended: set[str] = set()

    def process(self, segment: Segment) -> Iterator[tuple[Track, dict[str, Any]]]:
        if segment.track.track_id not in self._ended:  # else: a failed track's later segments
            yield from self._take(segment)

    def _take(self, segment: Segment) -> Iterator[tuple[Track, dict[str, Any]]]:
        track_id = segment.track.track_id
        writer = self._open.get(track_id)
        try:
            if writer is None:
                if segment.info is None:  # failed before any segment
                    raise TrackFailed(segment.error or "the track could not be decoded")
                writer = self._open[track_id] = _TrackWriter(segment, self._settings)
            writer.add(segment)
            stems = writer.publish() if writer.complete else None
        except Exception as e:
            yield self._failed(segment, writer, e)
            return
        if stems is not None:
            del self._open[track_id]
            self._ended.add(track_id)
            yield writer.track, self._ok(writer, stems)

    def _ok(self, writer: _TrackWriter, stems: dict[str, str]) -> dict[str, Any]:
        info = writer.info
        wall_s = time.time() - writer.started_at
        metrics.count(metrics.TRACKS_OK)
        metrics.count(metrics.AUDIO_MS, int(info.duration_s * 1e3))
        return self._row(writer.track, "ok", info, stems=stems, wall_s=wall_s)

    def _failed(
        self, segment: Segment, writer: _TrackWriter | None, error: Exception
    ) -> tuple[Track, dict[str, Any]]:
        track = segment.track
        self._open.pop(track.track_id, None)
        self._ended.add(track.track_id)
        if writer is not None:
            writer.abort()
        reason = (
            str(error)
            if isinstance(error, TrackFailed)
            else (f"writing stems failed: {type(error).__name__}: {error}")
        )
        metrics.count(metrics.TRACKS_FAILED)
        return track, self._row(
            track, "failed", segment.info, error=reason, wall_s=time.time() - segment.started_at
        )

    def _row(
        self, track: Track, status: str, info: AudioInfo | None, **fields: Any
    ) -> dict[str, Any]:
        s = self._settings
        return result_row(track, s.run_id, s.model, s.model_sha256, status, info=info, **fields)

    def finish_bundle(self):
        for writer in list(self._open.values()):  # only if a runner split a track
            missing = Segment(
                writer.track,
                None,
                False,
                writer.info,
                writer.started_at,
                error="internal error: the bundle ended before the track's last "
                "segment was separated; run again",
            )
            yield GlobalWindows.windowed_value(
                self._failed(missing, writer, TrackFailed(missing.error))
            )

    def teardown(self):
        for writer in getattr(self, "_open", {}).values():
            writer.abort()


class WriteStems(beam.PTransform):
    """``Segment`` (estimates) -> ``(Track, row)``: one result row per track, ``ok`` once all
    its stems are published, or ``failed`` with the reason (nothing of it left behind)."""

    def __init__(self, settings: StemSettings):
        super().__init__()
        settings.delivered()  # raises ValueError on a bad --stems spec
        validate_template(settings.template)
        self._fn = _WriteStemsFn(settings)

    def expand(self, segments):
        return segments | beam.ParDo(self._fn)
