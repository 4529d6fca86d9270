"""``python -m core``: the workbench command line."""

import sys

from core.cli import main

sys.exit(main())
