"""ZeroMQ SUB side of the label and status streams: receive, parse, detect loss.

:class:`Subscriber` connects to a :class:`emim_stream.pipeline.comms.publish.Publisher` and yields :class:`Received`
records.
Loss is detected from the per-topic ``msg_seq`` (a gap counts in ``lost[topic]``). Frames larger than
``max_msg_bytes`` are refused by the socket itself (ZMQ_MAXMSGSIZE), so they never reach memory. libzmq treats
such a frame as a protocol error and closes the connection *without* reconnecting (libzmq 4.3); the subscriber
watches its socket's DISCONNECTED events and, when libzmq does not start reconnecting by itself within
``_STRANDED_S``, reads what is queued and connects again itself, so the oversize message and any sent during the
reconnect show up as a ``msg_seq`` gap (and in ``disconnects``). It never disconnects a pipe that may still hold
messages: libzmq aborts the process when a multipart message is read from a pipe disconnected under it
(``Assertion failed: !_more (src/fq.cpp)``, libzmq issues 2163 and 3485). With ``curve=CurveClient(...)``
(:mod:`emim_stream.pipeline.comms.curve`) the connection is encrypted and authenticated; a handshake the publisher
refuses (a key it
does not authorise, a missing or wrong server key, CURVE on one side only) is counted in ``handshake_failures``
and logged with the likely cause; no message ever arrives over such a connection. Payloads that are not a JSON
object with an integer ``msg_seq`` in 0..2^63-1 (also JSON nested too deeply to parse, or with NaN or infinities)
are counted in ``malformed`` and skipped, and so are payloads that fail the schema of
:mod:`emim_stream.pipeline.comms.messages` (``parse_payload``); the parsed message comes with each
:class:`Received`. A message is parsed before its ``msg_seq`` is tracked: one that fails never counts as lost
messages or a publisher restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.curve import CurveClient
from emim_stream.pipeline.comms.messages import MessageError, parse_payload
from emim_stream.pipeline.errors import PublishError

if TYPE_CHECKING:
    from emim_stream.pipeline.comms.messages import Message

__all__ = ["CurveClient", "Received", "Subscriber"]

_LOG = logging.getLogger(__name__)

_MAX_MSG_SEQ = 2**63 - 1  # the publisher's counter is an int64 in every other implementation
_MAX_MSG_BYTES = 1 << 30
_MAX_HWM = 1_000_000
_STRANDED_S = 0.5  # after a lost connection: libzmq announces its own reconnect (CONNECT_RETRIED) well within this
_RECONNECTING_EVENTS = zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECTED
_MONITORED_EVENTS = (
    zmq.EVENT_DISCONNECTED
    | _RECONNECTING_EVENTS
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def _refuse_constant(name: str) -> float:
    """``json.loads`` hook: NaN and infinities are not JSON (RFC 8259); the publisher never writes them."""
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True, slots=True)
class Received:
    """One message as received: ``topic`` (e.g. ``labels/cam1/``), the decoded JSON ``payload``, the receipt
    time ``recv_mono_ns`` (CLOCK_MONOTONIC) and ``recv_wall_ns`` (CLOCK_REALTIME), ``size`` in bytes, and the
    parsed ``message``."""

    topic: str
    payload: dict[str, Any]
    recv_mono_ns: int
    recv_wall_ns: int
    size: int
    message: Message

    @property
    def msg_seq(self) -> int:
        return int(self.payload["msg_seq"])


class Subscriber:
    """A ZeroMQ SUB socket connected to ``endpoint``, subscribed to topic prefixes.

    Counters: ``received`` (valid messages), ``lost[topic]`` (messages missing from ``msg_seq`` gaps),
    ``restarts[topic]`` (``msg_seq`` went back: the publisher restarted), ``malformed`` (not a JSON object with
    an integer ``msg_seq`` in 0..2^63-1, not two frames, or not a valid message of the schema), ``disconnects``
    (an established connection to the publisher lost: publisher gone or an oversize message),
    ``handshake_failures`` (connections the publisher or this side refused: keys, or CURVE on one side only).
    A context manager; closing never waits (LINGER 0).

    Args:
        endpoint: the publisher's endpoint, e.g. ``tcp://127.0.0.1:5556``.
        topics: topic prefixes (bytes or str), e.g. ``(b"labels/",)`` or ``(b"labels/cam1/", b"status/cam1/")``;
            ``b""`` = everything.
        timeout_s: default wait of :meth:`recv`.
        max_msg_bytes: largest frame accepted; bigger ones are refused by the socket.
        rcv_hwm: messages queued on the subscriber's side before ZeroMQ drops.
        curve: this subscriber's key pair and the publisher's public key, for a CURVE publisher.
        context: ZeroMQ context; default a private one, terminated by ``close()``.

    Raises:
        PublishError: the endpoint cannot be connected (malformed), or libzmq lacks CURVE.
        ConfigError: ``max_msg_bytes`` outside 1..2^30 or ``rcv_hwm`` outside 1..1000000; a ``curve`` key file
            is missing, malformed or readable by others.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[bytes | str] = (b"labels/",),
        timeout_s: float = 5.0,
        max_msg_bytes: int = 1 << 20,
        *,
        rcv_hwm: int = 1000,
        curve: CurveClient | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        for name, value, high in (("max_msg_bytes", max_msg_bytes, _MAX_MSG_BYTES), ("rcv_hwm", rcv_hwm, _MAX_HWM)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ConfigError(f"subscriber {name} must be an integer in 1..{high}, got {value!r}")
        keys = None
        if curve is not None:
            if not zmq.has("curve"):
                raise PublishError(f"CURVE was asked for but this libzmq {zmq.zmq_version()} is built without it")
            keys = curve.load()
        self.timeout_s = timeout_s
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.SUB)
        self._last_seq: dict[str, int] = {}
        self.lost: dict[str, int] = {}
        self.restarts: dict[str, int] = {}
        self.received = 0
        self.malformed = 0
        self.disconnects = 0
        self.handshake_failures = 0
        self.endpoint = endpoint
        self._monitor: zmq.Socket[bytes] | None = None
        self._connected = False  # a handshake succeeded and that connection has not been lost since
        self._stranded_at: float | None = None  # lost and libzmq has not (yet) said it reconnects
        self._queued: deque[Received] = deque()  # read off the socket before connecting again
        try:
            self._socket.linger = 0
            self._socket.rcvhwm = rcv_hwm
            self._socket.maxmsgsize = max_msg_bytes
            if keys is not None:
                client_keys, server_public_key = keys
                self._socket.curve_serverkey = server_public_key
                self._socket.curve_publickey = client_keys.public_key
                self._socket.curve_secretkey = client_keys.secret_key
            for topic in topics:
                self._socket.subscribe(topic.encode() if isinstance(topic, str) else topic)
            self._monitor = self._socket.get_monitor_socket(_MONITORED_EVENTS)
            self._socket.connect(endpoint)
        except zmq.ZMQError as err:
            self.close()
            raise PublishError(f"cannot connect subscriber to {endpoint!r}: {err}") from err
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def recv(self, timeout_s: float | None = None) -> Received | None:
        """The next valid message, or None if none arrives within ``timeout_s`` (default ``self.timeout_s``).

        Malformed messages are counted and skipped (they do not end the wait).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            if self._queued:
                return self._queued.popleft()
            now = time.monotonic()
            remaining_ms = max(0, round((deadline - now) * 1000))
            poll_ms = remaining_ms
            if self._stranded_at is not None:
                poll_ms = min(poll_ms, max(0, round((self._stranded_at + _STRANDED_S - now) * 1000)))
            ready = dict(self._poller.poll(poll_ms))
            if self._monitor in ready:
                self._on_monitor_event()
            if self._socket in ready:
                received = self._decode(self._socket.recv_multipart(zmq.NOBLOCK))
                if received is not None:
                    return received
            if self._stranded_at is not None and time.monotonic() >= self._stranded_at + _STRANDED_S:
                self._reconnect()
            if remaining_ms == 0 and not self._queued:
                return None

    def _on_monitor_event(self) -> None:
        """Track the connection; note a lost one that libzmq does not reconnect by itself.

        libzmq does not reconnect after a protocol error such as an oversize frame, so :meth:`_reconnect` does
        (when libzmq has not announced a reconnect within ``_STRANDED_S``). A handshake that failed is left to
        libzmq (it retries a protocol mismatch with its backoff and gives up after an authentication refusal):
        reconnecting at once would only repeat the refusal.
        """
        monitor = self._monitor
        while monitor is not None and monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected = True
                self._stranded_at = None
            elif event & _RECONNECTING_EVENTS:
                self._stranded_at = None  # libzmq reconnects by itself
            elif event == zmq.EVENT_DISCONNECTED:
                if not self._connected:
                    continue  # the end of a refused handshake, already counted
                self._connected = False
                self.disconnects += 1
                self._stranded_at = time.monotonic()
                _LOG.info("disconnected from %s; reconnecting", self.endpoint)
            else:
                self._on_handshake_failure(event)

    def _reconnect(self) -> None:
        """Connect again after a connection libzmq gave up, once everything queued has been read off the socket."""
        self._stranded_at = None
        while self._socket.poll(0, zmq.POLLIN):
            received = self._decode(self._socket.recv_multipart(zmq.NOBLOCK))
            if received is not None:
                self._queued.append(received)
        with contextlib.suppress(zmq.ZMQError):  # already gone after a protocol error
            self._socket.disconnect(self.endpoint)
        self._socket.connect(self.endpoint)

    def _on_handshake_failure(self, event: int) -> None:
        self.handshake_failures += 1
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            cause = "the publisher refused this subscriber's CURVE key (not in its authorised clients)"
        else:
            cause = "security mismatch: CURVE on one side only, or a wrong server public key"
        # the first time a warning; libzmq retries mismatches every ~0.1 s, so later ones are debug lines
        level = logging.WARNING if self.handshake_failures == 1 else logging.DEBUG
        _LOG.log(level, "handshake with %s failed: %s", self.endpoint, cause)

    def _decode(self, frames: list[bytes]) -> Received | None:
        recv_mono_ns, recv_wall_ns = time.monotonic_ns(), time.time_ns()
        try:
            topic_bytes, body = frames
            topic = topic_bytes.decode()
            payload = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):  # frame count, bad UTF-8, NaN, bad or deep JSON
            payload = None
        msg_seq = payload.get("msg_seq") if isinstance(payload, dict) else None
        if type(msg_seq) is not int or not 0 <= msg_seq <= _MAX_MSG_SEQ:
            self._skip(f"{len(frames)} frame(s) without a finite JSON object with a valid msg_seq")
            return None
        try:
            message = parse_payload(payload)
        except MessageError as err:
            self._skip(f"{topic} #{msg_seq}: {err}")
            return None
        self._track(topic, msg_seq)  # only messages that parsed enter loss accounting
        self.received += 1
        return Received(topic, payload, recv_mono_ns, recv_wall_ns, len(body), message)

    def _skip(self, why: str) -> None:
        self.malformed += 1
        _LOG.debug("skipped a malformed message: %s", why)

    def _track(self, topic: str, msg_seq: int) -> None:
        last = self._last_seq.get(topic)
        self._last_seq[topic] = msg_seq
        if last is None:  # first message of this topic: joined mid-stream, nothing lost yet
            self.lost.setdefault(topic, 0)
        elif msg_seq > last + 1:
            self.lost[topic] += msg_seq - last - 1
            _LOG.debug("%s: %d message(s) lost before msg_seq %d", topic, msg_seq - last - 1, msg_seq)
        elif msg_seq <= last:
            self.restarts[topic] = self.restarts.get(topic, 0) + 1
            _LOG.info("%s: msg_seq went from %d to %d; the publisher restarted", topic, last, msg_seq)

    def iter_messages(self, count: int | None = None, total_timeout_s: float | None = None) -> Iterator[Received]:
        """Yield messages until ``count`` have arrived or ``total_timeout_s`` has passed (None: no limit).

        With neither limit it runs until the caller stops iterating.
        """
        deadline = None if total_timeout_s is None else time.monotonic() + total_timeout_s
        n = 0
        while count is None or n < count:
            wait_s = self.timeout_s if deadline is None else max(0.0, deadline - time.monotonic())
            received = self.recv(wait_s)
            if received is not None:
                n += 1
                yield received
            elif deadline is not None:
                return

    def __iter__(self) -> Iterator[Received]:
        """Messages until none arrives for ``timeout_s``."""
        while (received := self.recv()) is not None:
            yield received

    @property
    def total_lost(self) -> int:
        return sum(self.lost.values())

    def close(self) -> None:
        """Close the socket at once and a private context. Idempotent."""
        if self._monitor is not None and not self._monitor.closed:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
        if not self._socket.closed:
            self._socket.close(linger=0)
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
