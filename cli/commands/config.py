"""``emim-stream config``: print the embedded default config, or write a copy of it to edit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.config import DEFAULT_CONFIG

HELP = "print the embedded default config (show) or write a copy to edit (init [PATH])"

DEFAULT_INIT_PATH = "emim-stream.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emim-stream config``."""
    parser.add_argument("action", choices=("show", "init"), help="show: print it; init: write a copy")
    parser.add_argument(
        "path", nargs="?", default=None, metavar="PATH", help=f"init: where to write (default ./{DEFAULT_INIT_PATH})"
    )
    parser.add_argument("--force", action="store_true", help="init: overwrite an existing PATH")


def main(args: argparse.Namespace) -> int:
    """Print or write the embedded default; exit 0, or 2 when PATH exists (without --force) or cannot be written."""
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    if args.action == "show":
        if args.path is not None:
            raise ConfigError("config show takes no PATH (it prints to stdout; use 'config init PATH' to write)")
        sys.stdout.write(text)
        return 0
    path = Path(args.path or DEFAULT_INIT_PATH)
    if path.exists() and not args.force:
        raise ConfigError(f"'{path}' exists; pass --force to overwrite it")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot write '{path}': {err.strerror}") from None
    print(f"wrote {path} (the embedded default); edit it, then: emim-stream run --config {path}")
    return 0
