"""A ZeroMQ relay that merges the label/status streams of several pipelines for their subscribers.

:class:`Relay` is ZeroMQ's own proxy (``zmq.proxy_steerable``) between an XSUB socket connected to every
upstream publisher and an XPUB socket bound where subscribers connect. Subscriptions travel upstream through
it, so each pipeline sends only the topics somebody asked for; messages pass unchanged (topics are
``labels/<camera_id>/``: camera ids must be unique across the merged pipelines, and each topic keeps its own
``msg_seq``, so subscribers still see losses as gaps). A subscriber whose queue is full misses messages (ZeroMQ's
default for XPUB; the proxy never blocks on it).

The proxy runs in a thread; the sockets are created, bound and connected by the caller's thread first, so a bad
endpoint raises at once. A PAIR control socket asks the proxy for its counters (``STATISTICS``) and ends it
(``TERMINATE``); use one relay from one thread.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import zmq

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.publish import check_bind_endpoint
from emim_stream.pipeline.endpoints import is_remote_tcp
from emim_stream.pipeline.errors import PublishError

__all__ = ["Relay", "RelayStats"]

_LOG = logging.getLogger(__name__)
_CONNECT_SCHEMES = ("tcp://", "ipc://", "inproc://")
MAX_HWM = 1_000_000
"""Upper bound of ``send_hwm`` / ``rcv_hwm`` (messages)."""
_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class RelayStats:
    """Counters of the proxy since it started: ``frames``/``bytes`` received from the pipelines (libzmq counts
    message parts: a label message is 2 frames) and ``subscriptions`` (subscribe/unsubscribe messages from
    subscribers)."""

    frames: int
    bytes: int
    subscriptions: int


class Relay:
    """XSUB (connected to ``upstream``) -> XPUB (bound at ``listen``) proxy in a background thread.

    A context manager; :meth:`close` ends the proxy and closes the sockets at once (LINGER 0).

    Args:
        listen: where subscribers connect, e.g. ``tcp://127.0.0.1:5560`` (port ``*``: any free one, see
            :attr:`endpoint`); loopback, ``ipc://`` or ``inproc://`` unless ``allow_remote``.
        upstream: the pipelines' publish endpoints, e.g. ``["tcp://10.0.0.5:5556", "ipc:///run/emim/b.sock"]``.
        allow_remote: allow ``listen`` on a non-loopback address.
        send_hwm: messages queued per subscriber before that subscriber misses messages.
        rcv_hwm: messages queued per upstream pipeline.
        context: ZeroMQ context; default a private one, terminated by :meth:`close`.

    A remote ``listen`` (``allow_remote``) logs a warning: the relay has no CURVE, anyone who reaches it reads
    the streams.

    Raises:
        PublishError: no upstream, an endpoint refused or malformed, or ``listen`` cannot be bound.
        ConfigError: ``send_hwm`` or ``rcv_hwm`` outside 1..1000000.
    """

    def __init__(
        self,
        listen: str,
        upstream: Sequence[str],
        *,
        allow_remote: bool = False,
        send_hwm: int = 1000,
        rcv_hwm: int = 1000,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if not upstream:
            raise PublishError("a relay needs at least one upstream endpoint to connect to")
        for endpoint in upstream:
            if not endpoint.startswith(_CONNECT_SCHEMES):
                raise PublishError(
                    f"upstream endpoint {endpoint!r} is not supported; use tcp://HOST:PORT, ipc://PATH or inproc://NAME"
                )
        for name, hwm in (("send_hwm", send_hwm), ("rcv_hwm", rcv_hwm)):
            if isinstance(hwm, bool) or not isinstance(hwm, int) or not 1 <= hwm <= MAX_HWM:
                raise ConfigError(f"relay {name} must be an integer in 1..{MAX_HWM}, got {hwm!r}")
        check_bind_endpoint(listen, allow_remote)
        self.upstream = tuple(upstream)
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._sockets: list[zmq.Socket[bytes]] = []
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        """Why the proxy thread ended on its own (None while it runs or after a clean close)."""
        try:
            self._frontend = self._socket(zmq.XSUB)
            self._frontend.rcvhwm = rcv_hwm
            self._backend = self._socket(zmq.XPUB)
            self._backend.sndhwm = send_hwm
            control = f"inproc://emim-relay-control-{id(self):x}-{next(_ids)}"
            self._control = self._socket(zmq.PAIR)
            self._control.bind(control)
            self._steer = self._socket(zmq.PAIR)
            self._steer.connect(control)
            for endpoint in self.upstream:
                self._connect(endpoint)
            try:
                self._backend.bind(listen)
            except zmq.ZMQError as err:
                raise PublishError(f"cannot bind relay to {listen!r}: {err}") from err
        except BaseException:
            self._close_sockets()
            raise
        self._endpoint = self._backend.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name="emim-relay", daemon=True)
        self._thread.start()
        _LOG.info("relaying %s -> %s", ", ".join(self.upstream), self._endpoint)
        if is_remote_tcp(listen):
            _LOG.warning("relaying on %s without CURVE: anyone who reaches it can read the streams", self._endpoint)

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self._context.socket(kind)
        sock.linger = 0
        self._sockets.append(sock)
        return sock

    def _connect(self, endpoint: str) -> None:
        try:
            self._frontend.connect(endpoint)
        except zmq.ZMQError as err:
            raise PublishError(f"cannot connect relay to upstream {endpoint!r}: {err}") from err

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, self._control)
        except zmq.ZMQError as err:
            self.error = err
            _LOG.error("relay proxy stopped: %s", err)

    @property
    def endpoint(self) -> str:
        """The bound listen endpoint, with a wildcard port resolved."""
        return self._endpoint

    @property
    def running(self) -> bool:
        """True while the proxy thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self, timeout_s: float = 1.0) -> RelayStats:
        """The proxy's counters so far (asks the running proxy).

        Raises:
            PublishError: the proxy does not answer within ``timeout_s`` (it is not running).
        """
        if not self.running:
            raise PublishError("the relay is not running")
        self._steer.send(b"STATISTICS")
        if not self._steer.poll(round(timeout_s * 1000)):
            raise PublishError(f"the relay proxy did not answer within {timeout_s} s")
        frames = self._steer.recv_multipart()
        # 8 native uint64: frontend frames in, bytes in, msgs out, bytes out; then the same for the backend
        counts = [struct.unpack("=Q", frame)[0] for frame in frames]
        return RelayStats(frames=counts[0], bytes=counts[1], subscriptions=counts[4])

    def close(self, timeout_s: float = 2.0) -> RelayStats | None:
        """End the proxy, close the sockets and a private context. Idempotent.

        Returns:
            The final counters, or None if the proxy was not running.
        """
        if self._thread is None:
            return None
        stats = None
        if self._thread.is_alive():
            try:
                stats = self.stats(timeout_s)
            except PublishError as err:
                _LOG.warning("no final relay statistics: %s", err)
            self._steer.send(b"TERMINATE")
            self._thread.join(timeout_s)
            if self._thread.is_alive():  # must not happen: closing its sockets under it would crash the process
                _LOG.error("relay proxy did not stop within %s s; leaving its sockets open", timeout_s)
                return stats
        self._thread = None
        self._close_sockets()
        return stats

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
