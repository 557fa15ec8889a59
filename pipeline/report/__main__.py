"""``python -m stembeam.pipeline.report ...``: the same as ``stembeam report ...``."""

import sys

from stembeam.pipeline.report.command import main

sys.exit(main())
