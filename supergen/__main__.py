"""``python -m supergen`` is the ``supergen`` command."""

import sys

from .cli import main

sys.exit(main())
