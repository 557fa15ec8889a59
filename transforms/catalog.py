"""ListCatalog: what to separate.

A catalog source is one of
- a glob (``gs://bucket/masters/**.flac``, ``/data/*.wav``): track id = path below the glob's
  fixed prefix, without extension;
- a manifest (``.csv`` or ``.jsonl``) with ``track_id`` (optional: derived from ``uri``), ``uri``
  (relative URIs are relative to the manifest) and optional reference columns named after stems;
- a folder: MUSDB18-HQ style when it holds ``*/mixture.wav`` (one folder per track, each other
  ``.wav`` in it a reference stem named after its file), else every audio file below it.

Track ids are made safe: they can never escape the output folder or name hidden files, never
name a file of the output root (results, report), never name a folder above another track's
stems, fit every results table's key, and do not depend on the order the catalog is listed in.
Manifests are UTF-8 (a byte-order mark is dropped) with any line endings; a manifest without a
``uri`` column, with a broken line, or with no rows is a ValueError naming the file and line.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import os
import posixpath
import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from stembeam.transforms import storage
from stembeam.transforms.records import Track

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".aif",
        ".aiff",
        ".aifc",
        ".mp3",
        ".ogg",
        ".oga",
        ".opus",
        ".m4a",
        ".mp4",
        ".aac",
        ".alac",
        ".caf",
        ".w64",
        ".rf64",
        ".wma",
        ".webm",
        ".mka",
    }
)
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
MIXTURE = "mixture.wav"
_WILDCARDS = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^\w\-+=,.()&' ]", re.UNICODE)
# Longest track id: fits a VARCHAR key of every results database (transforms.results).
MAX_TRACK_ID_CHARS = 200
_ID_HEADROOM = 16  # room below the cap for the suffixes that tell ids apart (_, ~N)
_MAX_PART_BYTES = 200  # a folder name, with room for a temporary sibling's, under 255 bytes
# Names in the output root that are not track folders (fnmatch patterns, compared lower-case).
RESERVED_NAMES = (
    "results.sqlite",
    "results.sqlite-journal",
    "results.sqlite-wal",
    "results.sqlite-shm",
    "report.html",
    "report-p*.html",
    "report_media",
    "reports",
    ".stembeam",
)


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


def _cut(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, on a character boundary."""
    return text.encode()[:max_bytes].decode("utf-8", "ignore")


def _capped(track_id: str) -> str:
    """``track_id`` within MAX_TRACK_ID_CHARS less headroom and _MAX_PART_BYTES a part; a
    shortened id ends in ``~`` and 8 hex digits of the full id's sha256, so it stays unique."""
    limit = MAX_TRACK_ID_CHARS - _ID_HEADROOM
    parts = track_id.split("/")
    if len(track_id) <= limit and all(len(p.encode()) <= _MAX_PART_BYTES for p in parts):
        return track_id
    digest = "~" + hashlib.sha256(track_id.encode()).hexdigest()[:8]
    parts = [_cut(p, _MAX_PART_BYTES) for p in parts]
    parts[-1] = _cut(parts[-1], _MAX_PART_BYTES - len(digest))
    return "/".join(parts)[: limit - len(digest)].rstrip("/") + digest


def _is_reserved(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name.lower(), pattern) for pattern in RESERVED_NAMES)


def _unreserved(track_id: str) -> str:
    """``track_id`` with ``_`` appended to its first part while that names a reserved file."""
    top, sep, rest = track_id.partition("/")
    while _is_reserved(top):
        top += "_"
    return top + sep + rest


def _outside(track_id: str, taken: set[str]) -> str:
    """``track_id`` with ``_`` appended to a part while the path up to it is a taken id, so no
    taken id is a folder above it."""
    parts = track_id.split("/")
    for k in range(1, len(parts)):
        while "/".join(parts[:k]) in taken:
            parts[k - 1] += "_"
    return "/".join(parts)


def assign_ids(tracks: list[Track]) -> list[Track]:
    """``tracks`` (in the same order) with final ids: capped, never a reserved name of the
    output root, never a path prefix of another id, unique (``~2``, ``~3``... in uri order).

    Ids are settled shallow ids first, then by uri, so they depend only on the set of tracks,
    never on the order they were listed in.
    """
    base = [_unreserved(_capped(t.track_id)) for t in tracks]
    order = sorted(
        range(len(tracks)),
        key=lambda i: (base[i].count("/"), tracks[i].uri, base[i], tracks[i].references),
    )
    final, taken = {}, set()
    for i in order:
        track_id = _outside(base[i], taken)
        candidate, n = track_id, 1
        while candidate in taken:
            n += 1
            candidate = f"{track_id}~{n}"
        taken.add(candidate)
        final[i] = candidate
    return [Track(final[i], t.uri, t.references) for i, t in enumerate(tracks)]


