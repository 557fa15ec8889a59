"""``python -m pipeline ...`` is ``stembeam ...``."""
import sys

from pipeline.cli import main

sys.exit(main())
