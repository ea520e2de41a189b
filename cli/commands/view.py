"""``emim-stream view``: the live view in a browser, for a running pipeline (or relay).

Serves a page with one tile per camera: the newest preview frame, the top-3 labels, the last events, the camera
state and a latency chart (p50/p99 of ``total`` and each stage's p50, last minute); it updates itself through
Server-Sent Events. Binds 127.0.0.1 by default; another address needs ``--allow-remote`` and then a token
(``--token-file``, or a random one printed at start). ``run --view PORT`` starts the same page with the pipeline.
"""

from __future__ import annotations

import argparse
import signal
import threading

from emim_stream.cli.commands.common import add_curve_arguments, curve_client
from emim_stream.pipeline.config import DEFAULT_ENDPOINT

HELP = "serve the live view (previews, labels, events, state, latency chart) of a running pipeline in a browser"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emim-stream view``."""
    parser.add_argument(
        "--endpoint", default=DEFAULT_ENDPOINT, help="publisher or relay endpoint (default %(default)s)"
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="serve here (default %(default)s)"
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --listen address (a token is then required)"
    )
    parser.add_argument(
        "--token-file", metavar="FILE", help="file holding the access token (default with --allow-remote: a random one)"
    )
    add_curve_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; exit 0."""
    from emim_stream.pipeline.view.server import ViewServer, parse_listen, resolve_token

    host, port = parse_listen(args.listen)
    token = resolve_token(host, args.allow_remote, args.token_file)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ViewServer(args.endpoint, host, port, token=token, curve=curve_client(args)) as server:
        print(f"emim-stream view: {server.url} (messages from {args.endpoint})", flush=True)
        if token is not None and args.token_file is None:
            print(f"emim-stream view: open {server.url}?token={token} (a new token every start)", flush=True)
        stop.wait()
    return 0
