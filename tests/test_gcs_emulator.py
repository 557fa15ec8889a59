"""gcp-storage-emulator really serves Beam's FileSystems on gs://, in the test process and in
SDK worker processes, with no network call leaving loopback."""

from __future__ import annotations

import os
import socket

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

# Imported by the module that defines the DoFns: an SDK worker that unpickles them imports it
# too, which seeds Beam's credentials (STORAGE_EMULATOR_HOST is set) before the first GCS call.
# That also covers FnApiRunner's multi-process workers, which get no pipeline options (so no
# --beam_plugins) from the runner.
import tests.gcs_credentials  # noqa: F401
from tests import loopback_guard


def _write(uri: str, payload: bytes, piece: int) -> None:
    with FileSystems.create(uri) as handle:
        for start in range(0, len(payload), piece):
            handle.write(payload[start : start + piece])


def _read(uri: str) -> bytes:
    with FileSystems.open(uri) as handle:
        return handle.read()


def test_filesystems_write_list_read_rename_delete(gcs_emulator, loopback_only):
    root = gcs_emulator.bucket()
    # 9 MB spans several resumable-upload chunks of Beam's writer.
    payload = np.random.default_rng(1).bytes(9_000_000)
    _write(f"{root}/in/a/one.bin", payload, piece=1 << 20)
    _write(f"{root}/in/two.bin", b"two", piece=1)

    listed = FileSystems.match([f"{root}/in/**"])[0].metadata_list
    assert sorted((m.path, m.size_in_bytes) for m in listed) == [
        (f"{root}/in/a/one.bin", len(payload)),
        (f"{root}/in/two.bin", 3),
    ]
    assert [m.path for m in FileSystems.match([f"{root}/in/*.bin"])[0].metadata_list] == [
        f"{root}/in/two.bin"
    ]

    assert _read(f"{root}/in/a/one.bin") == payload
    with FileSystems.open(f"{root}/in/a/one.bin") as handle:
        handle.seek(4_000_000)
        assert handle.read(1000) == payload[4_000_000:4_001_000]

    FileSystems.rename([f"{root}/in/a/one.bin"], [f"{root}/out/one.bin"])
    assert not FileSystems.exists(f"{root}/in/a/one.bin")
    assert _read(f"{root}/out/one.bin") == payload

    FileSystems.delete([f"{root}/out/one.bin", f"{root}/in/two.bin"])
    assert FileSystems.match([f"{root}/**"])[0].metadata_list == []


class _WriteAndReport(beam.DoFn):
    """Writes one object per element from inside an SDK worker; reports how the worker is set."""

    def __init__(self, root: str):
        self._root = root

    def process(self, index: int):
        from apache_beam.internal.gcp import auth

        seeded = auth._Credentials._credentials_init  # before this process's first GCS call
        _write(f"{self._root}/worker/{index}.txt", f"element {index}".encode(), piece=4)
        yield index, os.getpid(), seeded, bool(loopback_guard._original)


def test_sdk_worker_processes_use_the_emulator(gcs_emulator, loopback_only):
    root = gcs_emulator.bucket()
    test_pid = os.getpid()
    options = PipelineOptions(
        ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=1"]
    )
    with beam.Pipeline(options=options) as pipeline:
        reports = pipeline | beam.Create(range(3)) | beam.ParDo(_WriteAndReport(root))
        # Every element ran in another process, with Beam's credentials pre-seeded and the
        # loopback guard installed there.
        assert_that(
            reports | beam.Map(lambda r: (r[0], r[1] != test_pid, r[2], r[3])),
            equal_to([(i, True, True, True) for i in range(3)]),
        )
    for index in range(3):
        assert _read(f"{root}/worker/{index}.txt") == f"element {index}".encode()


def test_loopback_guard_refuses_and_records(tmp_path, monkeypatch):
    """The guard the tests above rely on does catch a metadata-server probe."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv(loopback_guard.LOG_ENV, str(log))
    loopback_guard.install()
    try:
        with pytest.raises(OSError):
            socket.getaddrinfo("169.254.169.254", 80)
        with pytest.raises(OSError), socket.socket() as sock:
            sock.connect(("10.1.2.3", 80))
        assert socket.getaddrinfo("127.0.0.1", 80)
    finally:
        loopback_guard.uninstall()
    calls = loopback_guard.violations(str(log))
    assert len(calls) == 2 and "169.254.169.254" in calls[0] and "10.1.2.3" in calls[1]
