"""``emim-stream run``: run the pipeline, print labels as they are published and a latency summary."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from contextlib import nullcontext
from typing import TYPE_CHECKING

from emim_stream.cli.commands.common import add_config_argument, add_overrides_argument, config_path

if TYPE_CHECKING:
    from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage

HELP = (
    "run the pipeline on a config: cameras -> VMP -> EMIM engine -> ZeroMQ labels "
    "(exit 6 when a camera's source cannot work, 2 when its settings cannot work with it)"
)


def _duration(text: str) -> float:
    """``--duration``: a finite number of seconds > 0 (at most a year)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value <= 365 * 86400:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most a year in seconds, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--duration", type=_duration, default=None, metavar="SECONDS", help="stop after this long")
    add_overrides_argument(parser, "engine.backend=torch")
    parser.add_argument("--quiet", action="store_true", help="do not print each label and event")
    parser.add_argument(
        "--view", type=int, default=None, metavar="PORT", help="serve the live view on PORT (view.port)"
    )
    parser.add_argument(
        "--record", default=None, metavar="DIR", help="record annotated MP4s of every camera into DIR (record.dir)"
    )


def _format_label(msg: LabelMessage, scored: bool) -> str:
    """One label line; ``scored``: the camera's source knows the truth (adds ``ok`` / ``WRONG (true: x)`` / ``-``)."""
    best, *rest = msg.topk
    others = " ".join(f"{label} {score:.2f}" for label, score in rest)
    line = (
        f"{msg.camera_id:>8} frames {msg.window.first_seq:>6}-{msg.window.last_seq:<6} "
        f"{best[0]:<11} {best[1]:.2f}  ({others})  latency {msg.latency_ms['total']:.1f} ms"
    )
    if msg.truth is not None:
        return f"{line}  {'ok' if best[0] == msg.truth else f'WRONG (true: {msg.truth})'}"
    return f"{line}  -" if scored else line


class Accuracy:
    """Top-1 against the truth per camera, over the windows that have one."""

    def __init__(self) -> None:
        self.right: Counter[str] = Counter()
        self.scored: Counter[str] = Counter()

    def add(self, msg: LabelMessage) -> None:
        if msg.truth is not None:
            self.scored[msg.camera_id] += 1
            self.right[msg.camera_id] += msg.topk[0][0] == msg.truth

    def summary(self, camera_id: str) -> str:
        """``, top-1 vs truth 93.8% (197/210 windows)``, or empty when the camera had no truth."""
        n = self.scored[camera_id]
        if not n:
            return ""
        right = self.right[camera_id]
        return f", top-1 vs truth {100 * right / n:.1f}% ({right}/{n} windows)"


def _format_event(msg: EventMessage) -> str:
    """One line per event message: ``start``, ``update`` or ``end`` (with its reason), and the event's short id."""
    start = time.strftime("%H:%M:%S", time.localtime(msg.start_wall_ns // 10**9))
    ms = msg.start_wall_ns // 10**6 % 1000
    line = (
        f"{msg.camera_id:>8} event  {msg.label:<11} {msg.phase:<6} from {start}.{ms:03d} "
        f"for {msg.duration_s:.2f} s  frames {msg.first_seq}-{msg.last_seq}  peak {msg.peak_score:.2f} "
        f"mean {msg.mean_score:.2f}  {msg.windows} windows"
    )
    return f"{line}  ({msg.end_reason})  id {msg.id[:8]}" if msg.phase == "end" else f"{line}  id {msg.id[:8]}"


def main(args: argparse.Namespace) -> int:
    from emim_stream.engines.errors import ConfigError
    from emim_stream.pipeline.config import load_config
    from emim_stream.pipeline.errors import SourceError
    from emim_stream.pipeline.inference.latency import format_table
    from emim_stream.pipeline.runtime import run
    from emim_stream.pipeline.view.server import ViewProcess

    overrides = list(args.overrides)
    if args.view is not None:
        overrides.append(f"view.port={args.view}")
    if args.record is not None:
        overrides.append(f"record.dir={json.dumps(args.record)}")
    cfg = load_config(config_path(args), overrides)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    show = cfg.postprocess.print_labels and not args.quiet

    accuracy = Accuracy()

    def on_label(msg: LabelMessage) -> None:
        accuracy.add(msg)
        if show:
            print(_format_label(msg, msg.camera_id in accuracy.scored), flush=True)

    def on_event(msg: EventMessage) -> None:
        if not args.quiet:
            print(_format_event(msg), flush=True)

    def on_note(camera_id: str, text: str) -> None:
        print(f"{camera_id:>8} ! {text}", file=sys.stderr, flush=True)

    def on_publishing(endpoint: str) -> None:  # after a successful bind, with the port it got
        topics = "labels/<camera>/, status/<camera>/, events/<camera>/, stats/<box>/"
        print(f"emim-stream: publishing on {endpoint} (topics {topics})", flush=True)

    with ViewProcess.for_pipeline(cfg) or nullcontext() as view:
        if view is not None:
            query = f"?token={view.token}" if view.token is not None and cfg.view.token_file is None else ""
            print(f"emim-stream: live view on {view.url}{query}", flush=True)
        report = run(cfg, args.duration, stop, on_label, on_note, on_publishing=on_publishing, on_event=on_event)
    print(f"\nengine: {report.engine}")
    print(f"ended: {report.reason}")
    for cam_id, n in report.labels.items():
        print(
            f"camera {cam_id}: {n} labels, {report.dropped_frames[cam_id]} dropped frames, "
            f"{report.dropped_windows[cam_id]} skipped windows{accuracy.summary(cam_id)}"
            + (f", {report.events[cam_id]} events" if cfg.events.enabled else "")
        )
    if report.mqtt is not None:
        m = report.mqtt
        print(
            f"mqtt: {m['sent']} sent, {m['dropped']} dropped, {m['reconnects']} reconnects"
            + (f" (last problem: {m['detail']})" if m["detail"] else "")
        )
        if m["refused"] and not m["sent"]:
            print(f"mqtt: the broker refused every message ({m['refused']}): none reached a subscriber")
    for cam_id, rec in (report.record or {}).items():
        copied = "reconnects" in rec  # its record_source, copied as it comes
        print(
            f"recording {cam_id}: {rec['written']} frames "
            + (f"of its record_source in {rec['files']} file(s), {rec['reconnects']} reconnects, " if copied else
               f"in {rec['files']} file(s), {rec['dropped']} dropped (encoder behind), ")
            + f"{rec['lost']} frames lost to write errors"
            + (f" (last: {rec['detail']})" if rec["detail"] else "")
        )  # fmt: skip
    if report.webhook is not None:
        w = report.webhook
        problem = f" (last problem: {w['detail']})" if w["detail"] else ""
        print(f"webhook: {w['sent']} sent, {w['dropped']} dropped{problem}")
    if report.snapshots is not None:
        print(f"snapshots: {report.snapshots['encoded']} encoded, {report.snapshots['dropped']} dropped")
    if report.warmup_latency:
        print(f"\nper-window latency while the engine was built, served by {report.warmup_engine} (ms):")
        print(format_table(report.warmup_latency))
    if report.latency:
        after = ", after the swap" if report.warmup_latency else ""
        print(f"\nper-window latency{after} (CLOCK_MONOTONIC, ms; total = publish - capture of the newest frame):")
        print(format_table(report.latency))
    for cam_id, why in {**report.failed, **report.misconfigured}.items():
        print(f"emim-stream run: error: camera {cam_id}: {why}", file=sys.stderr)
    if report.misconfigured:
        return ConfigError.exit_code
    return SourceError.exit_code if report.failed else 0
