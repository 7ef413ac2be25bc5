"""`python -m lfw.cli`: the same entry point as the `lfw` script."""

import sys

from lfw.cli import main

sys.exit(main())
