#!/usr/bin/env python3
"""Beam's SDK container contract for Python, in Python: a worker pool and a worker boot.

Two modes, as in Beam's Go boot program (/opt/apache/beam/boot in the SDK images):

- ``boot.py --worker_pool --service_address HOST:PORT``: a BeamFnExternalWorkerPool service
  (the ``--environment_type EXTERNAL --environment_config HOST:PORT`` end). For every
  StartWorker request it runs this file again as the container executable, in a process of its
  own, with the request's endpoints.
- ``boot.py --id ID --provision_endpoint URL --control_endpoint URL ...``: one SDK worker. Asks
  the runner's provision service for the job's provision info (pipeline options, endpoints,
  staged artifacts), writes the staged artifacts to ``SEMI_PERSIST_DIR/ID/staged``, sets the
  environment ``sdk_worker_main`` reads (PIPELINE_OPTIONS, CONTROL_API_SERVICE_DESCRIPTOR,
  LOGGING_API_SERVICE_DESCRIPTOR, SEMI_PERSISTENT_DIRECTORY, WORKER_ID, RUNNER_CAPABILITIES)
  and replaces itself (same pid) with ``python -m apache_beam.runners.worker.sdk_worker_main``.
  Before that it writes ``SEMI_PERSIST_DIR/ID/worker.json``: pid, parent pid, the options.

The image carries every package the job needs: a job that stages packages (--requirements_file,
--extra_package, --setup_file) is refused here rather than half-installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

STAGED = "staged"
# Staged files Beam's Go boot would pip-install; this boot relies on the image instead.
PACKAGE_SUFFIXES = (".whl", ".tar.gz", ".tar", ".zip")
PACKAGE_NAMES = ("requirements.txt", "extra_packages.txt")
SEMI_PERSIST_ENV = "STEMBEAM_SEMI_PERSIST_DIR"

log = logging.getLogger("boot")


def run_worker_pool(address: str, semi_persist_dir: str) -> None:
    """Serve StartWorker/StopWorker on ``address`` (HOST:PORT) until SIGTERM; then stop the
    workers still running."""
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
    from apache_beam.utils import thread_pool_executor

    # Workers run this file with this interpreter and find their semi-persistent folder.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    os.environ[SEMI_PERSIST_ENV] = os.path.abspath(semi_persist_dir)
    pool = BeamFnExternalWorkerPoolServicer(
        use_process=True, container_executable=os.path.abspath(__file__)
    )
    server = grpc.server(thread_pool_executor.shared_unbounded_instance())
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    if not server.add_insecure_port(address):
        raise SystemExit(f"cannot listen on {address}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(grace=5))
    log.info("worker pool listening on %s", address)
    try:
        server.wait_for_termination()
    finally:
        for worker in list(pool._worker_processes.values()):
            worker.terminate()


def provision_info(endpoint: str, worker_id: str):
    """The job's ProvisionInfo from the runner's provision service at ``endpoint``."""
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(),
            metadata=[("worker_id", worker_id)],
            timeout=60,
        )
    return response.info


def staged_name(artifact) -> str:
    """The file name an artifact was staged under (its STAGING_TO role)."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    if artifact.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
        raise RuntimeError(f"artifact with role {artifact.role_urn} has no staged name")
    payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload)
    return os.path.basename(payload.staged_name)


def fetch_artifacts(endpoint: str, worker_id: str, dependencies, folder: str) -> list[str]:
    """Write each staged artifact to ``folder/<staged name>``; returns the names.

    Raises RuntimeError for packages (wheels, sdists, requirements): the image must have them.
    """
    import grpc
    from apache_beam.portability.api import beam_artifact_api_pb2, beam_artifact_api_pb2_grpc

    names = [staged_name(a) for a in dependencies]
    packages = [n for n in names if n.endswith(PACKAGE_SUFFIXES) or n in PACKAGE_NAMES]
    if packages:
        raise RuntimeError(
            f"the job stages packages {packages}: install them in the worker "
            "image instead (deploy/Dockerfile)"
        )
    os.makedirs(folder, exist_ok=True)
    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        for name, artifact in zip(names, dependencies):
            request = beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact)
            with open(os.path.join(folder, name), "wb") as out:
                for chunk in stub.GetArtifact(request, metadata=[("worker_id", worker_id)]):
                    out.write(chunk.data)
    return names


def worker_environment(info, args: argparse.Namespace, folder: str) -> dict[str, str]:
    """The variables ``sdk_worker_main`` reads, from the provision info and the boot flags."""
    from apache_beam.portability.api import endpoints_pb2
    from google.protobuf import json_format, text_format

    def descriptor(given, url: str) -> str:
        return text_format.MessageToString(
            given if given.url else endpoints_pb2.ApiServiceDescriptor(url=url)
        )

    env = {
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "SEMI_PERSISTENT_DIRECTORY": folder,
        "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(info.control_endpoint, args.control_endpoint),
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }
    if info.logging_endpoint.url or args.logging_endpoint:
        env["LOGGING_API_SERVICE_DESCRIPTOR"] = descriptor(
            info.logging_endpoint, args.logging_endpoint
        )
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(info.status_endpoint)
    return env


def boot_worker(args: argparse.Namespace) -> None:
    """Provision, fetch artifacts, record, then exec the SDK harness (does not return)."""
    folder = os.path.join(args.semi_persist_dir, args.id)
    started = time.time()
    info = provision_info(args.provision_endpoint, args.id)
    artifact_endpoint = info.artifact_endpoint.url or args.artifact_endpoint
    staged = (
        fetch_artifacts(artifact_endpoint, args.id, info.dependencies, os.path.join(folder, STAGED))
        if info.dependencies
        else []
    )
    env = worker_environment(info, args, folder)
    with open(os.path.join(folder, "worker.json"), "w") as record:
        json.dump(
            {
                "worker_id": args.id,
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "staged": staged,
                "boot_s": time.time() - started,
                "options": json.loads(env["PIPELINE_OPTIONS"]),
            },
            record,
        )
    os.dup2(2, 1)  # the pool never reads the worker's stdout pipe: keep it from filling
    os.execve(
        sys.executable,
        [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"],
        {**os.environ, **env},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--worker_pool",
        action="store_true",
        help="serve a Beam worker pool instead of booting one worker",
    )
    parser.add_argument(
        "--service_address",
        default="127.0.0.1:50000",
        help="worker pool address, HOST:PORT (default %(default)s)",
    )
    parser.add_argument(
        "--semi_persist_dir",
        default=os.environ.get(SEMI_PERSIST_ENV, "/tmp/beam-workers"),
        help="per-worker folders for staged files (default %(default)s)",
    )
    for flag in (
        "id",
        "provision_endpoint",
        "control_endpoint",
        "logging_endpoint",
        "artifact_endpoint",
    ):
        parser.add_argument(f"--{flag}", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s boot %(message)s")
    if args.worker_pool:
        run_worker_pool(args.service_address, args.semi_persist_dir)
    elif not (args.id and args.provision_endpoint):
        parser.error("a worker needs --id and --provision_endpoint (or use --worker_pool)")
    else:
        boot_worker(args)


if __name__ == "__main__":
    main()
