"""File access through Beam's FileSystems, so local paths, gs:// and s3:// behave the same.

Beam is imported on the first call that needs it: naming, reading and testing local paths use
``os`` directly, so a command that only reads local files (``stembeam report``) never loads Beam.

Every byte stembeam reads or writes goes through these helpers. Writes that other readers may
see are atomic: the data goes to a hidden temporary name next to the target and is renamed
into place (on object stores an object only becomes visible once complete, so the rename is the
visibility step there too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from apache_beam.io.filesystems import FileSystems


def _filesystems() -> type[FileSystems]:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _uncompressed():
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


def join(base: str, *parts: str) -> str:
    """``base/part1/part2`` for any scheme."""
    if is_local(base):
        return os.path.join(base, *parts)
    return _filesystems().join(base, *parts)


def parent(path: str) -> str:
    """The folder holding ``path``."""
    return _split(path)[0]


def basename(path: str) -> str:
    return _split(path)[1]


def _split(path: str) -> tuple[str, str]:
    """(folder, name); local folders absolute, as Beam's local filesystem splits them."""
    if is_local(path):
        return os.path.split(os.path.abspath(path))
    return _filesystems().split(path)


def is_local(path: str) -> bool:
    """True for plain filesystem paths (no ``scheme://``)."""
    return "://" not in path


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else _filesystems().exists(path)


def open_read(path: str) -> BinaryIO:
    """A seekable binary reader; no decompression is guessed from the extension."""
    if is_local(path):
        return open(path, "rb")
    return _filesystems().open(path, compression_type=_uncompressed())


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def temp_name(path: str, temp_dir: str | None = None) -> str:
    """A hidden, unique name for an atomic write of ``path``: in ``temp_dir`` (on the same
    filesystem or store) when given, else next to ``path``."""
    return join(temp_dir or parent(path), f".{basename(path)}.partial-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_writer(
    path: str, mime_type: str = "application/octet-stream", temp_dir: str | None = None
) -> Iterator[BinaryIO]:
    """Context manager yielding a binary writer; ``path`` appears only if the block succeeds.

    ``mime_type``: the object's content type on object stores; ``temp_dir``: where the
    temporary file goes (see ``temp_name``). On error the temporary file is deleted and the
    exception propagates.
    """
    tmp = temp_name(path, temp_dir)
    if is_local(tmp):
        makedirs(parent(tmp))
    f = _filesystems().create(tmp, mime_type=mime_type, compression_type=_uncompressed())
    try:
        yield f
        f.close()
    except BaseException:
        f.close()
        delete([tmp])
        raise
    replace(tmp, path)


def write_atomic(
    path: str,
    data: bytes,
    mime_type: str = "application/octet-stream",
    temp_dir: str | None = None,
) -> None:
    """Write ``data`` to ``path`` atomically (``mime_type``, ``temp_dir``: see atomic_writer)."""
    with atomic_writer(path, mime_type, temp_dir) as f:
        f.write(data)


@contextlib.contextmanager
def local_staging(path: str) -> Iterator[str]:
    """A local file path to write (e.g. with a library that needs a seekable file); on success
    its content appears at ``path`` atomically, on error nothing appears.

    Local targets stage in a hidden sibling and are renamed; remote ones stage in the temp
    folder and are uploaded.
    """
    if is_local(path):
        makedirs(parent(path))
        tmp = temp_name(path)
    else:
        fd, tmp = tempfile.mkstemp(prefix="stembeam-", suffix=os.path.splitext(path)[1])
        os.close(fd)
    try:
        yield tmp
        if is_local(path):
            os.replace(tmp, path)
        else:
            with open(tmp, "rb") as src, atomic_writer(path) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def makedirs(folder: str, attempts: int = 5) -> None:
    """``os.makedirs(folder, exist_ok=True)`` for a local folder that another process may be
    removing while it is empty (a run cleaning the temporary folders): tried again when a parent
    vanishes midway."""
    for attempt in range(attempts):
        try:
            os.makedirs(folder or ".", exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


def replace(source: str, destination: str) -> None:
    """Rename ``source`` to ``destination``, replacing an existing destination."""
    if is_local(source) and is_local(destination):
        makedirs(os.path.dirname(destination))
        os.replace(source, destination)  # atomic even when the destination exists
        return
    if exists(destination):
        delete([destination])
    _filesystems().rename([source], [destination])


def delete(paths: list[str]) -> None:
    """Delete files, ignoring ones that are already gone."""
    existing = [p for p in paths if exists(p)]
    if existing:
        _filesystems().delete(existing)


def stat(path: str) -> tuple[int, float]:
    """``(size in bytes, modification time in UNIX seconds)`` of a file."""
    if is_local(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime
    metadata = _filesystems().match([path])[0].metadata_list
    if not metadata:
        raise FileNotFoundError(path)
    return metadata[0].size_in_bytes, float(metadata[0].last_updated_in_seconds or 0.0)


def absolute(path: str) -> str:
    """Local paths made absolute (so URIs in the results table work from any folder)."""
    return os.path.abspath(path) if is_local(path) else path.rstrip("/")


def relative_parts(root: str, path: str) -> list[str]:
    """The parts of ``path`` below ``root`` (``root/a/b`` -> ``['a', 'b']``)."""
    rest = path[len(root.rstrip("/")) :].lstrip("/")
    return rest.split("/") if rest else []


def glob(pattern: str) -> list[str]:
    """Paths matching ``pattern`` (``*``, ``**``, ``?``), sorted; empty list when none match."""
    result = _filesystems().match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def remove_empty_folder(path: str) -> None:
    """Remove a local folder if it is empty (object stores have no folders to remove)."""
    if is_local(path):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def delete_matching(pattern: str) -> None:
    """Delete every file matching ``pattern``."""
    delete(glob(pattern))


def remove_empty_folders(root: str) -> None:
    """Remove the empty folders below local ``root`` (deepest first), and ``root`` if empty."""
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        remove_empty_folder(folder)
