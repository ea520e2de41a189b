"""``emim-stream subscribe``: print the messages of a running pipeline (labels by default).

One line per message (a label: camera, window frames, top-1 label and score, latency in ms; an event: its phase,
label, frames and short id; the box's stats: cameras, fps and latency); ``--jsonl`` appends each
payload as one JSON line. At the end (``--count`` reached, ``--timeout`` passed, or Ctrl-C) a summary line
gives the messages received, lost (``msg_seq`` gaps) and malformed, and refused handshakes if any. A publisher
with CURVE needs ``--curve-server-key`` (its ``server.key``) and ``--curve-client-key`` (this subscriber's
``NAME.key_secret``, whose ``NAME.key`` the publisher authorises); see ``emim-stream keys``.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import TextIO

from emim_stream.cli.commands.common import add_curve_arguments, curve_client, curve_hint
from emim_stream.pipeline.comms.messages import (
    EventMessage,
    LabelMessage,
    PreviewMessage,
    StatsMessage,
    StatusMessage,
)
from emim_stream.pipeline.comms.subscribe import Received, Subscriber
from emim_stream.pipeline.config import DEFAULT_ENDPOINT
from emim_stream.pipeline.errors import PipelineError

HELP = "print label/status/event/stats messages of a running pipeline (ZeroMQ SUB)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emim-stream subscribe``."""
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"publisher endpoint (default {DEFAULT_ENDPOINT})")
    parser.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="PREFIX",
        help="topic prefix, repeatable: labels/, labels/cam1/, status/, events/, stats/ (default labels/)",
    )
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N messages")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds in total")
    parser.add_argument("--jsonl", default=None, metavar="FILE", help="append each payload as a JSON line to FILE")
    parser.add_argument("--max-msg-bytes", type=int, default=1 << 20, metavar="BYTES", help="refuse bigger messages")
    add_curve_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Receive and print; exit 0, or 1 when ``--count`` was given and fewer messages arrived."""
    topics = args.topics or ["labels/"]
    curve = curve_client(args)
    with (
        _open_jsonl(args.jsonl) as sink,
        Subscriber(args.endpoint, topics, max_msg_bytes=args.max_msg_bytes, curve=curve) as sub,
    ):
        n = 0
        try:
            for received in sub.iter_messages(count=args.count, total_timeout_s=args.timeout):
                n += 1
                print(describe(received), flush=True)
                if sink is not None:
                    sink.write(json.dumps(received.payload, separators=(",", ":")) + "\n")
                    sink.flush()
        except KeyboardInterrupt:
            pass
        _print_summary(sub, sys.stderr)
        if n == 0 and sub.malformed:
            print(
                f"emim-stream subscribe: {sub.malformed} message(s) arrived but none could be read: is the "
                "publisher an emim-stream pipeline of this version?",
                file=sys.stderr,
            )
        elif n == 0:
            hint = curve_hint(args, sub.handshake_failures)
            if hint is not None:
                print(f"emim-stream subscribe: {hint}", file=sys.stderr)
    return 1 if args.count is not None and n < args.count else 0


def _open_jsonl(path: str | None) -> AbstractContextManager[TextIO | None]:
    if path is None:
        return nullcontext()
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as err:
        raise PipelineError(f"cannot open --jsonl file {path!r}: {err}") from err


def describe(received: Received) -> str:
    """One line for a message of any kind."""
    msg = received.message
    if isinstance(msg, LabelMessage):
        return _describe_label(msg)
    if isinstance(msg, EventMessage):
        return _describe_event(msg)
    if isinstance(msg, PreviewMessage):
        return f"{msg.camera_id} #{msg.msg_seq} preview frame {msg.seq} {msg.width}x{msg.height} JPEG {len(msg.jpeg)} B"
    if isinstance(msg, StatsMessage):
        return _describe_stats(msg)
    return _describe_status(msg)


def _describe_label(msg: LabelMessage) -> str:
    top = f"{msg.topk[0][0]} {msg.topk[0][1]:.2f}" if msg.topk else "-"
    total = msg.latency_ms.get("total")
    latency = "-" if total is None else f"{total:.1f} ms"
    drops = ""
    if msg.dropped_frames or msg.dropped_windows:
        drops = f" dropped {msg.dropped_frames} frames/{msg.dropped_windows} windows"
    return (
        f"{msg.camera_id} #{msg.msg_seq} frames {msg.window.first_seq}-{msg.window.last_seq} "
        f"({msg.window.span_ms / 1000:.2f} s) {top} latency {latency}{drops}"
    )


def _describe_event(msg: EventMessage) -> str:
    reason = f" ({msg.end_reason})" if msg.phase == "end" else ""
    return (
        f"{msg.camera_id} #{msg.msg_seq} event {msg.phase} {msg.label} {msg.duration_s:.2f} s frames {msg.first_seq}-"
        f"{msg.last_seq} peak {msg.peak_score:.2f} mean {msg.mean_score:.2f}{reason} id {msg.id[:8]}"
    )


def _describe_stats(msg: StatsMessage) -> str:
    cameras = ", ".join(f"{cam_id} {c.state} {c.fps:.1f} fps" for cam_id, c in msg.cameras.items())
    latency = "-" if msg.latency_ms is None else f"p50 {msg.latency_ms.p50:.1f} p99 {msg.latency_ms.p99:.1f} ms"
    return f"{msg.box_id} #{msg.msg_seq} stats up {msg.uptime_s:.0f} s {cameras}; latency {latency}"


def _describe_status(msg: StatusMessage) -> str:
    stale = "-" if msg.staleness_ms is None else f"{msg.staleness_ms:.0f} ms"
    return (
        f"{msg.camera_id} #{msg.msg_seq} status {msg.state} {msg.fps:.1f} fps stale {stale} "
        f"reconnects {msg.reconnects} lost {msg.frames_lost}"
    )


def _print_summary(sub: Subscriber, out: TextIO) -> None:
    lost = {topic: n for topic, n in sub.lost.items() if n}
    print(
        f"received {sub.received}, lost {sub.total_lost}{' ' + str(lost) if lost else ''}, "
        f"malformed {sub.malformed}"
        + (f", refused handshakes {sub.handshake_failures}" if sub.handshake_failures else ""),
        file=out,
    )
