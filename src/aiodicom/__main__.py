"""``python -m aiodicom``: the same program as the ``aiodicom`` command."""

import sys

from .cli import main

sys.exit(main())
