"""Options and helpers several commands share: the pipeline config and its overrides, CURVE client keys, progress.

Not a command itself (:data:`emim_stream.cli.main.COMMANDS` does not list it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.curve import CurveClient
from emim_stream.pipeline.config import DEFAULT_CONFIG

__all__ = [
    "Progress",
    "add_config_argument",
    "add_curve_arguments",
    "add_overrides_argument",
    "config_label",
    "config_path",
    "curve_client",
    "curve_hint",
]

_BAR = 30  # characters of the terminal bar


def add_config_argument(parser: argparse.ArgumentParser, help_text: str = "YAML config") -> None:
    """``--config FILE``; without it the embedded default (``emim-stream config show``)."""
    parser.add_argument(
        "--config", default=None, help=f"{help_text} (default: the embedded default, see 'emim-stream config show')"
    )


def config_path(args: argparse.Namespace) -> Path:
    """The ``--config`` file, or the embedded default when none was given."""
    return Path(args.config) if args.config else DEFAULT_CONFIG


def config_label(args: argparse.Namespace) -> str:
    """How to name the config in output: the ``--config`` path, or ``the embedded default``."""
    return args.config or "the embedded default"


def add_overrides_argument(parser: argparse.ArgumentParser, example: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, for :func:`emim_stream.pipeline.config.load_config`.

    Args:
        example: an override shown in the help, e.g. ``engine.backend=torch``.
    """
    shown = f", e.g. --set {example}" if example else ""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value{shown} (repeatable)",
    )


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """``--curve-server-key`` / ``--curve-client-key``, for a publisher that uses CURVE."""
    parser.add_argument("--curve-server-key", metavar="FILE", help="the CURVE publisher's public key file (server.key)")
    parser.add_argument(
        "--curve-client-key", metavar="FILE", help="this subscriber's CURVE secret key file (NAME.key_secret)"
    )


def curve_client(args: argparse.Namespace) -> CurveClient | None:
    """The CurveClient of the CURVE options, or None without them.

    Raises:
        ConfigError: only one of the two options given.
    """
    if args.curve_client_key is None and args.curve_server_key is None:
        return None
    if args.curve_client_key is None or args.curve_server_key is None:
        raise ConfigError("CURVE needs both --curve-server-key and --curve-client-key")
    return CurveClient(args.curve_client_key, args.curve_server_key)


def curve_hint(args: argparse.Namespace, handshake_failures: int) -> str | None:
    """Why nothing may have arrived, in CURVE terms, or None when CURVE cannot be the reason."""
    using = args.curve_client_key is not None
    if handshake_failures:
        if using:
            return (
                f"{handshake_failures} CURVE handshake(s) refused: is this subscriber's public key in the publisher's "
                "publish.curve_clients_dir, and --curve-server-key the publisher's server.key?"
            )
        return (
            f"{handshake_failures} handshake(s) refused: the publisher uses CURVE; pass --curve-server-key "
            "(its server.key) and --curve-client-key (your NAME.key_secret; see 'emim-stream keys')"
        )
    if not using:
        return (
            "nothing arrived: is the pipeline running at this endpoint? A CURVE publisher needs "
            "--curve-server-key and --curve-client-key"
        )
    return None


class Progress:
    """``what done/total``: a bar rewritten in place on a terminal, else a line per tenth (logs stay short).

    Call it with ``(done, total)`` after each step; ``step(text)`` prints a named step of a command
    without a count (``[2/3] auditing the ONNX ops``).
    """

    def __init__(self, what: str, out: TextIO | None = None) -> None:
        self.what = what
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self._start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        total = max(total, 1)
        if self.tty:
            filled = _BAR * min(done, total) // total
            elapsed = time.monotonic() - self._start
            eta = f" eta {elapsed * (total - done) / done:.0f} s" if 0 < done < total else f" {elapsed:.0f} s"
            end = "\n" if done >= total else ""
            bar = "#" * filled + "." * (_BAR - filled)
            print(f"\r{self.what} [{bar}] {done}/{total}{eta}  ", end=end, file=self.out, flush=True)
        elif done >= total or done * 10 // total > (done - 1) * 10 // total:
            print(f"{self.what} {done}/{total}", file=self.out, flush=True)

    def step(self, index: int, count: int, text: str) -> None:
        """Announce step ``index`` of ``count`` (1-based), one line on any output."""
        print(f"{self.what} [{index}/{count}] {text}", file=self.out, flush=True)
