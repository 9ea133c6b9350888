"""``python -m lookalike.cli``: the ``lookalike`` command."""

import sys

from lookalike.cli import main

sys.exit(main())
