"""What a run keeps in its output folder besides the stems: done-markers, run locks, temp files.

Everything lives under ``OUT/.stembeam/`` (track ids never start with a dot, so no track can
collide with it):

- ``done/<track_id>.json``: the done-marker, written only after the track's stems are published
  and its results row is committed. It vouches for a *signature* (the model's weights and
  config and every option that changes the stem files) and for the source file's fingerprint
  (URI, size and modification time): a rerun skips the track only when both still match.
- ``runs/<run_id>.json``: the lock of a live run (identity, host, pid, heartbeat). Two runs with
  different signatures never work on one OUT at once: the second refuses to start.
- ``tmp/<run_id>/``: the run's staging files (stems being written). Only tracks in flight have
  files there; the next run deletes the folders of runs that are no longer alive.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from stembeam.transforms import storage

INTERNAL_DIR = ".stembeam"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# Row columns a done-marker keeps, so a skipped row can repeat what the separating run learnt.
MARKER_ROW_FIELDS = (
    "duration_s",
    "sample_rate",
    "channels",
    "codec",
)  # a lock whose heartbeat is older than this belongs to a dead run
log = logging.getLogger("stembeam")


def internal_path(output: str, *parts: str) -> str:
    return storage.join(output, INTERNAL_DIR, *parts)


def done_marker(output: str, track_id: str) -> str:
    """The done-marker of ``track_id`` (JSON, see ``DoneMarker``)."""
    return internal_path(output, "done", f"{track_id}.json")


def run_temp_dir(output: str, run_id: str) -> str:
    """Where run ``run_id`` stages the files it has not published yet."""
    return internal_path(output, "tmp", run_id)


def signature(settings: dict[str, Any]) -> str:
    """A short stable hash of everything that determines a track's stem files (``model``, the
    spec as typed, is left out: the weights' ``model_sha256`` and config stand for it)."""
    hashed = {k: v for k, v in settings.items() if k != "model"}
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``'model spleeter:2stems -> spleeter:4stems, format wav -> flac'``: what differs."""
    changes = [
        f"{key} {old.get(key)} -> {new.get(key)}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and key != "model_sha256"
    ]
    if old.get("model_sha256") != new.get("model_sha256") and not any(
        c.startswith("model ") for c in changes
    ):
        changes.insert(0, "the model's weights")
    return ", ".join(changes) or "unknown settings"


@dataclasses.dataclass(frozen=True)
class DoneMarker:
    """What a done-marker records.

    Attributes:
      signature: ``signature(settings)`` of the run that wrote the stems.
      settings: those settings (model, weights sha256, format...), to say what changed.
      fingerprint: the source file's ``<uri>|<size>:<mtime>`` when it was separated.
      stems: stem -> URI.
      run_id: the run that wrote them.
    """

    signature: str
    settings: dict[str, Any]
    fingerprint: str
    stems: dict[str, str]
    run_id: str
    row: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, default=str).encode()

    @classmethod
    def read(cls, uri: str) -> DoneMarker | None:
        """The marker at ``uri``; None when there is none or it cannot be parsed."""
        if not storage.exists(uri):
            return None
        try:
            data = json.loads(storage.read_text(uri))
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        except Exception:  # unreadable or from another version: separate the track again
            return None


def fingerprint(uri: str) -> str:
    """``<uri>|<size>:<mtime>`` of a source file, ``''`` when it cannot be read."""
    try:
        size, mtime = storage.stat(uri)
    except Exception:  # a missing source fails later, in decoding, with a clear reason
        return ""
    return f"{uri}|{size}:{mtime:.3f}"


@dataclasses.dataclass(frozen=True)
class MarkDone:
    """Writes the done-markers of committed ``(Track, row)`` pairs whose status is ``ok``."""

    output: str
    signature: str
    settings: dict[str, Any]

    def __call__(self, pairs) -> None:
        for track, row in pairs:
            if row["status"] != "ok":
                continue
            marker = DoneMarker(
                self.signature,
                self.settings,
                track.fingerprint,
                json.loads(row["stems"]),
                row["run_id"],
                {k: row.get(k) for k in (*MARKER_ROW_FIELDS, "finished_at")},
            )
            storage.write_atomic(
                done_marker(self.output, track.track_id),
                marker.to_json(),
                temp_dir=run_temp_dir(self.output, row["run_id"]),
            )


class RunConflict(Exception):
    """Another live run works on the same output with other settings."""


@dataclasses.dataclass
class RunLock:
    """The lock file of one live run on an output folder.

    ``acquire`` writes it and then lists the other locks: if any other live run has a different
    signature, the lock is removed again and RunConflict raised. Two runs starting at the same
    moment may both see each other and both refuse; they can never both proceed. A thread
    refreshes the heartbeat until ``release``.
    """

    output: str
    run_id: str
    signature: str
    settings: dict[str, Any]
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return internal_path(self.output, "runs", f"{self.run_id}.json")

    def _write(self) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        body = {
            "run_id": self.run_id,
            "signature": self.signature,
            "settings": self.settings,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat_at": now,
            "heartbeat": time.time(),
        }
        storage.write_atomic(
            self.uri,
            json.dumps(body, indent=1).encode(),
            temp_dir=run_temp_dir(self.output, self.run_id),
        )

    def acquire(self) -> RunLock:
        self._write()
        others = [lock for lock in live_locks(self.output) if lock["run_id"] != self.run_id]
        conflicts = [lock for lock in others if lock.get("signature") != self.signature]
        if conflicts:
            storage.delete([self.uri])
            other = conflicts[0]
            age = time.time() - float(other.get("heartbeat", 0))
            raise RunConflict(
                f"another run ({other['run_id']} on {other.get('host')}, pid {other.get('pid')}, "
                f"alive {age:.0f} s ago) is writing to {self.output} with other settings "
                f"({describe_change(other.get('settings', {}), self.settings)}); wait for it to "
                "finish or choose another --output"
            )
        self._thread = threading.Thread(target=self._beat, name="stembeam-run-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception as e:  # a missed heartbeat only makes the lock look older
                log.warning("could not refresh the run lock %s: %s", self.uri, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        storage.delete([self.uri])


def _alive(lock: dict[str, Any]) -> bool:
    """Whether the run that wrote ``lock`` still runs: its process on this host, or a fresh
    heartbeat elsewhere."""
    if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
        try:
            os.kill(lock["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return time.time() - float(lock.get("heartbeat", 0)) < STALE_AFTER_S


def _locks(output: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for uri in storage.glob(internal_path(output, "runs", "*.json")):
        try:
            found.append((uri, json.loads(storage.read_text(uri))))
        except (OSError, ValueError):
            continue  # being written or removed right now
    return found


def live_locks(output: str) -> list[dict[str, Any]]:
    """Locks of the runs alive on ``output`` (dead runs' locks stay until ``clean_dead_runs``
    has deleted their staging folders)."""
    return [lock for _, lock in _locks(output) if _alive(lock)]


def _age_s(uri: str, now: float) -> float:
    """Seconds since ``uri`` (a file, or a local folder) last changed; 0 if it vanished."""
    try:
        return now - storage.stat(uri)[1]
    except OSError:
        return 0.0


def clean_dead_runs(output: str, run_id: str) -> int:
    """Delete the staging folders of runs that are not alive (and this run's own leftovers
    from an earlier attempt with the same id); returns how many files were deleted.

    A folder whose run has no lock file at all belongs to a run that died before locking or to
    one starting right now (it stages its first lock there): it is deleted only once it and all
    its files are older than ``STALE_AFTER_S``.
    """
    locks = _locks(output)
    locked = {lock["run_id"] for _, lock in locks}
    alive = {lock["run_id"] for _, lock in locks if _alive(lock)} - {run_id}
    root = internal_path(output, "tmp")
    files: dict[str, list[str]] = {}
    for uri in storage.glob(storage.join(root, "**")):
        files.setdefault(storage.relative_parts(root, uri)[0], []).append(uri)
    owners = set(files)
    if storage.is_local(root) and os.path.isdir(root):
        owners.update(os.listdir(root))
    now = time.time()

    def untouched(owner: str) -> bool:  # its files (and local folder) older than STALE_AFTER_S
        uris = files.get(owner, [])
        if storage.is_local(root):
            uris = [*uris, storage.join(root, owner)]
        return all(_age_s(uri, now) > STALE_AFTER_S for uri in uris)

    stale = [
        owner
        for owner in owners
        if owner not in alive and (owner in locked or owner == run_id or untouched(owner))
    ]
    doomed = [uri for owner in stale for uri in files.get(owner, [])]
    storage.delete(doomed)
    if storage.is_local(root):
        for owner in stale:
            storage.remove_empty_folders(storage.join(root, owner))
        storage.remove_empty_folder(root)
    storage.delete([uri for uri, lock in locks if not _alive(lock)])  # dead runs' locks, last
    return len(doomed)


def remove_run_temp_dir(output: str, run_id: str) -> None:
    """Delete what is left of run ``run_id``'s staging folder (only empty folders normally)."""
    folder = run_temp_dir(output, run_id)
    storage.delete(storage.glob(storage.join(folder, "**")))
    if storage.is_local(folder):
        storage.remove_empty_folders(folder)
        storage.remove_empty_folder(internal_path(output, "tmp"))
