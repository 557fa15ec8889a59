"""deploy/ stays consistent with the code: Docker, Dataflow and Flink cannot run here.

- Every flag the Dataflow launch script and the Flink submit command pass is accepted by the real
  options parser (stembeam's SeparateOptions + all of Beam's PipelineOptions), and the Flex
  Template's parameters are option names too. The launch script is executed by bash with a stub
  `stembeam` on PATH that records its arguments, so shell quoting is what the real run would see.
- The image's pinned versions equal requirements.txt, it runs Beam's boot in its own venv
  (RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT), and the files it copies exist.
- The file handed to `gcloud dataflow flex-template build --metadata-file` is a template metadata
  file (name, description, parameters), not a template spec.
- The Flink compose file pairs every task manager with its own worker pool (same container, so
  scaling keeps pairs) and pins one Flink minor for job manager, task manager image and job
  server; the task manager entry script really starts deploy/boot.py's pool beside a (stub) Flink
  task manager. Shell scripts pass bash -n (and shellcheck where installed).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
import yaml
from apache_beam.options import pipeline_options as beam_options

import stembeam.pipeline.options  # noqa: F401  (registers SeparateOptions with Beam's parser)
from stembeam.pipeline.allocator import tcmalloc_env, tcmalloc_library
from tests.services import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
FLINK_DOCKERFILE = os.path.join(DEPLOY, "flink", "Dockerfile")
SCRIPTS = [
    os.path.join(DEPLOY, "dataflow", "launch.sh"),
    os.path.join(DEPLOY, "flink", "taskmanager.sh"),
    os.path.join(REPO, ".ci", "start-postgres.sh"),
]
# Template metadata file keys (Dataflow "Flex Template metadata"), top level and per parameter.
METADATA_KEYS = {
    "name",
    "description",
    "streaming",
    "supportsAtLeastOnce",
    "supportsExactlyOnce",
    "defaultStreamingMode",
    "parameters",
}
PARAMETER_KEYS = {
    "name",
    "label",
    "helpText",
    "isOptional",
    "regexes",
    "paramType",
    "parentName",
    "parentTriggerValues",
    "groupName",
    "defaultValue",
    "enumOptions",
    "hiddenUi",
    "customMetadata",
}


def options_parser():
    """The parser Beam builds in PipelineOptions.get_all_options: every options class's flags."""
    parser = beam_options._BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in beam_options.PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


def assert_all_flags_known(args: list[str]) -> None:
    _, unknown = options_parser().parse_known_args(args)
    assert unknown == [], f"flags no options class defines: {unknown}"
    options = beam_options.PipelineOptions(args)
    from stembeam.pipeline.options import SeparateOptions

    assert options.view_as(SeparateOptions).input and options.view_as(SeparateOptions).output


def requirement_pins() -> dict[str, str]:
    pins = {}
    with open(os.path.join(REPO, "requirements.txt")) as handle:
        for line in handle:
            match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line.strip())
            if match:
                pins[match.group(1).lower()] = match.group(3)
    return pins


def dockerfile_args(path: str = os.path.join(DEPLOY, "Dockerfile")) -> dict[str, str]:
    with open(path) as handle:
        return dict(re.findall(r"^ARG (\w+)=(\S+)", handle.read(), re.M))


def dockerfile_env(path: str) -> dict[str, str]:
    """``ENV k=v [k=v ...]`` settings of a Dockerfile, continuation lines joined."""
    with open(path) as handle:
        text = handle.read().replace("\\\n", " ")
    env = {}
    for line in re.findall(r"^ENV (.*)$", text, re.M):
        env.update(item.split("=", 1) for item in shlex.split(line))
    return env


def compose() -> dict:
    with open(os.path.join(DEPLOY, "flink", "docker-compose.yml")) as handle:
        return yaml.safe_load(handle)


def flink_submit_args() -> list[str]:
    """The `stembeam separate` arguments of deploy/flink/README.md's submit command."""
    with open(os.path.join(DEPLOY, "flink", "README.md")) as handle:
        blocks = re.findall(r"```sh\n(.*?)```", handle.read(), re.S)
    command = next(b for b in blocks if "stembeam separate" in b)
    args = shlex.split(command.replace("\\\n", " "))
    assert args[:2] == ["stembeam", "separate"]
    return args[2:]


