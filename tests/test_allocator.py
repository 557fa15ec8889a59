"""tcmalloc preloading: real processes, checked in the kernel's map of each process."""

import os
import subprocess
import sys

from stembeam.pipeline.allocator import SWITCH, tcmalloc_env, tcmalloc_library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAPPED = "'libtcmalloc' in open('/proc/self/maps').read()"
REEXEC = (
    "import os, sys\n"
    "from stembeam.pipeline.allocator import reexec_with_tcmalloc\n"
    "print('start', os.getpid(), flush=True)\n"
    "reexec_with_tcmalloc()\n"
    f"print('running', os.getpid(), {MAPPED}, sys.argv[1:])\n"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", SWITCH)}
    return {**env, **extra}


def python(code: str, *args: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.splitlines()


def test_tcmalloc_is_installed_and_the_env_preloads_it():
    # deploy/install.sh installs libtcmalloc-minimal4 with the runtime packages
    assert tcmalloc_library() is not None
    assert python(f"print({MAPPED})", env=clean_env()) == ["False"]
    assert python(f"print({MAPPED})", env=tcmalloc_env(clean_env())) == ["True"]
    switched_off = tcmalloc_env(clean_env(**{SWITCH: "system"}))
    assert "LD_PRELOAD" not in switched_off
    assert python(f"print({MAPPED})", env=switched_off) == ["False"]


def test_reexec_keeps_the_process_and_its_arguments_and_loads_tcmalloc():
    lines = python(REEXEC, "a b", "--c", env=clean_env())
    pid = lines[0].split()[1]
    # once without tcmalloc, then the same pid again with it; the program's arguments kept
    assert lines == [f"start {pid}", f"start {pid}", f"running {pid} True ['a b', '--c']"]


def test_reexec_does_nothing_when_switched_off_or_preloaded_in_vain():
    lines = python(REEXEC, env=clean_env(**{SWITCH: "system"}))
    assert len(lines) == 2 and lines[1].endswith("False []")
    # a preload that cannot load (ld.so says so on stderr and goes on): no endless re-executing
    lines = python(REEXEC, env=clean_env(LD_PRELOAD="libtcmalloc_missing.so.9"))
    assert len(lines) == 2 and lines[1].endswith("False []")


def test_the_program_separates_with_tcmalloc(tmp_path):
    empty = tmp_path / "catalog"
    empty.mkdir()
    argv = [sys.executable, "-m", "stembeam.pipeline", "-v", "separate"]
    argv += ["--input", str(empty), "--output", str(tmp_path / "out")]
    for env, allocator in ((clean_env(), "tcmalloc"), (clean_env(**{SWITCH: "system"}), "the C")):
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "is empty" in out.stderr  # refused after the log line
        assert f"memory allocator: {allocator}" in out.stderr
