"""A webhook receiver on loopback for tests: Python's ``http.server`` in a thread, recording every request.

:class:`HookServer` answers by its ``mode``, which a test may change at any time: ``ok`` (200, ``{}``), ``error``
(HTTP 500), ``hang`` (reads the request, then answers nothing until the mode changes or the server stops: a server
that hangs) or ``frigate``: the request and answer shape of Frigate's HTTP API for manual events (its
``frigate/api/event.py`` and ``EventsCreateBody`` / ``EventsEndBody``): ``POST /api/events/<camera>/<label>/create``
with a JSON body of ``source_type``, ``sub_label``, ``score``, ``duration``, ``include_recording``, ``draw`` answers
``{"success": true, "message": "Successfully created event.", "event_id": "<time>-<random>"}``;
``PUT /api/events/<event_id>/end`` with ``{"end_time": <unix s>}`` answers ``{"success": true, ...}`` for a known
event and 404 for an unknown one. With ``tls_dir`` it serves HTTPS with a certificate for 127.0.0.1 signed by a
throw-away CA (``ca_file``).
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.loopback import make_certificates

FRIGATE_CREATE_KEYS = {"source_type", "sub_label", "score", "duration", "include_recording", "draw"}


@dataclass(frozen=True)
class Request:
    """One request as received: method, path, headers (lower-case names), the JSON body, receipt time."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    mono_s: float


class HookServer:
    """A recording HTTP(S) server on 127.0.0.1 (see the module docstring). A context manager."""

    def __init__(self, mode: str = "ok", tls_dir: Path | None = None) -> None:
        self.mode = mode
        self.requests: list[Request] = []
        self.frigate_events: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self._stopped = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.ca_file = None
        scheme = "http"
        if tls_dir is not None:
            self.ca_file = make_certificates(tls_dir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hook-server", daemon=True)

    def set_mode(self, mode: str) -> None:
        with self.cond:
            self.mode = mode
            self.cond.notify_all()

    def wait_for(self, predicate, timeout_s: float = 10.0) -> bool:
        """Wait until ``predicate(requests)`` holds."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.requests), timeout_s)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                self._answer()

            def do_PUT(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  json.loads(raw) if raw else None, time.monotonic())  # fmt: skip
                with server.cond:
                    server.requests.append(request)
                    server.cond.notify_all()
                    server.cond.wait_for(lambda: server.mode != "hang" or server._stopped)
                    mode = server.mode
                if server._stopped:
                    return
                if mode == "error":
                    self._send(500, {"success": False, "message": "An unknown error occurred"})
                elif mode == "frigate":
                    self._send(*server._frigate(request))
                else:
                    self._send(200, {})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _frigate(self, request: Request) -> tuple[int, dict[str, Any]]:
        parts = [urllib.parse.unquote(p) for p in request.path.split("/")]
        if request.method == "POST" and len(parts) == 6 and parts[1:3] == ["api", "events"] and parts[5] == "create":
            if not isinstance(request.body, dict) or not set(request.body) <= FRIGATE_CREATE_KEYS:
                return 422, {"success": False, "message": "invalid body"}
            event_id = f"{time.time():.6f}-{secrets.token_hex(3)}"
            made = {"camera": parts[3], "label": parts[4], **request.body, "end_time": None}
            with self.cond:
                self.frigate_events[event_id] = made
            return 200, {"success": True, "message": "Successfully created event.", "event_id": event_id}
        if request.method == "PUT" and len(parts) == 5 and parts[1:3] == ["api", "events"] and parts[4] == "end":
            with self.cond:
                event = self.frigate_events.get(parts[3])
                if event is None or not isinstance(request.body, dict):
                    return 404, {"success": False, "message": f"{parts[3]} must be set and valid."}
                event["end_time"] = request.body.get("end_time")
            return 200, {"success": True, "message": "Event successfully ended."}
        return 404, {"success": False, "message": "not found"}

    def __enter__(self) -> HookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.cond:
            self._stopped = True
            self.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
