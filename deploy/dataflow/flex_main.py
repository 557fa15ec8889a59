"""Dataflow Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in deploy/Dockerfile).

The template launcher runs this file with the template parameters as ``--name=value`` flags
plus the job's Dataflow options; it submits the job and returns without waiting for it.
"""

import sys

from stembeam.pipeline.separate import run

if __name__ == "__main__":
    print(run(sys.argv[1:], wait=False))
