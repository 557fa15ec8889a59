"""Anonymous Google credentials for Beam's GCS client, for tests against a storage emulator.

Beam looks for Google credentials for ~24 s before falling back to anonymous access; against a
storage emulator there are none to find. Pre-seeding Beam's credential cache skips the search.
It must happen in every process that touches gs://: the ``gcs_emulator`` fixture
(tests/services.py) seeds the test process, and importing this module seeds the importing
process when ``STORAGE_EMULATOR_HOST`` is set, so an SDK worker process that imports it (through
the test module defining its DoFns, like tests.loopback_guard) is seeded before its first call.
"""

from __future__ import annotations

import os

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def use_anonymous_gcs_credentials() -> None:
    """Make Beam's GCS client use anonymous access without its credential search (this
    process)."""
    from apache_beam.internal.gcp import auth

    auth._Credentials._credentials_init = True
    auth._Credentials._credentials = None


if os.environ.get(EMULATOR_ENV):
    use_anonymous_gcs_credentials()
