"""``python -m stembeam.pipeline ...`` is ``stembeam ...``."""

import sys

from stembeam.pipeline.cli import main

sys.exit(main())
