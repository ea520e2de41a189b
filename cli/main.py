"""``emim-stream``: the command-line entry point.

Each sub-command lives in its own module under :mod:`emim_stream.cli.commands` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``. User errors
(:class:`emim_stream.engines.errors.EmimError`) print one line and exit with the error's code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import Literal

from emim_stream.engines.errors import EmimError

# Sub-command name -> module under emim_stream.cli.commands. build_parser imports every one; each keeps its heavy
# imports (torch, the engines) inside main() so that `--help` stays fast.
COMMANDS: dict[str, str] = {
    "run": "run",
    "config": "config",
    "subscribe": "subscribe",
    "profile": "profile",
    "relay": "relay",
    "keys": "keys",
    "bench-pipeline": "bench_pipeline",
    "bench-cameras": "bench_cameras",
    "bench-decode": "bench_decode",
    "soak": "soak",
    "info": "info",
    "export": "export",
    "build-engine": "build_engine",
    "bench": "bench",
    "doctor": "doctor",
    "calibrate": "calibrate",
    "train": "train",
    "view": "view",
    "evaluate": "evaluate",
    "import-weights": "import_weights",
}

# Loggers of this project live under this name; every other (third-party) logger is shown from WARNING up unless -v.
OWN_LOGGER = "emim_stream"
# Warnings about the libraries' own future (deprecations, changes to come): for their developers, shown with -v.
HIDDEN_WARNINGS: tuple[type[Warning], ...] = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="emim-stream", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="debug log output, and info from third-party libraries (default: info, theirs from warning)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"emim_stream.cli.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_main=module.main)
    return parser


def configure_logging(verbose: int) -> None:
    """INFO (DEBUG with ``-v``) on stderr; third-party loggers only from WARNING unless ``-v``.

    :data:`HIDDEN_WARNINGS` follow the same rule: hidden, or shown with ``-v`` (each once per place),
    in this process and in the Python processes it starts (cameras, engine builds), unless ``-W`` or
    ``PYTHONWARNINGS`` chose otherwise.
    """
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_or_warning)
    if not sys.warnoptions:
        action: Literal["default", "ignore"] = "default" if verbose else "ignore"
        for category in HIDDEN_WARNINGS:
            warnings.filterwarnings(action, category=category)
        os.environ["PYTHONWARNINGS"] = ",".join(f"{action}::{c.__name__}" for c in HIDDEN_WARNINGS)


def _own_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] == OWN_LOGGER


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args._main(args) or 0)
    except EmimError as err:
        print(f"emim-stream {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
