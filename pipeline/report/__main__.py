"""``python -m pipeline.report ...``: the same as ``stembeam report ...``."""

import sys

from pipeline.report.command import main

sys.exit(main())
