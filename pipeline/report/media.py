"""The report's media: audio excerpts (decoded through transforms.storage, so local and remote
files alike), spectrogram images, and the hrefs the players use (a link to a local file or an
OGG/Vorbis excerpt written next to the report)."""

from __future__ import annotations

import io
import logging
import os
import urllib.parse
from dataclasses import dataclass

import numpy as np

from stembeam.transforms import storage

_LOG = logging.getLogger(__name__)

# File extensions Chromium/Firefox play in <audio>; anything else gets an excerpt.
PLAYABLE_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm"}
)
SPECTROGRAM_SHAPE = (64, 240)  # (log-frequency rows, time columns) pixels
SPECTROGRAM_RANGE_DB = 80.0
SPECTROGRAM_FRAME = 2048  # STFT window, samples (periodic Hann)
SPECTROGRAM_BAND_HZ = (40.0, 16000.0)  # lowest and highest frequency shown


def local_path(uri: str) -> str:
    """``file://`` URIs as plain paths; anything else unchanged."""
    if uri.lower().startswith("file://"):
        return urllib.parse.unquote(uri[len("file://") :])
    return uri


def read_excerpt(uri: str, start_s: float, length_s: float) -> tuple[np.ndarray, int]:
    """Decode `length_s` seconds from `start_s` of a local or remote audio file.

    Returns (samples (n, C) float32 in [-1, 1], sample rate in Hz); n is shorter at the file's end.
    """
    import soundfile as sf

    with storage.open_read(local_path(uri)) as f, sf.SoundFile(f) as snd:
        rate = snd.samplerate
        if snd.seekable() and start_s > 0:
            snd.seek(min(int(start_s * rate), max(0, snd.frames - 1)))
        return snd.read(int(length_s * rate), dtype="float32", always_2d=True), rate


def excerpt_start(duration_s: float | None, length_s: float) -> float:
    """Where excerpts start, seconds: a quarter into the track (intros skipped), within bounds."""
    if not duration_s or duration_s <= length_s:
        return 0.0
    return min(duration_s * 0.25, duration_s - length_s)


