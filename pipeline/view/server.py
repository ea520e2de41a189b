"""The live view's HTTP server: the page, its static files and a Server-Sent Events stream of camera updates.

:class:`ViewServer` subscribes to a pipeline (or relay) for ``labels/``, ``status/``, ``events/`` and ``preview/``
messages, keeps a :class:`~emim_stream.pipeline.view.state.ViewState`, and serves with the standard library's
``ThreadingHTTPServer`` (a thread per connection; the page needs a handful):

- ``GET /`` the page, ``GET /static/<file>`` its scripts and styles (uPlot is vendored, nothing comes from a CDN);
- ``GET /events`` Server-Sent Events: one ``update`` event per change, at most 4 a second per client (a
  slow client gets the newest state, never a backlog), a comment every 15 s to keep proxies open;
- ``GET /api/state`` the whole state as JSON, ``GET /frame/<camera>.jpg`` the newest preview, ``GET /healthz``.

Safety: loopback by default (a page bound elsewhere needs ``allow_remote`` and then a token, given as ``?token=``,
an ``Authorization: Bearer`` or ``X-Emim-Token`` header; ``/?token=`` answers with an HttpOnly cookie and a
redirect, so the token never appears in the page). Requests naming another host than the bound loopback address
are refused (DNS rebinding). Unknown paths get 404, other methods 405. Bounds that hold before any token is
checked: a request's line and headers together are at most :data:`MAX_HEAD_BYTES` (more gets 431 and the
connection closed) and must arrive within ``idle_timeout_s``; at most :data:`MAX_UNAUTHENTICATED` connections may
be open without having sent a valid token (or, without a token, a whole request): a new one then closes the oldest
of them (a browser sends its request at once; a connection that dawdles is the one to go); a
connection idle for ``idle_timeout_s`` (or a client not reading for that long) is closed, and beyond
``max_connections`` new connections are closed at once. So a flood of headers costs the view a few MB at most, and
none of this reaches the pipeline: the view only subscribes to it. (The standard library's server is kept with
these bounds rather than replaced: they are a few lines where its own limits, 64 KB per line and 100 lines, fall
short, and every route and the event stream stay as tested.)
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import json
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import threading
import time
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emim_stream.engines.errors import ConfigError, EmimError
from emim_stream.pipeline.comms.curve import CurveClient
from emim_stream.pipeline.comms.subscribe import Subscriber
from emim_stream.pipeline.config import PipelineConfig
from emim_stream.pipeline.endpoints import is_loopback
from emim_stream.pipeline.errors import PublishError
from emim_stream.pipeline.view.state import ViewState

__all__ = [
    "MAX_HEAD_BYTES",
    "MAX_UNAUTHENTICATED",
    "TOPICS",
    "ViewProcess",
    "ViewServer",
    "parse_listen",
    "resolve_token",
]

_log = logging.getLogger(__name__)

TOPICS = ("labels/", "status/", "events/", "preview/")
MAX_HEAD_BYTES = 32 * 1024
"""Most bytes of one request's line and headers together (a browser sends well under 8 KB)."""
MAX_UNAUTHENTICATED = 32
"""Most connections open at once that have not yet sent a valid token (or, without a token, a whole request)."""
_COOKIE = "emim_view"
_STATIC = {
    "view.js": "text/javascript; charset=utf-8",
    "view.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
_MIN_PUSH_INTERVAL_S = 0.25
_KEEPALIVE_S = 15.0
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def resolve_token(host: str, allow_remote: bool, token_file: str | None) -> str | None:
    """The token the page asks for: ``token_file``'s content, a random one for a remote bind, else None.

    Raises:
        ConfigError: a non-loopback ``host`` without ``allow_remote``, or an unreadable or empty token file.
    """
    remote = not is_loopback(host)
    if remote and not allow_remote:
        raise ConfigError(
            f"view host {host!r} is not a loopback address; binding it exposes the cameras' pictures to the "
            "network. Use 127.0.0.1, or allow it explicitly (--allow-remote / view.allow_remote), which then "
            "requires a token"
        )
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise ConfigError(f"view token file {token_file!r} cannot be read: {err.strerror}") from None
        if not token:
            raise ConfigError(f"view token file {token_file!r} is empty")
        return token
    return secrets.token_urlsafe(24) if remote else None


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> ``(host, port)``.

    Raises:
        ConfigError: not of that form, or the port is outside 0..65535.
    """
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


class _HeadTooLarge(http.client.LineTooLong):
    """The request's line and headers exceed :data:`MAX_HEAD_BYTES` (the handler answers 431)."""


class _HeadReader:
    """The connection's reader, bounding each request head in bytes and in time; bodies pass through."""

    def __init__(self, raw: Any, connection: socket.socket) -> None:
        self._raw, self._connection = raw, connection
        self._left, self._deadline = MAX_HEAD_BYTES, float("inf")

    def start(self, deadline: float) -> None:
        """A new request head begins: it must be complete by ``deadline`` (CLOCK_MONOTONIC)."""
        self._left, self._deadline = MAX_HEAD_BYTES, deadline

    def readline(self, size: int = -1) -> bytes:
        if self._left < 0:
            raise _HeadTooLarge("request head")
        remaining_s = self._deadline - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError("request head too slow")
        self._connection.settimeout(min(remaining_s, self._connection.gettimeout() or remaining_s))
        limit = self._left + 1 if size < 0 else min(size, self._left + 1)
        line: bytes = self._raw.readline(limit)
        if line and not line.endswith(b"\n") and len(line) < limit:
            raise ConnectionAbortedError("the request head was cut short")
        self._left -= len(line)
        if self._left < 0:
            raise _HeadTooLarge("request head")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Http(ThreadingHTTPServer):
    """ThreadingHTTPServer with caps on concurrent connections, in all and not yet authenticated."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], view: ViewServer, max_connections: int) -> None:
        self.view = view
        self._slots = threading.BoundedSemaphore(max_connections)
        self._unauthenticated: dict[socket.socket, None] = {}  # in arrival order
        self.refused = 0
        self.evicted = 0
        self.open = 0
        self._count_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        with self._count_lock:
            self.open += 1
            if len(self._unauthenticated) >= MAX_UNAUTHENTICATED:
                oldest = next(iter(self._unauthenticated))
                del self._unauthenticated[oldest]
                self.evicted += 1
                with contextlib.suppress(OSError):  # its handler's next read ends, and the thread with it
                    oldest.shutdown(socket.SHUT_RDWR)
            self._unauthenticated[request] = None
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def authenticated(self, request: socket.socket) -> None:
        """The connection sent a valid token (or a whole request, without a token): it no longer counts as
        unauthenticated."""
        with self._count_lock:
            self._unauthenticated.pop(request, None)

    def _release(self, request: socket.socket) -> None:
        with self._count_lock:
            self.open -= 1
            self._unauthenticated.pop(request, None)
        self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Http
    server_version = "emim-view"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.view.idle_timeout_s)  # idle reads and stalled writes both time out
        self._head = _HeadReader(self.rfile, self.connection)
        self.rfile = self._head  # type: ignore[assignment]  # the handler only calls readline on it

    def handle_one_request(self) -> None:
        self._head.start(time.monotonic() + self.server.view.idle_timeout_s)
        try:
            super().handle_one_request()
        except _HeadTooLarge:  # in the request line (the headers' case is answered by parse_request)
            self.request_version, self.close_connection = "HTTP/1.1", True
            with contextlib.suppress(OSError):
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        except ConnectionError:  # the client went away, or the connection was closed to make room
            self.close_connection = True

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.connection.settimeout(self.server.view.idle_timeout_s)  # the head is read: back to the idle timeout
        if not parsed:
            self.close_connection = True
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def _refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", "text/plain", extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _route(self, send_body: bool) -> None:
        view = self.server.view
        url = urlsplit(self.path)
        if not self._host_allowed():
            self._send(HTTPStatus.FORBIDDEN, b"unexpected Host header\n", "text/plain")
            return
        query = parse_qs(url.query)
        if view.token is not None:
            given = query.get("token", [None])[0]
            if given is not None and hmac.compare_digest(given.encode(), view.token.encode()):
                cookie = f"{_COOKIE}={view.token}; HttpOnly; SameSite=Strict; Path=/"
                self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", extra={"Location": url.path, "Set-Cookie": cookie})
                return
            if not self._authorised(view.token):
                self._send(HTTPStatus.UNAUTHORIZED, b"token required: open /?token=...\n", "text/plain")
                return
        self.server.authenticated(self.request)
        path = url.path
        if path == "/":
            self._send(HTTPStatus.OK, view.files["index.html"], "text/html; charset=utf-8", send_body)
        elif path.startswith("/static/") and path[len("/static/") :] in _STATIC:
            name = path[len("/static/") :]
            self._send(HTTPStatus.OK, view.files[name], _STATIC[name], send_body)
        elif path == "/events" and send_body:
            self._stream_events()
        elif path == "/api/state":
            body = json.dumps({"version": view.state.version, "cameras": view.state.changes(0)[1]}).encode()
            self._send(HTTPStatus.OK, body, "application/json", send_body)
        elif path.startswith("/frame/") and path.endswith(".jpg"):
            jpeg = view.state.frame_jpeg(path[len("/frame/") : -len(".jpg")])
            if jpeg is None:
                self._send(HTTPStatus.NOT_FOUND, b"no preview for this camera\n", "text/plain", send_body)
            else:
                self._send(HTTPStatus.OK, jpeg, "image/jpeg", send_body)
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain", send_body)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", send_body)

    def _host_allowed(self) -> bool:
        """On a loopback bind, only loopback names in Host (a rebound DNS name must not reach the page)."""
        if not is_loopback(self.server.view.host):
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name)

    def _authorised(self, expected: str) -> bool:
        token = expected.encode()
        candidates = [self.headers.get("X-Emim-Token", "")]
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":  # auth schemes are case-insensitive (RFC 7235)
            candidates.append(credentials)
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(_COOKIE)
        except CookieError:
            morsel = None
        if morsel is not None:
            candidates.append(morsel.value)
        return any(hmac.compare_digest(c.strip().encode(), token) for c in candidates if c)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        send_body: bool = True,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _stream_events(self) -> None:
        view = self.server.view
        self.send_response(HTTPStatus.OK)
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        since, last_write = 0, time.monotonic()
        try:
            self.wfile.write(b"retry: 2000\n\n")
            while not view.stopping.is_set():
                version, updates = view.state.changes(since)
                since = version
                if updates:
                    self.wfile.write(b"event: update\ndata: " + json.dumps(updates).encode() + b"\n\n")
                    self.wfile.flush()
                    last_write = time.monotonic()
                    time.sleep(_MIN_PUSH_INTERVAL_S)  # coalesce bursts: the next write carries the newest state
                elif time.monotonic() - last_write > _KEEPALIVE_S:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    last_write = time.monotonic()
                else:
                    view.state.wait(since, 1.0)
        except (OSError, ValueError):  # the client went away or stopped reading (socket timeout)
            return


class ViewServer:
    """The live view of the pipeline publishing on ``endpoint``, served on ``host:port``.

    Args:
        endpoint: the pipeline's (or a relay's) publisher endpoint.
        host, port: where to serve (port 0 = any free port; see :attr:`url`).
        token: required from clients when not None (see the module docstring); resolve it with
            :func:`resolve_token`, which also refuses a remote host without ``allow_remote``.
        curve: keys for a CURVE publisher.
        idle_timeout_s: a connection that sends nothing (or reads nothing) for this long is closed.
        max_connections: concurrent connections; more are closed on arrival.

    Raises:
        PublishError: the port cannot be bound, or the endpoint cannot be connected.
    """

    def __init__(
        self,
        endpoint: str,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        token: str | None = None,
        curve: CurveClient | None = None,
        idle_timeout_s: float = 10.0,
        max_connections: int = 128,
    ) -> None:
        self.endpoint, self.host, self.token = endpoint, host, token
        self.idle_timeout_s = idle_timeout_s
        self.state = ViewState()
        self.stopping = threading.Event()
        static = resources.files("emim_stream.pipeline.view") / "static"
        self.files = {name: (static / name).read_bytes() for name in [*_STATIC, "index.html"]}
        self._subscriber = Subscriber(endpoint, TOPICS, timeout_s=0.25, max_msg_bytes=16 << 20, curve=curve)
        try:
            self._http = _Http((host, port), self, max_connections)
        except OSError as err:
            self._subscriber.close()
            raise PublishError(f"cannot serve the live view on {host}:{port}: {err.strerror}") from None
        self._threads = [
            threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2}, name="view-http"),
            threading.Thread(target=self._ingest, name="view-ingest"),
        ]

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/`` (without the token)."""
        host, port = self._http.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        return self._http.open

    @property
    def refused_connections(self) -> int:
        """Connections closed on arrival because ``max_connections`` were open."""
        return self._http.refused

    def start(self) -> ViewServer:
        """Start serving and receiving (in threads); returns self."""
        for thread in self._threads:
            thread.start()
        _log.info("live view of %s on %s", self.endpoint, self.url)
        if not is_loopback(self.host):
            _log.warning("the live view is served over plain HTTP on %s: use a TLS proxy across networks", self.url)
        return self

    def _ingest(self) -> None:
        next_tick = time.monotonic()
        while not self.stopping.is_set():
            received = self._subscriber.recv()
            if received is not None:
                self.state.apply(received.payload)
            if time.monotonic() >= next_tick:
                self.state.tick()
                next_tick += 1.0

    def close(self) -> None:
        """Stop serving (open event streams end within a second) and close the subscriber. Idempotent."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._threads[0].is_alive():
            self._http.shutdown()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        self._http.server_close()
        self._subscriber.close()

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_VIEW_NICENESS = 10
"""Niceness added to ``run --view``'s page process: its work (parsing every message, encoding events for the
browsers) must not delay windows when the box's cores are busy."""


