"""``python -m neurcore``: the same command line as the ``neurcore`` script."""

import sys

from .cli import main

sys.exit(main())
