"""``emim-stream profile``: per-camera, per-stage latency percentiles of a running pipeline (or relay).

Subscribes for ``--duration`` seconds (or until Ctrl-C / SIGTERM), then prints the windows/s, drops, lost
messages and the latency table; ``--json`` writes the report (structure in
:mod:`emim_stream.pipeline.measure.profile`), ``--plot``
a PNG (needs the ``plot`` extra, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from emim_stream.cli.commands.common import add_curve_arguments, curve_client, curve_hint
from emim_stream.pipeline.config import DEFAULT_ENDPOINT

HELP = "profile per-frame latency of a running pipeline: percentiles per camera and stage, drops, loss"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emim-stream profile``."""
    parser.add_argument(
        "--endpoint", default=DEFAULT_ENDPOINT, help="publisher or relay endpoint (default %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="profile for S seconds (default: until Ctrl-C)"
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON to OUT")
    parser.add_argument("--plot", default=None, metavar="OUT.png", help="save latency plots (needs matplotlib)")
    parser.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="PREFIX",
        help="topic prefix, repeatable, e.g. labels/cam1/ (default: labels/, status/ and events/)",
    )
    parser.add_argument(
        "--samples", type=int, default=10_000, metavar="N", help="latency samples kept per camera and stage"
    )
    add_curve_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Profile, print the report, write ``--json``/``--plot``; exit 0, or 1 when no label arrived."""
    from emim_stream.pipeline.errors import PipelineError
    from emim_stream.pipeline.measure.profile import (
        DEFAULT_TOPICS,
        format_report,
        plot_profile,
        profile,
        require_matplotlib,
    )

    if args.duration is not None and args.duration <= 0:
        raise PipelineError(f"--duration must be > 0 seconds, got {args.duration}")
    if args.samples < 1:
        raise PipelineError(f"--samples must be >= 1, got {args.samples}")
    if args.plot is not None:
        require_matplotlib()  # fail now, not after the profiling period
    curve = curve_client(args)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        profiler, report = profile(
            args.endpoint, args.duration, args.topics or DEFAULT_TOPICS, stop=stop, capacity=args.samples, curve=curve
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(format_report(report), flush=True)
    if not report["messages"]["labels"]:
        hint = curve_hint(args, report["messages"]["handshake_failures"])
        if hint is not None:
            print(f"emim-stream profile: {hint}", file=sys.stderr)
    if args.json is not None:
        try:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise PipelineError(f"cannot write the --json report {args.json!r}: {err}") from err
        print(f"report written to {args.json}")
    if args.plot is not None:
        print(f"plot written to {plot_profile(profiler, args.plot, title=f'emim-stream profile of {args.endpoint}')}")
    return 0 if report["messages"]["labels"] else 1
