"""Make Beam's GCS client use a storage emulator at once, in every process that imports this.

With ``STORAGE_EMULATOR_HOST`` set (``http://127.0.0.1:9023``: gcp-storage-emulator,
fake-gcs-server), google-cloud-storage sends every request there. Beam, however, first looks for
Google credentials (``google.auth.default``: environment, gcloud files, then the GCE metadata
server at 169.254.169.254, with retries) for about 24 s per process before it falls back to
anonymous access, and those probes leave the machine. An emulator needs no credentials, so this
module pre-seeds Beam's credential cache with "anonymous" (``_Credentials._credentials = None``).

Importing the module does it when the variable is set. transforms/storage.py imports it, so every
SDK worker process that unpickles one of our DoFns is seeded before its first GCS call, on every
runner (FnApiRunner's multi-process workers receive no pipeline options, so ``--beam_plugins``
would not reach them). Without the variable nothing changes: real GCS uses real credentials.
"""
from __future__ import annotations

import os

from apache_beam.internal.gcp import auth

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def use_anonymous_gcs_credentials() -> None:
    """Tell Beam's GCS client, in this process, that the credential lookup is done: anonymous."""
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True


def configure_from_environment() -> bool:
    """Pre-seed anonymous credentials when STORAGE_EMULATOR_HOST is set; returns whether it was."""
    if not os.environ.get(EMULATOR_ENV):
        return False
    use_anonymous_gcs_credentials()
    return True


configure_from_environment()
