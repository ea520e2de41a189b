"""``emim-stream bench-cameras``: the largest number of cameras one engine sustains without latency drift."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import TYPE_CHECKING

from emim_stream.cli.commands.common import add_config_argument, add_overrides_argument, config_path

if TYPE_CHECKING:
    from emim_stream.pipeline.measure.capacity import CapacityStep

HELP = "run the pipeline at 1, 2, ... cameras; report the largest count sustained without drops or latency drift"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, "base config; its first camera is copied")
    parser.add_argument("--max-cameras", type=int, default=8, help="largest camera count to try (default 8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="run length per camera count (default 30)")
    parser.add_argument(
        "--min-served",
        type=float,
        default=0.95,
        help="share of the strides' windows each camera must get (default 0.95)",
    )
    parser.add_argument(
        "--max-drift",
        type=float,
        default=1.25,
        help="largest ratio of last-third to middle-third median latency (default 1.25)",
    )
    add_overrides_argument(parser, "engine.max_batch=1")


def main(args: argparse.Namespace) -> int:
    from emim_stream.engines.errors import ConfigError
    from emim_stream.pipeline.config import load_config
    from emim_stream.pipeline.measure.capacity import camera_capacity

    if args.max_cameras < 1 or args.seconds < 3:
        raise ConfigError("--max-cameras must be >= 1 and --seconds >= 3")
    cfg = load_config(config_path(args), args.overrides)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"camera capacity: {cfg.cameras[0].source} x N, stride {cfg.window.stride}, engine max_batch "
        f"{cfg.engine.max_batch}, {args.seconds:g} s per N (sustained: served >= {args.min_served:.0%}, "
        f"drift <= {args.max_drift:g})",
        flush=True,
    )
    header = ("cameras", "labels/s", "served", "p50 mid", "p50 last", "drift", "p99")
    print("{:>7} {:>9} {:>7} {:>8} {:>9} {:>6} {:>8}  verdict".format(*header))

    def show(s: CapacityStep) -> None:
        verdict = "sustained" if s.sustained else "NOT sustained"
        print(
            f"{s.cameras:>7} {s.windows_per_s:>9.1f} {s.served:>7.1%} {s.p50_middle_ms:>8.1f} {s.p50_last_ms:>9.1f} "
            f"{s.drift:>6.2f} {s.p99_ms:>8.1f}  {verdict}",
            flush=True,
        )

    steps = camera_capacity(
        cfg, list(range(1, args.max_cameras + 1)), args.seconds, args.min_served, args.max_drift, stop, show
    )
    best = max((s.cameras for s in steps if s.sustained), default=0)
    tried_all = steps and steps[-1].sustained and steps[-1].cameras == args.max_cameras
    print(f"\nlargest sustained: {best} camera(s)" + (" (the most tried; raise --max-cameras)" if tried_all else ""))
    return 0 if best else 1
