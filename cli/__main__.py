"""``python -m cli``: the same as the ``emim-stream`` command."""

import sys

from cli.main import main

sys.exit(main())
