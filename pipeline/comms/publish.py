"""ZeroMQ PUB side of the label and status streams.

:class:`Publisher` binds one PUB socket and sends ``[topic, JSON payload]`` multipart messages (the schema is
in :mod:`emim_stream.pipeline.comms.messages`). Sends never block the inference loop: the queue to each subscriber is
bounded
(``send_hwm`` messages) and a send that cannot be queued is dropped and counted. Each topic has its own message
number ``msg_seq``, inserted into the payload, so subscribers see every loss as a gap.

Only loopback (``tcp://127.0.0.1``, ``localhost``, ``[::1]``), ``ipc://`` and ``inproc://`` endpoints are bound by
default; any other TCP address needs ``allow_remote=True`` (and should use CURVE). ``curve=CurveServer(...)``
(:mod:`emim_stream.pipeline.comms.curve`) encrypts the stream and admits only authorised subscribers: the publisher
runs a ZAP handler
in its context that accepts the listed client public keys; a subscriber without keys or with an unknown key
completes no handshake and receives nothing. The lower-level ``curve_secret_key``/``curve_public_key`` pair only
encrypts; authentication is then up to whoever owns the context (without a ZAP handler any client that knows the
server's public key is admitted).
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Mapping
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from emim_stream.pipeline.comms.curve import CurveServer, start_authenticator
from emim_stream.pipeline.endpoints import is_loopback, is_remote_tcp, port_problem
from emim_stream.pipeline.errors import PublishError

__all__ = ["CurveServer", "Publisher", "SlowSubscriberPolicy", "check_bind_endpoint"]

_LOG = logging.getLogger(__name__)

_LOCAL_SCHEMES = ("ipc://", "inproc://")


class SlowSubscriberPolicy(str, enum.Enum):
    """What a send does when a matching subscriber's queue already holds ``send_hwm`` messages."""

    DROP_MESSAGE = "drop_message"
    """The message goes to no subscriber; ``send`` returns False and counts it (ZMQ_XPUB_NODROP). The loss is
    visible at both ends, but one stalled subscriber of a topic stops that topic for all of its subscribers."""
    DROP_FOR_SLOW = "drop_for_slow"
    """ZeroMQ's default: only the full subscriber misses the message (it sees a ``msg_seq`` gap); ``send``
    returns True and the publisher cannot count the loss."""


def check_bind_endpoint(endpoint: str, allow_remote: bool = False) -> None:
    """Refuse an endpoint that would expose the stream beyond this host unless ``allow_remote``.

    Raises:
        PublishError: unsupported scheme, malformed TCP endpoint, or a non-loopback TCP bind not allowed.
    """
    if endpoint.startswith(_LOCAL_SCHEMES):
        return
    if not endpoint.startswith("tcp://"):
        raise PublishError(
            f"publish endpoint {endpoint!r} is not supported; use tcp://127.0.0.1:PORT, ipc://PATH or inproc://NAME"
        )
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host or not port:
        raise PublishError(f"publish endpoint {endpoint!r} is malformed; expected tcp://HOST:PORT")
    problem = port_problem(port)
    if problem:
        raise PublishError(f"publish endpoint {endpoint!r}: {problem}")
    if allow_remote or is_loopback(host):
        return
    raise PublishError(
        f"publish endpoint {endpoint!r} is not a loopback address; binding it exposes the label stream to the "
        "network. Use tcp://127.0.0.1:PORT, or allow remote subscribers explicitly (allow_remote) and consider CURVE"
    )


