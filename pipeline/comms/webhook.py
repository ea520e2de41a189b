"""The webhook sink: action events POSTed to HTTP(S) URLs, off the inference loop, for systems without MQTT.

:meth:`WebhookSink.send` appends the event to a bounded queue per URL and returns at once; one worker thread per URL
sends them in order with urllib3: connect and read timeouts of ``timeout_s``, ``retries`` retries of a request that
failed (connection error, timeout, HTTP 429 or 5xx) with exponential backoff (``backoff_s`` doubling; the first
retry is at once), then the event is dropped and counted. A full queue (a server that hangs or is down for long)
drops its oldest event and counts it. Retrying means at least once: a receiver may see an event twice after a
timeout and tells them apart by the event's ``id``. HTTPS checks the server against the system CA store, or
``ca_file``; ``token_env`` names an environment variable whose value goes out as ``Authorization: Bearer ...``.

Formats (``webhook.format``):

- ``emim``: each event message of the configured ``phases`` is POSTed as published on ``events/<camera>/``
  (:class:`emim_stream.pipeline.comms.messages.EventMessage`, JSON).
- ``frigate``: each URL is a Frigate base URL; an event's ``start`` creates a manual event in Frigate
  (``POST <url>/api/events/<camera>/<label>/create`` with ``{"source_type": "api", "sub_label": "emim-stream",
  "score": <peak>, "duration": null, "include_recording": true, "draw": {}}``; Frigate answers ``{"event_id": ...}``)
  and its ``end`` ends it (``PUT <url>/api/events/<event_id>/end`` with ``{"end_time": <unix s>}``), so the action
  appears in Frigate's review timeline with its recording. The camera ids must be Frigate's camera names.

The sink's state (``ok``, ``failing``: the last request failed after its retries; ``closed``), counters and last
problem are in :meth:`WebhookSink.stats`, which the runtime puts in status messages, metrics and ``run``'s summary.
URLs are shown with credentials redacted; the token never reaches a log line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

import urllib3

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.uris import redact_uri
from emim_stream.pipeline.config import WebhookConfig

__all__ = ["WEBHOOK_STATES", "WebhookSink"]

_log = logging.getLogger(__name__)

WEBHOOK_STATES = ("ok", "failing", "closed")
_FRIGATE_IDS = 1024  # Frigate event ids remembered per URL (events open at once, with ample margin)


class _Target:
    """One URL: its queue, worker thread and counters."""

    def __init__(self, url: str, sink: WebhookSink) -> None:
        self.url, self.shown, self.sink = url.rstrip("/"), redact_uri(url), sink
        self.queue: deque[dict[str, Any]] = deque()
        self.cond = threading.Condition()
        self.sent = self.dropped = 0
        self.state, self.detail = "ok", ""
        self.busy = False
        self.closing = False
        self.frigate_ids: OrderedDict[str, str] = OrderedDict()
        self.thread = threading.Thread(target=self.work, name="emim-webhook", daemon=True)

    def idle(self) -> bool:
        """Nothing queued or being sent."""
        return not (self.queue or self.busy)

    def offer(self, payload: dict[str, Any]) -> None:
        with self.cond:
            if len(self.queue) >= self.sink.cfg.queue_size:
                self.queue.popleft()
                self.dropped += 1
                self.note("failing", f"queue of {self.sink.cfg.queue_size} full, dropping the oldest events")
            self.queue.append(payload)
            self.cond.notify()

    def work(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue or self.closing)
                if not self.queue:
                    return
                payload = self.queue.popleft()
                self.busy = True
            ok, detail = self.deliver(payload)
            with self.cond:
                self.busy = False
                if self.closing:  # close() counted this event as dropped already
                    return
                if ok:
                    self.sent += 1
                    self.note("ok", "")
                else:
                    self.dropped += 1
                    self.note("failing", detail)
                self.cond.notify_all()

    def note(self, state: str, detail: str) -> None:
        """Set the state (``cond`` held); log a change of state or problem once."""
        if (state, detail) != (self.state, self.detail) and detail:
            _log.warning("webhook %s: %s", self.shown, detail)
        elif state != self.state:
            _log.info("webhook %s: delivering again", self.shown)
        self.state, self.detail = state, detail

    def deliver(self, payload: dict[str, Any]) -> tuple[bool, str]:
        """Send one event (with retries); (True, "") when the server took it, else (False, why)."""
        if self.sink.cfg.format == "emim":
            return self.request("POST", self.url, payload)[:2]
        event_id = payload["id"]
        if payload["phase"] == "start":
            path = f"/api/events/{_quote(payload['camera_id'])}/{_quote(payload['label'])}/create"
            body = {"source_type": "api", "sub_label": "emim-stream", "score": payload["peak_score"],
                    "duration": None, "include_recording": True, "draw": {}}  # fmt: skip
            ok, detail, answer = self.request("POST", self.url + path, body)
            if not ok:
                return ok, detail
            frigate_id = answer.get("event_id") if isinstance(answer, dict) else None
            if not isinstance(frigate_id, str):
                return False, f"Frigate's answer to {path} has no event_id"
            self.frigate_ids[event_id] = frigate_id
            while len(self.frigate_ids) > _FRIGATE_IDS:
                self.frigate_ids.popitem(last=False)
            return True, ""
        frigate_id = self.frigate_ids.pop(event_id, None)
        if frigate_id is None:
            return False, f"event {event_id} ended but its start never reached Frigate"
        end_time = payload["end_wall_ns"] / 1e9
        return self.request("PUT", f"{self.url}/api/events/{_quote(frigate_id)}/end", {"end_time": end_time})[:2]

    def request(self, method: str, url: str, body: Mapping[str, Any]) -> tuple[bool, str, Any]:
        """One request with urllib3's retries; (ok, problem, decoded JSON answer or None)."""
        try:
            response = self.sink.pool.request(
                method, url, body=json.dumps(body, separators=(",", ":")).encode(), headers=self.sink.headers
            )
        except urllib3.exceptions.HTTPError as err:  # retries exhausted: timeouts, refused connections, TLS
            reason = getattr(err, "reason", None) or err
            return False, f"{method} {redact_uri(url)} failed after {self.sink.cfg.retries} retries: {reason}", None
        if not 200 <= response.status < 300:
            return False, f"{method} {redact_uri(url)} answered HTTP {response.status}", None
        try:
            return True, "", json.loads(response.data) if response.data else None
        except ValueError:
            return True, "", None


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


