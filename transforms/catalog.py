"""ListCatalog and SkipDone: what to separate.

A catalog source is one of
- a glob (``gs://bucket/masters/**.flac``, ``/data/*.wav``): track id = path below the glob's
  fixed prefix, without extension;
- a manifest (``.csv`` or ``.jsonl``) with ``track_id`` (optional: derived from ``uri``), ``uri``
  (relative URIs are relative to the manifest) and optional reference columns named after stems;
- a folder: MUSDB18-HQ style when it holds ``*/mixture.wav`` (one folder per track, each other
  ``.wav`` in it a reference stem named after its file), else every audio file below it.

Track ids are made safe: they can never escape the output folder or name hidden files.
"""
from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
import unicodedata
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam

from transforms import storage
from transforms.records import Track, result_row

AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".aif", ".aiff", ".aifc", ".mp3", ".ogg", ".oga", ".opus",
    ".m4a", ".mp4", ".aac", ".alac", ".caf", ".w64", ".rf64", ".wma", ".webm", ".mka",
})
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
MIXTURE = "mixture.wav"
_WILDCARDS = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^\w\-+=,.()&' ]", re.UNICODE)
SKIPPED_TAG = "skipped"


def safe_track_id(raw: str) -> str:
    """A relative ``a/b/c`` id that stays inside the output folder.

    Separators are normalised to ``/``; empty and ``.`` parts are dropped, leading dots (so
    ``..``) become ``_``; characters other than letters, digits and ``-_+=,.()&' `` become ``_``
    (so ``~``, used to tell repeated ids apart, never occurs in a sanitised id).
    Raises ValueError for an id with nothing left.
    """
    text = unicodedata.normalize("NFC", raw).replace("\\", "/")
    parts = []
    for part in text.split("/"):
        part = _UNSAFE.sub("_", part).strip()
        if not part or part == ".":
            continue
        dots = len(part) - len(part.lstrip("."))
        part = "_" * dots + part[dots:]
        parts.append(part)
    if not parts:
        raise ValueError(f"track id {raw!r} has no usable characters")
    return "/".join(parts)


def _strip_extension(path: str) -> str:
    root, ext = posixpath.splitext(path)
    return root if ext else path


def _unique(tracks: Iterable[Track]) -> Iterator[Track]:
    """Suffix ``~2``, ``~3``... to repeated ids so each track has its own output folder."""
    seen: set[str] = set()
    for track in tracks:
        track_id, n = track.track_id, 1
        while track_id in seen:
            n += 1
            track_id = f"{track.track_id}~{n}"
        seen.add(track_id)
        yield Track(track_id, track.uri, track.references)


def _fixed_prefix(pattern: str) -> str:
    """The folder part of a glob before its first wildcard, with a trailing ``/``."""
    match = _WILDCARDS.search(pattern)
    head = pattern[: match.start()] if match else pattern
    return head[: head.rfind("/") + 1]


def list_glob(pattern: str) -> list[Track]:
    prefix = _fixed_prefix(pattern)
    return [Track(safe_track_id(_strip_extension(path[len(prefix):])), path)
            for path in storage.glob(pattern)]


def _manifest_rows(path: str) -> list[dict[str, Any]]:
    text = storage.read_text(path)
    if path.lower().endswith(".csv"):
        return list(csv.DictReader(io.StringIO(text)))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not JSON: {e}") from e
    return rows


def _resolve(base: str, uri: str) -> str:
    if not uri or "://" in uri or uri.startswith("/"):
        return uri
    return storage.join(base, uri)


def list_manifest(path: str) -> list[Track]:
    base = storage.parent(path)
    tracks = []
    for n, row in enumerate(_manifest_rows(path), 1):
        uri = _resolve(base, str(row.get("uri") or "").strip())
        raw_id = str(row.get("track_id") or "").strip() or _strip_extension(
            storage.basename(uri) if uri else f"row-{n}")
        references = tuple(sorted(
            (str(k), _resolve(base, str(v).strip())) for k, v in row.items()
            if k not in ("track_id", "uri") and k and v and str(v).strip()))
        tracks.append(Track(safe_track_id(raw_id), uri, references))
    return tracks


