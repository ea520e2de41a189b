"""The MQTT sink: the pipeline's messages to a broker, off the inference loop.

Topics are ``<prefix>/<box_id>/<camera_id>/<kind>`` (``kind``: ``event``, ``label``, ``status``); the payload is
the same JSON as on ZeroMQ (:mod:`emim_stream.pipeline.comms.messages`), so its ``msg_seq`` tells a subscriber what
it missed.
Status messages are retained (``retain_status``), so a new subscriber sees every camera's last status at once.

:meth:`MqttSink.send` only appends to a bounded queue and returns: the inference loop never waits for the broker.
A worker thread hands queued messages to paho-mqtt (whose own thread does the network I/O) while the broker is
connected, at most :data:`MAX_INFLIGHT` unconfirmed at a time. While the broker is down or unreachable the queue
fills; when it is full the **oldest** message is dropped and counted (``dropped``). paho reconnects with
exponential backoff (``reconnect_min_s`` doubling to ``reconnect_max_s``) and re-sends unconfirmed QoS 1/2
messages, so with QoS >= 1 every message is either delivered to the broker or counted in ``dropped``. With QoS 0
a message written to a connection that breaks before the loss is noticed is gone uncounted (at most once).

The sink reports its state (``connecting``, ``connected``, ``unreachable``, ``reconnecting``, ``refused``,
``rejecting``: connected, but the broker refused every message since, e.g. its access rules forbid the topic,
which MQTT 5 brokers say and MQTT 3.1.1 brokers cannot; ``closed``) in :meth:`MqttSink.stats`, which the runtime
puts in ``status`` messages and metrics. Each state change is logged once (an unreachable broker is not logged at
every retry); passwords never reach a log line or a status.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.config import MqttConfig

__all__ = ["MAX_INFLIGHT", "MqttSink", "default_box_id"]

_log = logging.getLogger(__name__)

MAX_INFLIGHT = 100
"""Messages handed to paho and not yet confirmed (QoS >= 1) or written (QoS 0); more wait in the sink's queue."""
_PROTOCOLS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}