class WebhookSink:
    """Event messages to the ``webhook.urls`` from worker threads (see the module docstring). A context manager.

    Args:
        cfg: the ``webhook`` section (``urls`` must not be empty).

    Raises:
        ConfigError: ``token_env`` names an unset variable, or ``ca_file`` cannot be read.
    """

    def __init__(self, cfg: WebhookConfig) -> None:
        if not cfg.urls:
            raise ValueError("WebhookSink needs webhook.urls")
        self.cfg = cfg
        self.headers = {"Content-Type": "application/json", "User-Agent": "emim-stream"}
        if cfg.token_env is not None:
            token = os.environ.get(cfg.token_env)
            if token is None:
                raise ConfigError(f"webhook.token_env: environment variable {cfg.token_env} is not set")
            self.headers["Authorization"] = f"Bearer {token}"
        if cfg.ca_file is not None and not os.access(cfg.ca_file, os.R_OK):
            raise ConfigError(f"webhook.ca_file: {cfg.ca_file!r} cannot be read")
        retry = urllib3.Retry(
            total=cfg.retries,
            allowed_methods=None,  # POST too: a receiver dedupes by the event's id
            status_forcelist=(429, 500, 502, 503, 504),
            backoff_factor=cfg.backoff_s,
            raise_on_status=False,
        )
        self.pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=cfg.timeout_s, read=cfg.timeout_s),
            retries=retry,
            cert_reqs="CERT_REQUIRED",
            ca_certs=cfg.ca_file,
        )
        self.targets = [_Target(url, self) for url in cfg.urls]
        self.closed = False

    def start(self) -> WebhookSink:
        """Start the worker threads."""
        for target in self.targets:
            target.thread.start()
        _log.info("webhook: %s events (%s) to %s", self.cfg.format, ", ".join(self.cfg.phases),
                  ", ".join(t.shown for t in self.targets))  # fmt: skip
        return self

    def send(self, payload: dict[str, Any]) -> bool:
        """Queue an event message payload for every URL; never blocks. False when its phase is not sent."""
        phases = ("start", "end") if self.cfg.format == "frigate" else self.cfg.phases
        if self.closed or payload.get("phase") not in phases:
            return False
        for target in self.targets:
            target.offer(payload)
        return True

    def stats(self) -> dict[str, Any]:
        """``state`` (``failing`` when any URL is), ``sent``, ``dropped``, ``queued`` (all URLs together) and
        ``detail`` (the last problem of a failing URL, empty when none)."""
        failing = [t for t in self.targets if t.state == "failing"]
        return {
            "state": "closed" if self.closed else "failing" if failing else "ok",
            "sent": sum(t.sent for t in self.targets),
            "dropped": sum(t.dropped for t in self.targets),
            "queued": sum(len(t.queue) + t.busy for t in self.targets),
            "detail": failing[0].detail if failing else "",
        }

    def close(self, flush_timeout_s: float = 2.0) -> None:
        """Wait up to ``flush_timeout_s`` for queued events, then stop; what is still queued or being sent is counted
        in ``dropped``. Idempotent."""
        if self.closed:
            return
        for target in self.targets:
            with target.cond:
                target.cond.wait_for(target.idle, flush_timeout_s)
                target.closing = True
                target.dropped += len(target.queue) + target.busy
                target.queue.clear()
                target.busy = False
                target.cond.notify_all()
        self.closed = True
        self.pool.clear()

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