def list_folder(folder: str) -> list[Track]:
    folder = folder.rstrip("/")
    mixtures = storage.glob(storage.join(folder, "**", MIXTURE))
    if not mixtures:
        return [t for t in list_glob(storage.join(folder, "**"))
                if posixpath.splitext(t.uri)[1].lower() in AUDIO_EXTENSIONS]
    tracks = []
    for mixture in mixtures:
        track_dir = storage.parent(mixture)
        references = tuple(
            (_strip_extension(storage.basename(p)), p)
            for p in storage.glob(storage.join(track_dir, "*.wav"))
            if storage.basename(p) != MIXTURE)
        track_id = safe_track_id(track_dir[len(folder) + 1:])
        tracks.append(Track(track_id, mixture, references))
    return tracks


def list_catalog(source: str | Sequence[str]) -> list[Track]:
    """All tracks of a catalog source (glob, manifest, folder or file), or of the union of several
    sources; ids safe and unique across them."""
    if not isinstance(source, str):
        return list(_unique(t for one in source for t in list_catalog(one)))
    if source.lower().endswith(MANIFEST_EXTENSIONS) and not _WILDCARDS.search(source):
        tracks = list_manifest(source)
    elif _WILDCARDS.search(source):
        tracks = list_glob(source)
    elif _is_folder(source):
        tracks = list_folder(source)
    else:
        tracks = list_glob(source)  # a single file
    return list(_unique(tracks))


def _is_folder(path: str) -> bool:
    if storage.is_local(path):
        return os.path.isdir(path)
    return bool(storage.glob(storage.join(path.rstrip("/"), "*")))  # object stores: a prefix


def check_source(source: str | Sequence[str]) -> None:
    """Raises ValueError when a manifest, folder or file ``source`` (or one of several) does not
    exist (a glob that matches nothing is an empty catalog, not an error)."""
    if not isinstance(source, str):
        for one in source:
            check_source(one)
        return
    if not _WILDCARDS.search(source) and not (storage.exists(source) or _is_folder(source)):
        raise ValueError(f"the catalog {source!r} does not exist")


class ListCatalog(beam.PTransform):
    """``PBegin`` -> ``Track`` for every entry of ``source`` (one source or a list: their union);
    listing happens on a worker."""

    def __init__(self, source: str | Sequence[str]):
        super().__init__()
        self._source = source if isinstance(source, str) else tuple(source)

    def expand(self, pbegin):
        return (pbegin
                | "Source" >> beam.Create([self._source])
                | "List" >> beam.FlatMap(list_catalog))


def done_marker(output: str, track_id: str, model_key: str) -> str:
    """The file whose presence says ``track_id`` was separated by model ``model_key``."""
    return storage.join(output, track_id, f".done-{model_key}.json")


class _SkipDoneFn(beam.DoFn):
    def __init__(self, output: str, model_key: str, run_id: str, model: str, model_sha256: str):
        self._output, self._model_key = output, model_key
        self._run_id, self._model, self._sha = run_id, model, model_sha256

    def process(self, track):
        marker = done_marker(self._output, track.track_id, self._model_key)
        if not storage.exists(marker):
            yield track
            return
        try:
            done = json.loads(storage.read_text(marker))
        except (OSError, ValueError):
            done = {}
        beam.metrics.Metrics.counter("stembeam", "tracks_skipped").inc()
        yield beam.pvalue.TaggedOutput(SKIPPED_TAG, result_row(
            track, self._run_id, self._model, self._sha, "skipped",
            error=f"already separated (done-marker {marker}); use --force to redo",
            stems=done.get("stems"), duration_s=done.get("duration_s"),
            sample_rate=done.get("sample_rate"), channels=done.get("channels"),
            codec=done.get("codec")))


class SkipDone(beam.PTransform):
    """``Track`` -> main output: tracks to separate; ``skipped``: result rows of tracks whose
    done-marker exists. With ``force`` every track goes to the main output."""

    def __init__(self, output: str, model_key: str, run_id: str, model: str, model_sha256: str,
                 force: bool = False):
        super().__init__()
        self._args = (output, model_key, run_id, model, model_sha256)
        self._force = force

    def expand(self, tracks):
        if self._force:
            return {"todo": tracks,
                    SKIPPED_TAG: tracks.pipeline | "NoneSkipped" >> beam.Create([])}
        outputs = tracks | beam.ParDo(_SkipDoneFn(*self._args)).with_outputs(
            SKIPPED_TAG, main="todo")
        return {"todo": outputs.todo, SKIPPED_TAG: outputs[SKIPPED_TAG]}
