"""The MQTT sink: the pipeline's messages to a broker, off the inference loop.

Topics (:func:`mqtt_topic`) are ``<prefix>/<box_id>/<camera_id>/<kind>`` for a camera's ``event``, ``label``,
``status``, ``action`` and ``snapshot`` messages and ``<prefix>/<box_id>/stats`` for the box's stats. The payload of
the JSON kinds is the same JSON as on ZeroMQ (:mod:`emim_stream.pipeline.comms.messages`), so its ``msg_seq`` tells a
subscriber what it missed; ``action`` is a camera's newest label message, retained and sent only when the top label
changes and with each heartbeat; ``snapshot`` is a JPEG (raw bytes), retained. Status messages are retained too
(``retain_status``), so a new subscriber sees every camera's last state at once.

**Availability** (Frigate's ``available`` convention): ``<prefix>/<box_id>/available`` is ``online`` (retained) from
every connect on, ``stopped`` (retained) after a clean shutdown, and ``offline`` (retained) when the box dies or
loses the network: the sink registers that as its MQTT last will, which the broker publishes when the connection
ends without a DISCONNECT (at once when the process dies; after 1.5 x ``keepalive_s`` of silence when the box or
its network hangs). A retained camera ``status`` is current only while ``available`` is ``online``.

An :class:`Announcement` (e.g. the Home Assistant discovery configs of
:mod:`emim_stream.pipeline.comms.homeassistant`) is republished, retained, on every connect; first the sink
subscribes to its ``topic_filter``, collects the retained messages the broker holds there (it knows it has them all
when a message it sends itself to ``<prefix>/<box_id>/sync`` comes back) and clears, with an empty retained message,
every one the announcement no longer contains: what a camera removed from the config announced goes away.

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
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.config import MqttConfig

__all__ = ["MAX_INFLIGHT", "Announcement", "MqttSink", "availability_topic", "default_box_id", "mqtt_topic"]

_log = logging.getLogger(__name__)

MAX_INFLIGHT = 100
"""Messages handed to paho and not yet confirmed (QoS >= 1) or written (QoS 0); more wait in the sink's queue."""
_PROTOCOLS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}
_RETAINED_KINDS = ("action", "snapshot")
_SYNC_TIMEOUT_S = 15.0
"""An announcement's read-back gives up clearing stale topics after this long (a loaded box, a distant broker)."""
ONLINE, OFFLINE, STOPPED = b"online", b"offline", b"stopped"


def default_box_id() -> str:
    """This box's id in topics when ``box_id`` is not set: the host name, as one topic level."""
    name = socket.gethostname().split(".")[0] or "box"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def mqtt_topic(cfg: MqttConfig, box_id: str, camera_id: str | None, kind: str) -> str:
    """``<prefix>/<box_id>/<camera_id>/<kind>``, or ``<prefix>/<box_id>/<kind>`` for the box itself."""
    return f"{cfg.prefix}/{box_id}/{kind}" if camera_id is None else f"{cfg.prefix}/{box_id}/{camera_id}/{kind}"


def availability_topic(cfg: MqttConfig, box_id: str) -> str:
    """``<prefix>/<box_id>/available``: ``online``, ``offline`` (the last will) or ``stopped``."""
    return mqtt_topic(cfg, box_id, None, "available")


@dataclass(frozen=True)
class Announcement:
    """Retained messages that describe the box, republished on every connect; retained messages under
    ``topic_filter`` that are not among ``messages`` are cleared (see the module docstring)."""

    topic_filter: str
    messages: Mapping[str, bytes]


@dataclass
class _Sync:
    """An announcement in progress: the retained topics read back so far, until ``nonce`` comes back."""

    announcement: Announcement
    nonce: bytes
    timer: threading.Timer
    seen: set[str]


