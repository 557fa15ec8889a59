"""Pytest fixtures for real local services: a GCS emulator and a PostgreSQL server.

Registered as a plugin (``pytest_plugins = ["tests.services"]`` in tests/conftest.py).

- ``gcs_emulator`` (session): gcp-storage-emulator on a free 127.0.0.1 port, in memory, in a
  subprocess. Sets ``STORAGE_EMULATOR_HOST`` (and a PYTHONPATH that finds the repo and the test
  modules) for this process and every child, and pre-seeds Beam's credentials here
  (tests.gcs_credentials); SDK worker processes seed theirs when they import that module.
- ``s3_emulator`` (session): moto's S3 server on a free 127.0.0.1 port, in a thread. Sets
  ``AWS_ENDPOINT_URL`` and dummy credentials in the environment, which boto3 (and so Beam's S3
  filesystem) honours in this process and every child, with no pipeline flag.
- ``loopback_only`` (function): refuses and records every non-loopback call in this process and
  in every child process that imports tests.loopback_guard; fails the test if any was attempted.
- ``postgres_url`` (session): ``STEMBEAM_TEST_POSTGRES_URL`` when set; else the server at
  ``.ci/start-postgres.sh``'s default address, which the fixture starts with that script (a private
  cluster on 127.0.0.1) when nothing answers there. Skips only when PostgreSQL is not installed and
  cannot be started; ``bash deploy/install.sh --test`` installs it.
- ``postgres_db`` (function): a fresh, empty database on that server, dropped afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import gcs_credentials, loopback_guard

POSTGRES_ENV = "STEMBEAM_TEST_POSTGRES_URL"
# What .ci/start-postgres.sh creates when left to its defaults.
DEFAULT_POSTGRES_URL = "postgresql://stembeam:stembeam@127.0.0.1:5432/stembeam_test"
EMULATOR_PROJECT = "stembeam-test"
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator did not listen on 127.0.0.1:{port} in {timeout_s} s")


@dataclasses.dataclass(frozen=True)
class GcsEmulator:
    """A running gcp-storage-emulator; ``endpoint`` is the STORAGE_EMULATOR_HOST value."""

    endpoint: str

    def client(self):
        """An anonymous google-cloud-storage client bound to the emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=EMULATOR_PROJECT, credentials=AnonymousCredentials())

    def bucket(self, prefix: str = "b") -> str:
        """Create a new uniquely named bucket; returns its root, ``gs://NAME``."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(name)
        return f"gs://{name}"


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "from gcp_storage_emulator.__main__ import main; main()",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
        "--quiet",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, process, timeout_s=30)
    except RuntimeError as error:
        process.kill()
        stderr = process.communicate()[1].decode(errors="replace")[-2000:]
        raise RuntimeError(f"{error}\n{stderr}") from None
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(gcs_credentials.EMULATOR_ENV, endpoint)
        # SDK worker processes started from here import the repo's packages, and test modules
        # by the top-level names pytest gives them (DoFns defined in tests pickle by reference).
        patch.setenv(
            "PYTHONPATH",
            os.pathsep.join(
                p
                for p in (str(REPO_ROOT), str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH"))
                if p
            ),
        )
        gcs_credentials.use_anonymous_gcs_credentials()
        yield GcsEmulator(endpoint=endpoint)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclasses.dataclass(frozen=True)
class S3Emulator:
    """A running moto S3 server; ``endpoint`` is the AWS_ENDPOINT_URL value."""

    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def bucket(self, prefix: str = "b") -> str:
        """Create a new uniquely named bucket; returns its root, ``s3://NAME``."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_emulator() -> Iterator[S3Emulator]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            patch.setenv(name, value)
        yield S3Emulator(endpoint=endpoint)
    server.stop()


@pytest.fixture
def loopback_only(tmp_path: Path) -> Iterator[None]:
    log = tmp_path / "non-loopback-calls.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(loopback_guard.LOG_ENV, str(log))
        loopback_guard.install()
        try:
            yield
        finally:
            loopback_guard.uninstall()
    calls = loopback_guard.violations(str(log))
    assert not calls, "network calls left loopback:\n" + "\n".join(calls)


def _postgres_answers(url: str) -> str | None:
    """None when a server at ``url`` accepts a connection, else the driver's error."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
        return None
    except sqlalchemy.exc.OperationalError as error:
        return str(error.orig).strip()
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        error = _postgres_answers(url)
        if error:
            raise RuntimeError(f"{POSTGRES_ENV}={url} does not answer: {error}")
        return url
    if _postgres_answers(DEFAULT_POSTGRES_URL) is None:
        return DEFAULT_POSTGRES_URL
    started = subprocess.run(
        ["bash", str(REPO_ROOT / ".ci" / "start-postgres.sh")], capture_output=True, text=True
    )
    exported = started.stdout.strip().removeprefix(f"export {POSTGRES_ENV}=").strip("'\"")
    if started.returncode or not exported.startswith("postgresql"):
        pytest.skip(
            f"no PostgreSQL: {POSTGRES_ENV} is unset and .ci/start-postgres.sh failed:\n"
            f"{started.stderr[-2000:]}"
        )
    error = _postgres_answers(exported)
    if error:
        raise RuntimeError(
            f".ci/start-postgres.sh started {exported}, which does not answer: {error}"
        )
    return exported


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    import sqlalchemy

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'create database "{name}"'))
        yield (
            sqlalchemy.engine.make_url(postgres_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'drop database if exists "{name}" with (force)'))
    finally:
        admin.dispose()
