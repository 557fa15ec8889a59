"""`pip install .` of the checkout into a fresh virtualenv gives a working `stembeam` that
installs no generic top-level module names (model, pipeline, transforms).

The venv sees the system's site-packages (so the pinned dependencies are not downloaded again),
and the package itself is built and installed from the checkout into the venv. The commands run
from a folder holding `model.py` and `pipeline.py`, which must not shadow stembeam's modules.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.audio_files import tone, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_pip_install_gives_a_working_namespaced_command(tmp_path, tiny_model):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python, stembeam = str(venv / "bin" / "python"), str(venv / "bin" / "stembeam")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", ROOT],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    installed = sorted(os.listdir(site))
    assert "stembeam" in installed
    assert not {"model", "pipeline", "transforms"} & set(installed)
    assert sorted(os.listdir(os.path.join(site, "stembeam"))) == ["model", "pipeline", "transforms"]
    assert os.path.exists(os.path.join(site, "stembeam", "pipeline", "report", "templates"))

    work = tmp_path / "work"  # a folder with files named like the old top-level packages
    work.mkdir()
    (work / "model.py").write_text("raise ImportError('the local model.py was imported')\n")
    (work / "pipeline.py").write_text("raise ImportError('the local pipeline.py was imported')\n")
    write(str(work / "song.wav"), tone(1.0, seed=3))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    version = subprocess.run(
        [stembeam, "--version"], cwd=work, env=env, check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == "stembeam 0.1.0"
    where = subprocess.run(
        [python, "-c", "import stembeam.pipeline.cli as c; print(c.__file__)"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(site)  # the installed copy, not the checkout
    run = subprocess.run(
        [
            stembeam,
            "separate",
            "song.wav",
            "-o",
            "out",
            "--model",
            tiny_model,
            "--report",
            "none",
            "--direct_num_workers",
            "1",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(os.listdir(work / "out" / "song")) == ["accompaniment.wav", "vocals.wav"]