def test_dataflow_launch_script_flags(tmp_path):
    stub = tmp_path / "bin" / "stembeam"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > "$ARGS_FILE"\n')
    stub.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{stub.parent}:{os.environ['PATH']}",
        ARGS_FILE=str(tmp_path / "args"),
        PROJECT="p",
        REGION="us-central1",
        BUCKET="b",
        INPUT="gs://b/masters/**.flac",
        OUTPUT="gs://b/stems",
    )
    subprocess.run(
        ["bash", os.path.join(DEPLOY, "dataflow", "launch.sh"), "--precision", "bfloat16"],
        env=env,
        check=True,
    )
    args = (tmp_path / "args").read_text().split("\0")[:-1]
    assert args[0] == "separate"
    assert_all_flags_known(args[1:])
    parsed = beam_options.PipelineOptions(args[1:])
    assert parsed.view_as(beam_options.StandardOptions).runner == "DataflowRunner"
    google = parsed.view_as(beam_options.GoogleCloudOptions)
    assert google.dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    ]
    worker = parsed.view_as(beam_options.WorkerOptions)
    assert worker.machine_type == "g2-standard-8"
    assert parsed.view_as(beam_options.DebugOptions).number_of_worker_harness_threads == 8
    assert worker.sdk_container_image == "us-central1-docker.pkg.dev/p/stembeam/worker:0.1.0"
    experiments = parsed.view_as(beam_options.DebugOptions).experiments
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(experiments)


def test_flink_submit_command_flags():
    args = flink_submit_args()
    assert_all_flags_known(args)
    parsed = beam_options.PipelineOptions(args)
    portable = parsed.view_as(beam_options.PortableOptions)
    assert portable.environment_type == "EXTERNAL"
    assert parsed.view_as(beam_options.StandardOptions).runner == "PortableRunner"


def test_flex_template_metadata_file():
    with open(os.path.join(DEPLOY, "dataflow", "metadata.json")) as handle:
        metadata = json.load(handle)
    assert set(metadata) <= METADATA_KEYS, set(metadata) - METADATA_KEYS
    assert metadata["name"] and metadata["description"] and metadata["parameters"]
    dests = {action.dest for action in options_parser()._actions}
    for param in metadata["parameters"]:
        assert set(param) <= PARAMETER_KEYS, (param["name"], set(param) - PARAMETER_KEYS)
        assert param["name"] in dests, f"{param['name']} is no pipeline option"
        assert param["label"] and param["helpText"] and isinstance(param["isOptional"], bool)
        assert all(isinstance(r, str) and re.compile(r) for r in param.get("regexes", []))
    required = {p["name"] for p in metadata["parameters"] if not p["isOptional"]}
    assert required == {"input", "output", "results"}  # remote output: --results is required
    regexes = {p["name"]: p["regexes"] for p in metadata["parameters"] if "regexes" in p}
    for name, good, bad in [
        ("results", "bigquery:p.stembeam.results", "results.sqlite"),
        ("results", "postgresql://u:p@h/db", "bigquery:p.table"),
        ("segmentation", "spleeter", "spleeterx"),
        ("batch_size", "16", "1a"),
    ]:
        assert all(re.match(r, good) for r in regexes[name]), (name, good)
        assert not all(re.match(r, bad) for r in regexes[name]), (name, bad)
    with open(os.path.join(DEPLOY, "README.md")) as handle:
        assert "--metadata-file deploy/dataflow/metadata.json" in handle.read()


