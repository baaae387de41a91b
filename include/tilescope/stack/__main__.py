"""Entry point of ``python -m tilescope.stack``."""

import sys

from tilescope.stack.cli import main

sys.exit(main())
