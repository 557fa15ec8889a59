"""deploy/ stays consistent with the code: Docker, Dataflow and Flink cannot run here.

- Every flag the Dataflow launch script and the Flink submit command pass is accepted by the real
  options parser (stembeam's SeparateOptions + all of Beam's PipelineOptions), and the Flex
  Template's parameters are option names too. The launch script is executed by bash with a stub
  `stembeam` on PATH that records its arguments, so shell quoting is what the real run would see.
- The image's pinned versions equal requirements.txt; the files it copies exist.
- The compose file parses and its Beam/Flink versions match; shell scripts pass bash -n (and
  shellcheck where installed).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml
from apache_beam.options import pipeline_options as beam_options

import pipeline.options  # noqa: F401  (registers SeparateOptions with Beam's parser)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
SCRIPTS = [os.path.join(DEPLOY, "dataflow", "launch.sh"),
           os.path.join(REPO, ".ci", "start-postgres.sh")]


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
    from pipeline.options import SeparateOptions
    assert options.view_as(SeparateOptions).input and options.view_as(SeparateOptions).output


def requirement_pins() -> dict[str, str]:
    pins = {}
    with open(os.path.join(REPO, "requirements.txt")) as handle:
        for line in handle:
            match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line.strip())
            if match:
                pins[match.group(1).lower()] = match.group(3)
    return pins


def dockerfile_args() -> dict[str, str]:
    with open(os.path.join(DEPLOY, "Dockerfile")) as handle:
        return dict(re.findall(r"^ARG (\w+)=(\S+)", handle.read(), re.M))


def test_dataflow_launch_script_flags(tmp_path):
    stub = tmp_path / "bin" / "stembeam"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > "$ARGS_FILE"\n')
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stub.parent}:{os.environ['PATH']}",
               ARGS_FILE=str(tmp_path / "args"), PROJECT="p", REGION="us-central1",
               BUCKET="b", INPUT="gs://b/masters/**.flac", OUTPUT="gs://b/stems")
    subprocess.run(["bash", os.path.join(DEPLOY, "dataflow", "launch.sh"), "--precision",
                    "bfloat16"], env=env, check=True)
    args = (tmp_path / "args").read_text().split("\0")[:-1]
    assert args[0] == "separate"
    assert_all_flags_known(args[1:])
    parsed = beam_options.PipelineOptions(args[1:])
    assert parsed.view_as(beam_options.StandardOptions).runner == "DataflowRunner"
    google = parsed.view_as(beam_options.GoogleCloudOptions)
    assert google.dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    worker = parsed.view_as(beam_options.WorkerOptions)
    assert worker.machine_type == "g2-standard-8"
    assert parsed.view_as(beam_options.DebugOptions).number_of_worker_harness_threads == 8
    assert worker.sdk_container_image == "us-central1-docker.pkg.dev/p/stembeam/worker:0.1.0"
    experiments = parsed.view_as(beam_options.DebugOptions).experiments
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(experiments)


def test_flink_submit_command_flags():
    with open(os.path.join(DEPLOY, "flink", "README.md")) as handle:
        blocks = re.findall(r"```sh\n(.*?)```", handle.read(), re.S)
    command = next(b for b in blocks if "stembeam separate" in b)
    args = shlex.split(command.replace("\\\n", " "))
    assert args[:2] == ["stembeam", "separate"]
    assert_all_flags_known(args[2:])
    parsed = beam_options.PipelineOptions(args[2:])
    portable = parsed.view_as(beam_options.PortableOptions)
    assert (portable.environment_type, portable.environment_config) == ("EXTERNAL",
                                                                        "localhost:50000")
    assert parsed.view_as(beam_options.StandardOptions).runner == "PortableRunner"


def test_flex_template_parameters_are_options():
    with open(os.path.join(DEPLOY, "dataflow", "flex-template.json")) as handle:
        spec = json.load(handle)
    parser = options_parser()
    dests = {action.dest for action in parser._actions}
    names = [p["name"] for p in spec["metadata"]["parameters"]]
    assert set(names) <= dests, set(names) - dests
    assert {"input", "output"} <= {p["name"] for p in spec["metadata"]["parameters"]
                                   if not p["isOptional"]}
    for param in spec["metadata"]["parameters"]:
        for regex in param.get("regexes", []):
            re.compile(regex)


def test_image_pins_match_requirements():
    args, pins = dockerfile_args(), requirement_pins()
    assert args["BEAM_VERSION"] == pins["apache-beam"]
    assert args["TENSORFLOW_VERSION"] == pins["tensorflow-cpu"]
    assert args["KERAS_VERSION"] == pins["keras"]
    assert args["PYTHON_VERSION"] == "3.11"
    with open(os.path.join(DEPLOY, "Dockerfile")) as handle:
        text = handle.read()
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        assert os.path.exists(os.path.join(REPO, source)), f"Dockerfile copies missing {source}"
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in text


def test_compose_file_parses_and_matches_beam():
    with open(os.path.join(DEPLOY, "flink", "docker-compose.yml")) as handle:
        compose = yaml.safe_load(handle)
    services = compose["services"]
    beam_version = requirement_pins()["apache-beam"]
    job_server = re.fullmatch(r"apache/beam_flink([\d.]+)_job_server:(\S+)",
                              services["job-server"]["image"])
    assert job_server and job_server.group(2) == beam_version
    flink_version = job_server.group(1)
    assert flink_version in beam_options.FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    for name in ("jobmanager", "taskmanager"):
        assert services[name]["image"].startswith(f"flink:{flink_version}-")
    pool = services["worker-pool"]
    assert pool["command"] == ["--worker_pool"]
    assert pool["network_mode"] == "service:taskmanager"
    assert pool["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


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