def _fixed_prefix(pattern: str) -> str:
    """The folder part of a glob before its first wildcard, with a trailing ``/``."""
    match = _WILDCARDS.search(pattern)
    head = pattern[: match.start()] if match else pattern
    return head[: head.rfind("/") + 1]


def list_glob(pattern: str) -> list[Track]:
    prefix = _fixed_prefix(pattern)
    return [
        Track(safe_track_id(_strip_extension(path[len(prefix) :])), path)
        for path in storage.glob(pattern)
    ]


def _manifest_text(path: str) -> str:
    data = storage.read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path} line {line}: not UTF-8 (byte {e.start}); save the manifest as UTF-8"
        ) from None


def _csv_rows(path: str, text: str) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = None
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank line
            if header is None:
                header = [f.strip() for f in fields]
                if "uri" not in header:
                    raise ValueError(
                        f"{path} line {reader.line_num}: no 'uri' column "
                        f"(columns: {', '.join(header)})"
                    )
                continue
            if len(fields) > len(header):
                raise ValueError(
                    f"{path} line {reader.line_num}: {len(fields)} fields, the "
                    f"header has {len(header)}"
                )
            yield reader.line_num, dict(zip(header, fields))
    except csv.Error as e:
        raise ValueError(f"{path} line {reader.line_num}: not CSV: {e}") from None


def _jsonl_rows(path: str, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {n}: not JSON: {e}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n}: not a JSON object")
        if "uri" not in row:
            raise ValueError(f"{path} line {n}: no 'uri'")
        yield n, row


def _manifest_rows(path: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line, row)`` for every row of a manifest; ValueError (file, line, problem) when it
    cannot be read, lacks ``uri`` or has no rows."""
    text = _manifest_text(path)
    parse = _csv_rows if path.lower().endswith(".csv") else _jsonl_rows
    rows = list(parse(path, text))
    if not rows:
        raise ValueError(f"{path}: the manifest is empty (no track rows)")
    return rows


def _resolve(base: str, uri: str) -> str:
    if not uri or "://" in uri or uri.startswith("/"):
        return uri
    return storage.join(base, uri)


def list_manifest(path: str) -> list[Track]:
    base = storage.parent(path)
    tracks = []
    for n, row in _manifest_rows(path):
        uri = _resolve(base, str(row.get("uri") or "").strip())
        raw_id = str(row.get("track_id") or "").strip() or _strip_extension(
            storage.basename(uri) if uri else f"line-{n}"
        )
        references = tuple(
            sorted(
                (str(k), _resolve(base, str(v).strip()))
                for k, v in row.items()
                if k not in ("track_id", "uri") and k and v and str(v).strip()
            )
        )
        tracks.append(Track(safe_track_id(raw_id), uri, references))
    return tracks


def list_folder(folder: str) -> list[Track]:
    folder = folder.rstrip("/")
    mixtures = storage.glob(storage.join(folder, "**", MIXTURE))
    if not mixtures:
        return [
            t
            for t in list_glob(storage.join(folder, "**"))
            if posixpath.splitext(t.uri)[1].lower() in AUDIO_EXTENSIONS
        ]
    tracks = []
    for mixture in mixtures:
        track_dir = storage.parent(mixture)
        references = tuple(
            (_strip_extension(storage.basename(p)), p)
            for p in storage.glob(storage.join(track_dir, "*.wav"))
            if storage.basename(p) != MIXTURE
        )
        track_id = safe_track_id(track_dir[len(folder) + 1 :])
        tracks.append(Track(track_id, mixture, references))
    return tracks


def list_catalog(source: str | Sequence[str]) -> list[Track]:
    """All tracks of a catalog source (glob, manifest, folder or file), or of the union of several
    sources; ids final across them (``assign_ids``)."""
    sources = [source] if isinstance(source, str) else list(source)
    return assign_ids([track for one in sources for track in _list_source(one)])


def _list_source(source: str) -> list[Track]:
    if source.lower().endswith(MANIFEST_EXTENSIONS) and not _WILDCARDS.search(source):
        return list_manifest(source)
    if _WILDCARDS.search(source):
        return list_glob(source)
    if _is_folder(source):
        return list_folder(source)
    return list_glob(source)  # a single file


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
        return (
            pbegin | "Source" >> beam.Create([self._source]) | "List" >> beam.FlatMap(list_catalog)
        )