def spectrogram_db(
    samples: np.ndarray, rate: int, shape: tuple[int, int] = SPECTROGRAM_SHAPE
) -> np.ndarray:
    """Power spectrogram of the channel mean, dB, on a log-frequency grid (rows, 40 Hz..16 kHz).

    samples (n, C) float32 -> (rows, cols) float64: Hann STFT of 2048 (hop 512, or longer so that
    about two frames fall in a column), band maxima over log-spaced frequency bands, frame means
    over equal time slices.
    """
    rows, cols = shape
    frame = SPECTROGRAM_FRAME
    hop = max(512, samples.shape[0] // (2 * cols))
    mono = samples.mean(axis=1, dtype=np.float64)
    if mono.size < frame:
        mono = np.pad(mono, (0, frame - mono.size))
    frames = np.lib.stride_tricks.sliding_window_view(mono, frame)[::hop]
    window = np.hanning(frame + 1)[:-1]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (n_frames, bins)
    freqs = np.fft.rfftfreq(frame, 1.0 / rate)
    low, high = SPECTROGRAM_BAND_HZ
    edges = np.geomspace(low, min(high, rate / 2), rows + 1)
    starts = np.minimum(np.searchsorted(freqs, edges[:-1]), freqs.size - 1)
    banded = np.maximum.reduceat(power, starts, axis=1)  # empty bands take their nearest bin
    n = banded.shape[0]
    slices = np.minimum((np.arange(cols) * n) // cols, n - 1)
    widths = np.maximum(np.diff(np.append(slices, n)), 1)[:, None]
    timed = np.add.reduceat(banded, slices, axis=0) / widths
    return 10.0 * np.log10(timed.T + 1e-12)


def spectrogram_jpeg(db: np.ndarray, top_db: float) -> bytes:
    """(rows, cols) dB -> JPEG bytes (low frequencies at the bottom), colours over
    [top_db - 80, top_db].

    JPEG at quality 85 is about a quarter of the PNG's size for these noisy images (~7 KB vs
    ~27 KB).
    """
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(
        buf,
        db,
        cmap="magma",
        vmin=top_db - SPECTROGRAM_RANGE_DB,
        vmax=top_db,
        origin="lower",
        format="jpeg",
        pil_kwargs={"quality": 85},
    )
    return buf.getvalue()


def _href(path: str, out_dir: str) -> str:
    """A URL-quoted relative href from ``out_dir`` to local ``path``."""
    rel = os.path.relpath(path, out_dir)
    return "/".join(urllib.parse.quote(part) for part in rel.split(os.sep))


@dataclass(frozen=True)
class Source:
    """One file of a track card (the mixture or a stem) as the page shows it.

    ``spectrogram``: JPEG bytes or None; ``problem``: why there is none (shown instead);
    ``href``: the player's source, None when there is no player.
    """

    label: str
    uri: str
    spectrogram: bytes | None
    problem: str
    href: str | None


class MediaWriter:
    """Spectrograms and players for one report: links local files, writes excerpts for the rest.

    ``out_dir``: the report's folder; ``media_dir``: where excerpts go; ``excerpt_s``: excerpt
    length, seconds; ``link_local``: link playable local files instead of writing excerpts.
    """

    def __init__(self, out_dir: str, media_dir: str, excerpt_s: float, link_local: bool) -> None:
        self.out_dir = out_dir
        self.media_dir = media_dir
        self.excerpt_s = excerpt_s
        self.link_local = link_local

    def link(self, uri: str) -> str | None:
        """A relative href from the report's folder to a local, browser-playable file, else
        None."""
        path = local_path(uri)
        if not self.link_local or not storage.is_local(path):
            return None
        path = os.path.abspath(path)
        if os.path.splitext(path)[1].lower() not in PLAYABLE_EXTENSIONS or not os.path.isfile(path):
            return None
        try:
            return _href(path, self.out_dir)
        except ValueError:  # another drive on Windows
            return None

    def write_excerpt(self, name: str, samples: np.ndarray, rate: int) -> str:
        """Write samples (n, C) as OGG/Vorbis under the media folder; return its href."""
        import soundfile as sf

        os.makedirs(self.media_dir, exist_ok=True)
        path = os.path.join(self.media_dir, name + ".ogg")
        sf.write(path, samples, rate, format="OGG", subtype="VORBIS", compression_level=0.6)
        return _href(path, self.out_dir)

    def sources(
        self, index: int, sources: list[tuple[str, str]], start_s: float, with_media: bool
    ) -> list[Source]:
        """Card ``index``'s (label, uri) pairs with their spectrograms (one colour scale for the
        card) and players; without ``with_media`` nothing is decoded, local files are linked."""
        decoded: dict[str, tuple[np.ndarray, int] | str] = {}
        if with_media:
            for label, uri in sources:
                if not uri:
                    decoded[label] = "no file recorded"
                    continue
                try:
                    decoded[label] = read_excerpt(uri, start_s, self.excerpt_s)
                except Exception as exc:  # a missing or unreadable file is shown, not fatal
                    _LOG.warning("report: cannot read %s: %s", uri, exc)
                    decoded[label] = f"cannot read: {exc}"
        spectra = {
            label: spectrogram_db(*got)
            for label, got in decoded.items()
            if not isinstance(got, str)
        }
        top_db = max((float(s.max()) for s in spectra.values()), default=0.0)
        out = []
        for n, (label, uri) in enumerate(sources):
            got = decoded.get(label)
            href = self.link(uri) if uri else None
            if href is None and got is not None and not isinstance(got, str):
                try:
                    href = self.write_excerpt(f"{index}-{n}", *got)
                except Exception as exc:
                    _LOG.warning("report: cannot write excerpt of %s: %s", uri, exc)
            problem = got if isinstance(got, str) else ""
            if href is None and uri and not with_media:
                problem = "no player: excerpts of remote files are made for the first pages only"
            spectrogram = spectrogram_jpeg(spectra[label], top_db) if label in spectra else None
            out.append(Source(label, uri, spectrogram, problem, href))
        return out
