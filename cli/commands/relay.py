"""``emim-stream relay``: merge several pipelines' label/status streams behind one endpoint.

Runs ZeroMQ's XSUB/XPUB proxy (:class:`emim_stream.pipeline.comms.relay.Relay`) until Ctrl-C or SIGTERM, then prints
how much
it relayed. Subscribers (``emim-stream subscribe``/``profile``) connect to ``--listen``.
"""

from __future__ import annotations

import argparse
import signal
import threading

HELP = "merge several pipelines' label streams for subscribers (ZeroMQ XSUB/XPUB proxy)"

_WATCH_S = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emim-stream relay``."""
    parser.add_argument(
        "--listen", required=True, metavar="URI", help="where subscribers connect, e.g. tcp://127.0.0.1:5560"
    )
    parser.add_argument(
        "--connect",
        required=True,
        nargs="+",
        action="extend",
        dest="upstream",
        metavar="URI",
        help="publish endpoints of the pipelines to merge, e.g. tcp://10.0.0.5:5556 (repeatable)",
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow --listen on a non-loopback address (exposes the streams)"
    )
    parser.add_argument(
        "--send-hwm", type=int, default=1000, metavar="N", help="messages queued per subscriber (default %(default)s)"
    )


def main(args: argparse.Namespace) -> int:
    """Relay until SIGINT/SIGTERM; exit 0 on a signal, 1 if the proxy stopped on its own."""
    from emim_stream.pipeline.comms.relay import Relay

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Relay(args.listen, args.upstream, allow_remote=args.allow_remote, send_hwm=args.send_hwm) as relay:
            print(f"emim-stream relay: {', '.join(relay.upstream)} -> {relay.endpoint} (Ctrl-C to stop)", flush=True)
            while not stop.wait(_WATCH_S) and relay.running:
                pass
            failed = relay.error
            stats = relay.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed is not None:
        print(f"emim-stream relay: proxy stopped: {failed}", flush=True)
        return 1
    if stats is not None:
        print(
            f"relayed {stats.frames} message parts ({stats.frames // 2} messages of topic + payload, {stats.bytes} "
            f"bytes); {stats.subscriptions} subscription changes"
        )
    return 0