class MqttSink:
    """Publishes pipeline messages to an MQTT broker from its own threads (see the module docstring).

    A context manager: entering starts connecting (asynchronously: an unreachable broker does not stop the
    pipeline), leaving flushes for up to ``flush_timeout_s`` and disconnects.

    Args:
        cfg: the ``mqtt`` section (``host`` must be set).
        flush_timeout_s: how long :meth:`close` waits for queued messages while connected.
        announcement: retained messages to publish on every connect (Home Assistant discovery), or None.

    ``sent`` and ``dropped`` count the pipeline's messages (:meth:`send`), not availability or announcements.

    Raises:
        ConfigError: ``password_env`` names an unset variable, or a TLS file cannot be used.
    """

    def __init__(
        self, cfg: MqttConfig, flush_timeout_s: float = 2.0, announcement: Announcement | None = None
    ) -> None:
        if cfg.host is None:
            raise ValueError("MqttSink needs mqtt.host")
        self.cfg = cfg
        self.host: str = cfg.host
        self.flush_timeout_s = flush_timeout_s
        self.announcement = announcement
        self.box_id = cfg.box_id or default_box_id()
        self.client_id = cfg.client_id or f"emim-{self.box_id}"
        self.address = f"{cfg.host}:{cfg.port}"
        self.availability_topic = availability_topic(cfg, self.box_id)
        self.state = "connecting"
        self.detail = ""
        self.sent = 0
        self.dropped = 0
        self.refused = 0
        self._accepted_since_connect = 0
        self.reconnects = 0
        self.announced = 0
        """Retained announcement topics published at the last connect."""
        self.cleared = 0
        """Retained announcement topics cleared (announced before, not any more)."""
        self._sync_topic = mqtt_topic(cfg, self.box_id, None, "sync")
        self._sync: _Sync | None = None  # an announcement reading back the retained topics
        self._queue: deque[tuple[str, bytes, bool]] = deque()
        self._inflight = 0
        self._mids: dict[int, bool] = {}  # paho message id -> counted (a pipeline message) or not (availability, ...)
        self._early: dict[int, Any] = {}  # message id -> reason code, confirmed before its publisher registered it
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
        client.will_set(self.availability_topic, OFFLINE, qos=cfg.qos, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
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

    def topic(self, camera_id: str | None, kind: str) -> str:
        """``<prefix>/<box_id>/<camera_id>/<kind>`` (``<prefix>/<box_id>/<kind>`` for the box)."""
        return mqtt_topic(self.cfg, self.box_id, camera_id, kind)

    def send(self, kind: str, camera_id: str | None, payload: Mapping[str, Any] | bytes) -> bool:
        """Queue a message of ``kind`` for the broker; never blocks.

        Args:
            kind: the topic's last level, one of ``mqtt.kinds`` to be sent.
            camera_id: the camera, or None for a message about the box (``stats``).
            payload: a JSON-ready mapping, or the bytes to send (a snapshot's JPEG).

        Returns:
            False when ``kind`` is not published (``kinds``) or the sink is closed; True when queued (a full
            queue drops its oldest message to make room, counted in ``dropped``).
        """
        if kind not in self.cfg.kinds or self._closing:
            return False
        if not isinstance(payload, bytes):
            payload = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        retain = kind in _RETAINED_KINDS or (kind == "status" and self.cfg.retain_status)
        with self._cond:
            if len(self._queue) >= self.cfg.queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((self.topic(camera_id, kind), payload, retain))
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
        """Wait up to ``flush_timeout_s`` for queued messages while connected, publish ``stopped`` on the
        availability topic, then disconnect (so the broker does not send the last will).

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
            if self._sync is not None:
                self._sync.timer.cancel()
                self._sync = None
        if self._worker.is_alive():
            self._worker.join()
        if self.state == "connected":
            info = self._publish(self.availability_topic, STOPPED, retain=True, counted=False)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                info.wait_for_publish(self.flush_timeout_s)
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
            self._publish(topic, body, retain)

    def _publish(self, topic: str, body: bytes, retain: bool, counted: bool = True) -> mqtt.MQTTMessageInfo:
        """Hand one message to paho; a ``counted`` one (the pipeline's) is in flight until ``_on_publish`` confirms
        it. Never called with ``_cond`` held: paho calls ``_on_publish`` with its own lock held, which ``publish``
        takes too; so ``_on_publish`` may run before the message id is registered here (``_early``)."""
        with self._cond:
            self._inflight += counted
        info = self._client.publish(topic, body, qos=self.cfg.qos, retain=retain)
        with self._cond:
            if self.cfg.qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if counted:  # QoS 0 is not kept for a reconnect: the message is lost here
                    self._inflight -= 1
                    self.dropped += 1
            elif info.mid in self._early:
                reason_code = self._early.pop(info.mid)
                if counted:
                    self._confirmed(reason_code)
            else:
                self._mids[info.mid] = counted
        return info

    def _confirmed(self, reason_code: Any) -> None:
        """The broker confirmed (or refused) one of the pipeline's messages (``_cond`` held)."""
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
        self._publish(self.availability_topic, ONLINE, retain=True, counted=False)
        if self.announcement is not None:
            self._start_announcing(self.announcement)

    # -- announcements: read back what the broker retains, clear the stale topics, publish the current ones -------

    def _start_announcing(self, announcement: Announcement) -> None:
        timer = threading.Timer(_SYNC_TIMEOUT_S, self._finish_announcing, kwargs={"complete": False})
        timer.daemon = True
        with self._cond:
            if self._sync is not None:
                self._sync.timer.cancel()
            self._sync = _Sync(announcement, uuid.uuid4().hex.encode(), timer, set())
        timer.start()
        self._client.subscribe([(announcement.topic_filter, 1), (self._sync_topic, 1)])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            sync = self._sync
        if sync is None:
            return
        if any(code.is_failure for code in reason_codes):
            self._finish_announcing(complete=False)
        else:
            self._publish(self._sync_topic, sync.nonce, retain=False, counted=False)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            sync = self._sync
            if sync is None:
                return
            if message.topic != self._sync_topic:
                if message.retain and message.payload:
                    sync.seen.add(message.topic)
                return
        if message.payload == sync.nonce:
            self._finish_announcing(complete=True)

    def _finish_announcing(self, complete: bool) -> None:
        """Publish the announcement; with ``complete`` (every retained topic under the filter was read back) clear
        those it no longer contains first."""
        with self._cond:
            sync, self._sync = self._sync, None
            if sync is None or self._closing:
                return
        sync.timer.cancel()
        announcement = sync.announcement
        self._client.unsubscribe([announcement.topic_filter, self._sync_topic])
        stale = sorted(sync.seen - set(announcement.messages)) if complete else []
        for topic in stale:
            self._publish(topic, b"", retain=True, counted=False)
        for topic, body in announcement.messages.items():
            self._publish(topic, body, retain=True, counted=False)
        with self._cond:
            self.cleared += len(stale)
            self.announced = len(announcement.messages)
        if not complete:
            _log.warning(
                "mqtt: could not read back the retained topics under %s (no subscribe permission?); published %d, "
                "cleared none", announcement.topic_filter, len(announcement.messages),
            )  # fmt: skip
        else:
            _log.info(
                "mqtt: announced %d retained topic(s) under %s, cleared %d stale",
                len(announcement.messages), announcement.topic_filter, len(stale),
            )  # fmt: skip

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
            counted = self._mids.pop(mid, None)
            if counted is None:
                self._early[mid] = reason_code
            elif counted:
                self._confirmed(reason_code)
