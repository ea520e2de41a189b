"""``emim-stream run``: run the pipeline, print labels as they are published and a latency summary."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

HELP = (
    "run the pipeline on a config: cameras -> VMP -> EMIM engine -> ZeroMQ labels "
    "(exit 6 when a camera's source cannot work)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set engine.backend=torch (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print each label")


def _format_label(msg) -> str:
    best, *rest = msg.topk
    others = " ".join(f"{label} {score:.2f}" for label, score in rest)
    return (
        f"{msg.camera_id:>8} frames {msg.window.first_seq:>6}-{msg.window.last_seq:<6} "
        f"{best[0]:<11} {best[1]:.2f}  ({others})  latency {msg.latency_ms['total']:.1f} ms"
    )


def main(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.errors import SourceError
    from pipeline.latency import format_table
    from pipeline.runtime import run

    cfg = load_config(args.config, args.overrides)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    show = cfg.output.print_labels and not args.quiet

    def on_label(msg) -> None:
        if show:
            print(_format_label(msg), flush=True)

    def on_note(camera_id: str, text: str) -> None:
        print(f"{camera_id:>8} ! {text}", file=sys.stderr, flush=True)

    print(f"emim-stream: publishing on {cfg.publish.endpoint} (topics labels/<camera>/, status/<camera>/)", flush=True)
    report = run(cfg, args.duration, stop, on_label, on_note)
    print(f"\nengine: {report.engine}")
    print(f"ended: {report.reason}")
    for cam_id, n in report.labels.items():
        print(
            f"camera {cam_id}: {n} labels, {report.dropped_frames[cam_id]} dropped frames, "
            f"{report.dropped_windows[cam_id]} skipped windows"
        )
    if report.latency:
        print("\nper-window latency (CLOCK_MONOTONIC, ms; total = publish - capture of the newest frame):")
        print(format_table(report.latency))
    for cam_id, why in report.failed.items():
        print(f"emim-stream run: error: camera {cam_id}: {why}", file=sys.stderr)
    return SourceError.exit_code if report.failed else 0
