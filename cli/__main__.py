"""``python -m emim_stream.cli``: the same as the ``emim-stream`` command."""

import sys

from emim_stream.cli.main import main

sys.exit(main())