class ViewProcess:
    """A :class:`ViewServer` in a child process, for ``run --view``: serving the page never takes the inference
    process's CPU time or GIL. Starts at once and waits until the page is served; ``close()`` stops it, and it
    stops by itself when its parent dies.

    Raises:
        ConfigError, PublishError: the child could not serve (port in use, bad host); the message is the child's.
    """

    def __init__(self, endpoint: str, host: str, port: int, token: str | None, start_timeout_s: float = 30.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        receiver, sender = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_view_process_main,
            args=(endpoint, host, port, token, os.getpid(), sender),
            name="emim-view",
            daemon=True,
        )
        self._process.start()
        sender.close()
        try:
            ready = receiver.poll(start_timeout_s)
            outcome = receiver.recv() if ready else ("error", "PublishError", "the live view did not start in time")
        except EOFError:
            outcome = ("error", "PublishError", f"the live view process exited with {self._process.exitcode}")
        if outcome[0] == "error":
            self.close()
            raise (ConfigError if outcome[1] == "ConfigError" else PublishError)(outcome[2])
        self.url: str = outcome[1]
        self.token = token

    @property
    def pid(self) -> int | None:
        """The view process's id."""
        return self._process.pid

    @classmethod
    def for_pipeline(cls, cfg: PipelineConfig) -> ViewProcess | None:
        """The page of ``cfg.view`` for the pipeline of ``cfg`` (None when ``view.port`` is not set).

        Raises:
            ConfigError: the publisher cannot be reached from another process (``inproc://``, a wildcard port)
                or uses CURVE (serve the page with ``emim-stream view`` and client keys instead), or a bad host.
            PublishError: the port cannot be bound.
        """
        view, endpoint = cfg.view, cfg.publish.endpoint
        if view.port is None:
            return None
        if endpoint.startswith("inproc://") or endpoint.endswith((":*", ":0")):
            raise ConfigError(
                f"view.port: the page subscribes to publish.endpoint from its own process and cannot reach "
                f"{endpoint!r}; use a fixed tcp:// or ipc:// endpoint"
            )
        if cfg.publish.curve_secret_key_file is not None:
            raise ConfigError(
                "view.port: the publisher uses CURVE; serve the page with 'emim-stream view --curve-server-key ... "
                "--curve-client-key ...' instead"
            )
        return cls(endpoint, view.host, view.port, resolve_token(view.host, view.allow_remote, view.token_file))

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def __enter__(self) -> ViewProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _view_process_main(
    endpoint: str, host: str, port: int, token: str | None, parent_pid: int, report: Connection
) -> None:
    """Child of :class:`ViewProcess`: serve until SIGTERM or until the parent is gone."""
    os.nice(_VIEW_NICENESS)  # the page yields the CPU to the inference loop on a busy box
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    try:
        server = ViewServer(endpoint, host, port, token=token).start()
    except EmimError as err:
        report.send(("error", type(err).__name__, str(err)))
        return
    report.send(("ready", server.url))
    try:
        while not stop.wait(0.5) and os.getppid() == parent_pid:
            pass
    finally:
        server.close()