class Publisher:
    """A ZeroMQ PUB socket bound to ``endpoint`` that never blocks its caller.

    Counters: ``sent`` and ``dropped`` (messages not queued because a subscriber's queue was full, only
    counted under :attr:`SlowSubscriberPolicy.DROP_MESSAGE`). A context manager; ``close()`` waits at most
    ``linger_ms`` for queued messages.

    Args:
        endpoint: where to bind, e.g. ``tcp://127.0.0.1:5556`` (port ``*`` = any free port, see
            :attr:`endpoint`), ``ipc:///run/emim/labels.sock``.
        send_hwm: messages queued per subscriber before sends drop.
        linger_ms: how long ``close()`` may spend delivering queued messages.
        allow_remote: allow binding a non-loopback TCP address.
        slow_subscriber: see :class:`SlowSubscriberPolicy`.
        curve: make this a CURVE server that admits only the authorised client keys (starts a ZAP handler in
            the context, stopped by ``close()``).
        curve_secret_key, curve_public_key: server key pair (Z85, 40 bytes each) for encryption without
            authentication by this publisher; both or neither, and not with ``curve``.
        context: ZeroMQ context to use; default a private one, terminated by ``close()``. With ``curve`` it must
            not already run a ZAP handler.

    Raises:
        PublishError: the endpoint is refused or cannot be bound, the CURVE options are incomplete, conflicting
            or unsupported by libzmq, or the context already has a ZAP handler.
        ConfigError: a ``curve`` key file or the authorised-clients directory is missing, malformed or unsafe.
    """

    def __init__(
        self,
        endpoint: str,
        send_hwm: int = 100,
        linger_ms: int = 200,
        *,
        allow_remote: bool = False,
        slow_subscriber: SlowSubscriberPolicy = SlowSubscriberPolicy.DROP_MESSAGE,
        curve_secret_key: bytes | None = None,
        curve_public_key: bytes | None = None,
        curve: CurveServer | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        check_bind_endpoint(endpoint, allow_remote)
        if (curve_secret_key is None) != (curve_public_key is None):
            raise PublishError("CURVE needs both curve_secret_key and curve_public_key (or neither)")
        if curve is not None and curve_secret_key is not None:
            raise PublishError("pass either curve=CurveServer(...) or curve_secret_key/curve_public_key, not both")
        client_keys: frozenset[bytes] = frozenset()
        if curve is not None:
            server_keys, client_keys = curve.load()
            curve_secret_key, curve_public_key = server_keys.secret_key, server_keys.public_key
        if curve_secret_key is not None and not zmq.has("curve"):
            raise PublishError(f"CURVE was asked for but this libzmq {zmq.zmq_version()} is built without it")
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.PUB)
        self._authenticator: ThreadAuthenticator | None = None
        self._msg_seq: dict[bytes, int] = {}
        self.sent = 0
        self.dropped = 0
        try:
            self._socket.sndhwm = send_hwm
            self._socket.linger = linger_ms
            self._socket.setsockopt(zmq.XPUB_NODROP, int(slow_subscriber is SlowSubscriberPolicy.DROP_MESSAGE))
            if curve is not None:
                self._authenticator = start_authenticator(self._context, client_keys)
            if curve_secret_key is not None:
                self._socket.curve_secretkey = curve_secret_key
                self._socket.curve_publickey = curve_public_key
                self._socket.curve_server = True  # must come before bind
            self._socket.bind(endpoint)
        except PublishError:  # the context already has a ZAP handler
            self.close()
            raise
        except zmq.ZMQError as err:
            self.close()
            raise PublishError(f"cannot bind publisher to {endpoint!r}: {err}") from err
        self._endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if curve is not None:
            security = f"CURVE, {len(client_keys)} authorised client key(s)"
        else:
            security = "CURVE, clients not authenticated here" if curve_secret_key is not None else "no encryption"
        _LOG.info("publishing on %s (send_hwm=%d, %s, %s)", self._endpoint, send_hwm, slow_subscriber.value, security)
        if curve_secret_key is None and is_remote_tcp(endpoint):
            _LOG.warning("publishing on %s without CURVE: anyone who reaches it can read the labels", self._endpoint)

    @property
    def endpoint(self) -> str:
        """The bound endpoint, with a wildcard port resolved (e.g. ``tcp://127.0.0.1:40123``)."""
        return self._endpoint

    def next_msg_seq(self, topic: bytes) -> int:
        """The ``msg_seq`` the next message on ``topic`` gets."""
        return self._msg_seq.get(topic, 0)

    def send(self, topic: bytes, payload: Mapping[str, Any]) -> bool:
        """Send ``[topic, JSON(payload + msg_seq)]`` without blocking.

        The caller's payload is not modified; the sent copy carries the topic's next ``msg_seq`` (numbers are
        used up by dropped messages too, so subscribers see the gap).

        Args:
            topic: e.g. ``label_topic(camera_id)``.
            payload: JSON-serialisable mapping (no NaN/Infinity), e.g. ``LabelMessage.to_payload()``.

        Returns:
            True if queued, False if dropped (counted in ``dropped``).

        Raises:
            ValueError, TypeError: the payload is not JSON-serialisable (a caller bug).
        """
        msg_seq = self._msg_seq.get(topic, 0)
        self._msg_seq[topic] = msg_seq + 1
        body = json.dumps({**payload, "msg_seq": msg_seq}, separators=(",", ":"), allow_nan=False).encode()
        try:
            self._socket.send_multipart([topic, body], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    @property
    def authenticates_clients(self) -> bool:
        """True when this publisher's ZAP handler admits only authorised CURVE clients."""
        return self._authenticator is not None

    def close(self) -> None:
        """Close the socket (queued messages get at most ``linger_ms``), the authenticator and a private context.

        Idempotent.
        """
        if not self._socket.closed:
            self._socket.close()
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