def test_image_pins_match_requirements():
    args, pins = dockerfile_args(), requirement_pins()
    assert args["BEAM_VERSION"] == pins["apache-beam"]
    assert args["TENSORFLOW_VERSION"] == pins["tensorflow-cpu"]
    assert args["KERAS_VERSION"] == pins["keras"]
    assert args["PYTHON_VERSION"] == "3.11"
    with open(os.path.join(DEPLOY, "Dockerfile")) as handle:
        text = handle.read()
    for path in (os.path.join(DEPLOY, "Dockerfile"), FLINK_DOCKERFILE):
        with open(path) as handle:
            for source in re.findall(r"^COPY (?!--from)(\S+) ", handle.read(), re.M):
                assert os.path.exists(os.path.join(REPO, source)), f"{path} copies {source}"
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    env = dockerfile_env(os.path.join(DEPLOY, "Dockerfile"))
    assert env["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"
    venv = env["VIRTUAL_ENV"]
    assert f"-m venv {venv}" in text and env["PATH"].split(":")[0] == f"{venv}/bin"
    assert f"COPY deploy/boot.py {dockerfile_env(FLINK_DOCKERFILE)['BOOT']}" in text
    # the image preloads the tcmalloc its apt line installs (the soname Debian's package has here)
    assert env["LD_PRELOAD"] == tcmalloc_library() and "libtcmalloc-minimal4" in text
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in text


def test_compose_pairs_each_task_manager_with_its_worker_pool():
    services = compose()["services"]
    assert all("network_mode" not in s for s in services.values())  # cannot be scaled
    assert set(services) == {"jobmanager", "taskmanager", "job-server", "postgres"}
    taskmanager = services["taskmanager"]
    assert "container_name" not in taskmanager and "ports" not in taskmanager  # scalable
    assert taskmanager["image"].split(":-")[-1].startswith("stembeam-taskmanager:")
    with open(os.path.join(DEPLOY, "flink", "README.md")) as handle:
        assert "-f deploy/flink/Dockerfile" in handle.read()
    image_env = dockerfile_env(FLINK_DOCKERFILE)
    pool = taskmanager["environment"]["POOL_ADDRESS"]
    assert pool == image_env["POOL_ADDRESS"] and pool.startswith("127.0.0.1:")
    # the pipeline's EXTERNAL address is the pool inside the same container
    portable = beam_options.PipelineOptions(flink_submit_args()).view_as(
        beam_options.PortableOptions
    )
    host, port = portable.environment_config.rsplit(":", 1)
    assert host in ("localhost", "127.0.0.1") and port == pool.rsplit(":", 1)[1]
    devices = taskmanager["deploy"]["resources"]["reservations"]["devices"]
    assert [(d["count"], d["capabilities"]) for d in devices] == [(1, ["gpu"])]
    assert "-Djobmanager.rpc.address=jobmanager" in taskmanager["command"]
    for service in services.values():  # published ports stay on the host's loopback
        assert all(p.startswith("127.0.0.1:") for p in service.get("ports", []))


def test_flink_versions_match_beam():
    services = compose()["services"]
    job_server = re.fullmatch(
        r"apache/beam_flink([\d.]+)_job_server:(\S+)", services["job-server"]["image"]
    )
    assert job_server and job_server.group(2) == requirement_pins()["apache-beam"]
    minor = job_server.group(1)
    assert minor in beam_options.FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    flink = dockerfile_args(FLINK_DOCKERFILE)["FLINK_VERSION"]
    assert re.fullmatch(rf"{re.escape(minor)}\.\d+", flink)
    assert services["jobmanager"]["image"] == f"flink:{flink}-scala_2.12-java17"
    with open(FLINK_DOCKERFILE) as handle:
        assert "FROM flink:${FLINK_VERSION}-scala_2.12-java17 AS flink" in handle.read()


def test_taskmanager_entry_starts_the_worker_pool(tmp_path):
    """deploy/flink/taskmanager.sh with the real deploy/boot.py and a stub Flink whose
    taskmanager.sh succeeds only once the pool answers on POOL_ADDRESS; the task manager runs
    without the image's tcmalloc preload."""
    stub = tmp_path / "flink" / "bin" / "taskmanager.sh"
    stub.parent.mkdir(parents=True)
    stub.write_text(
        "#!/usr/bin/env bash\nfor _ in $(seq 300); do\n"
        '  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then\n'
        '    printf "%s\\n" "$@" > "$ARGS_FILE"\n'
        '    echo "${LD_PRELOAD-unset}" > "$ARGS_FILE.preload"\n'
        "    exit 0\n  fi\n  sleep 0.1\n"
        "done\nexit 3\n"
    )
    stub.chmod(0o755)
    port = free_port()
    env = dict(
        os.environ,
        FLINK_HOME=str(tmp_path / "flink"),
        PORT=str(port),
        BOOT=os.path.join(DEPLOY, "boot.py"),
        POOL_ADDRESS=f"127.0.0.1:{port}",
        ARGS_FILE=str(tmp_path / "args"),
        LD_PRELOAD=tcmalloc_env({})["LD_PRELOAD"],
        PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    )
    command = compose()["services"]["taskmanager"]["command"]
    subprocess.run(
        [os.path.join(DEPLOY, "flink", "taskmanager.sh"), *command],
        env=env,
        check=True,
        timeout=120,
    )
    assert (tmp_path / "args").read_text().split("\n")[:-1] == ["start-foreground", *command]
    assert (tmp_path / "args.preload").read_text() == "unset\n"
    with pytest.raises(OSError):  # the pool stopped with its task manager
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shell_scripts_lint_clean(script):
    subprocess.run(["bash", "-n", script], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_flex_entry_point_compiles():
    with open(os.path.join(DEPLOY, "dataflow", "flex_main.py")) as handle:
        compile(handle.read(), "flex_main.py", "exec")