def default_box_id() -> str:
    """This box's id in topics when ``box_id`` is not set: the host name, as one topic level."""
    name = socket.gethostname().split(".")[0] or "box"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class MqttSink:
    """Publishes pipeline messages to an MQTT broker from its own threads (see the module docstring).

    A context manager: entering starts connecting (asynchronously: an unreachable broker does not stop the
    pipeline), leaving flushes for up to ``flush_timeout_s`` and disconnects.

    Args:
        cfg: the ``mqtt`` section (``host`` must be set).
        flush_timeout_s: how long :meth:`close` waits for queued messages while connected.

    Raises:
        ConfigError: ``password_env`` names an unset variable, or a TLS file cannot be used.
    """

    def __init__(self, cfg: MqttConfig, flush_timeout_s: float = 2.0) -> None:
        if cfg.host is None:
            raise ValueError("MqttSink needs mqtt.host")
        self.cfg = cfg
        self.host: str = cfg.host
        self.flush_timeout_s = flush_timeout_s
        self.box_id = cfg.box_id or default_box_id()
        self.client_id = cfg.client_id or f"emim-{self.box_id}"
        self.address = f"{cfg.host}:{cfg.port}"
        self.state = "connecting"
        self.detail = ""
        self.sent = 0
        self.dropped = 0
        self.refused = 0
        self._accepted_since_connect = 0
        self.reconnects = 0
        self._queue: deque[tuple[str, bytes, bool]] = deque()
        self._inflight = 0
        self._connected_before = False
        self._closing = False
        self._cond = threading.Condition()
        self._client = self._make_client()
        self._worker = threading.Thread(target=self._work, name="emim-mqtt", daemon=True)

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=_PROTOCOLS[cfg.protocol])
        if cfg.username is not None:
            client.username_pw_set(cfg.username, self._password())
        if cfg.tls:
            try:
                client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
            except (OSError, ssl.SSLError, ValueError) as err:
                raise ConfigError(f"mqtt: TLS set-up failed: {err}") from None
            client.tls_insecure_set(cfg.tls_insecure)
        # paho waits float seconds between attempts; its type hints say int
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _password(self) -> str | None:
        if self.cfg.password_env is None:
            return self.cfg.password
        value = os.environ.get(self.cfg.password_env)
        if value is None:
            raise ConfigError(f"mqtt.password_env: environment variable {self.cfg.password_env} is not set")
        return value

    def start(self) -> MqttSink:
        """Start connecting (in the background) and the worker thread."""
        tls = " (TLS)" if self.cfg.tls else ""
        _log.info(
            "mqtt: publishing %s to %s%s as client '%s', topics %s",
            ", ".join(self.cfg.kinds), self.address, tls, self.client_id, self.topic("<camera>", "<kind>"),
        )
        self._client.connect_async(self.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        self._worker.start()
        return self

    def topic(self, camera_id: str, kind: str) -> str:
        """``<prefix>/<box_id>/<camera_id>/<kind>``."""
        return f"{self.cfg.prefix}/{self.box_id}/{camera_id}/{kind}"

    def send(self, kind: str, camera_id: str, payload: Mapping[str, Any]) -> bool:
        """Queue a message of ``kind`` for the broker; never blocks.

        Returns:
            False when ``kind`` is not published (``kinds``) or the sink is closed; True when queued (a full
            queue drops its oldest message to make room, counted in ``dropped``).
        """
        if kind not in self.cfg.kinds or self._closing:
            return False
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        retain = kind == "status" and self.cfg.retain_status
        with self._cond:
            if len(self._queue) >= self.cfg.queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((self.topic(camera_id, kind), body, retain))
            self._cond.notify()
        return True

    def stats(self) -> dict[str, Any]:
        """``state``, ``sent`` (confirmed by the broker; written, for QoS 0), ``dropped``, ``refused`` (by the
        broker; also in ``dropped``), ``queued``, ``reconnects`` and ``detail`` (the last problem, empty when none)."""
        with self._cond:
            return {
                "state": self.state,
                "sent": self.sent,
                "dropped": self.dropped,
                "refused": self.refused,
                "queued": len(self._queue) + self._inflight,
                "reconnects": self.reconnects,
                "detail": self.detail,
            }

    def close(self) -> None:
        """Wait up to ``flush_timeout_s`` for queued messages while connected, then disconnect.

        Messages still queued or unconfirmed then are counted in ``dropped``. Idempotent.
        """
        if self.state == "closed":
            return
        with self._cond:
            self._cond.wait_for(
                lambda: not (self._queue or self._inflight) or self.state not in ("connected", "rejecting"),
                self.flush_timeout_s,
            )
            self._closing = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join()
        self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            lost = len(self._queue) + self._inflight
            self.dropped += lost
            self._queue.clear()
            self._inflight = 0
            self.state = "closed"
        if lost:
            _log.warning("mqtt: %d message(s) undelivered to %s at close (counted as dropped)", lost, self.address)

    def __enter__(self) -> MqttSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker and paho callbacks (paho's network thread) -------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._closing
                    or (self._queue and self.state in ("connected", "rejecting") and self._inflight < MAX_INFLIGHT)
                )
                if self._closing:
                    return
                topic, body, retain = self._queue.popleft()
                self._inflight += 1
            info = self._client.publish(topic, body, qos=self.cfg.qos, retain=retain)
            if self.cfg.qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                with self._cond:  # QoS 0 is not kept for a reconnect: the message is lost here
                    self._inflight -= 1
                    self.dropped += 1

    def _set_state(self, state: str, detail: str, level: int) -> None:
        """Change state (with ``_cond`` held); log only when the state or its reason changes."""
        if (state, detail) != (self.state, self.detail):
            _log.log(level, "mqtt: %s", detail)
        self.state, self.detail = state, detail

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if reason_code.is_failure:
                self._set_state(
                    "refused", f"broker {self.address} refused the connection: {reason_code}; retrying", logging.ERROR
                )
                return
            if self._connected_before:
                self.reconnects += 1
            self._connected_before = True
            self._accepted_since_connect = 0
            _log.info("mqtt: connected to %s as '%s'", self.address, self.client_id)
            self.state, self.detail = "connected", ""
            self._cond.notify_all()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        with self._cond:
            if self.state in ("connecting", "unreachable"):
                tls = " (or its TLS certificate is not trusted: check ca_file)" if self.cfg.tls else ""
                self._set_state(
                    "unreachable",
                    f"broker {self.address} unreachable{tls}; retrying every {self.cfg.reconnect_min_s:g}.."
                    f"{self.cfg.reconnect_max_s:g} s, keeping up to {self.cfg.queue_size} messages",
                    logging.WARNING,
                )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if self._closing or self.state not in ("connected", "rejecting"):
                return
            self._set_state(
                "reconnecting",
                f"connection to {self.address} lost ({reason_code}); reconnecting, keeping up to "
                f"{self.cfg.queue_size} messages",
                logging.WARNING,
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        with self._cond:
            self._inflight -= 1
            if reason_code.is_failure:
                self.dropped += 1
                self.refused += 1
                if self._accepted_since_connect == 0:
                    self._set_state(
                        "rejecting",
                        f"broker {self.address} refuses every message ({reason_code}): check its access rules "
                        f"for {self.topic('<camera>', '<kind>')}",
                        logging.ERROR,
                    )
                else:
                    self.detail = f"broker refused a message: {reason_code}"
            else:
                self.sent += 1
                self._accepted_since_connect += 1
                if self.state == "rejecting":
                    self.state, self.detail = "connected", ""
            self._cond.notify_all()
