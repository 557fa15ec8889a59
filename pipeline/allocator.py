"""tcmalloc for the processes that separate audio, preloaded where the process starts.

glibc's malloc hands every block above its mmap threshold (at most 32 MiB) back to the kernel
when it is freed, so the next segment's arrays (numpy's and TensorFlow's, tens of MB each) are
faulted in and zeroed again page by page: on 10 minutes of music that was 1.2 million page
faults and 4 s of system time out of 19 s of CPU. tcmalloc keeps freed memory for the next
allocation (0.36 million faults, 2.4 s; the whole run 1.13x faster; BENCHMARKS.md). An allocator
can only be chosen before the process starts, so the ``stembeam`` program re-executes itself
once with ``LD_PRELOAD`` (``reexec_with_tcmalloc``), and worker boots pass ``tcmalloc_env`` to
the SDK harness they start. ``STEMBEAM_ALLOCATOR=system`` keeps the C library's malloc; without
tcmalloc installed (Debian: ``libtcmalloc-minimal4``) nothing changes.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping

SWITCH = "STEMBEAM_ALLOCATOR"  # "system": the C library's malloc
TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # ctypes.util.find_library names


def tcmalloc_library() -> str | None:
    """The soname of an installed tcmalloc (``libtcmalloc_minimal.so.4``), else None."""
    for name in TCMALLOC_LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def tcmalloc_loaded(maps: str = "/proc/self/maps") -> bool:
    """Whether tcmalloc is mapped into this process."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            return "libtcmalloc" in f.read()
    except OSError:
        return False


def tcmalloc_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with tcmalloc first in ``LD_PRELOAD``, unless ``STEMBEAM_ALLOCATOR=system``,
    tcmalloc is not installed or it is there already."""
    env = dict(environ)
    library = None if env.get(SWITCH) == "system" else tcmalloc_library()
    preload = env.get("LD_PRELOAD", "")
    if library is None or "libtcmalloc" in preload:
        return env
    env["LD_PRELOAD"] = f"{library} {preload}".strip()
    return env


def reexec_with_tcmalloc() -> None:
    """Replaces this process (same pid, arguments and streams) by itself with tcmalloc
    preloaded; returns when that is not wanted, not possible or done already."""
    if tcmalloc_loaded():
        return
    env = tcmalloc_env(os.environ)
    if env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
        return  # switched off, not installed, or preloaded in vain once: never loop
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, sys.orig_argv, env)
