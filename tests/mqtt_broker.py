"""A real MQTT broker on loopback for tests: Debian's ``mosquitto`` on a free port, plus a recording subscriber.

:class:`Mosquitto` keeps its port across ``stop()`` / ``start()`` (a broker outage), and persists sessions to its
directory, so a subscriber with a persistent session (``clean_session=False``, QoS 1) gets every message the
broker accepted while that subscriber was away, also across a broker restart. With ``users`` it refuses anonymous
clients and checks passwords (``mosquitto_passwd``). Its process gets SIGTERM if the test process dies. Install
with ``apt-get install -y --no-install-recommends mosquitto mosquitto-clients``; :data:`MISSING` says why the
broker cannot run, for ``pytest.mark.skipif``. With ``tls`` it serves MQTT over TLS with a certificate for
127.0.0.1 signed by a throw-away CA (``ca_file``), made with the ``openssl`` command.
"""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.loopback import accepts, die_with_parent, free_port, make_certificates, missing_tools

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
MISSING = missing_tools(
    "the MQTT tests need Linux and Debian's mosquitto", "mosquitto mosquitto-clients", MOSQUITTO, MOSQUITTO_PASSWD
)
"""None when the broker can run, else the skip reason."""


class Mosquitto:
    """``mosquitto`` listening on 127.0.0.1:``port`` with persistence in ``directory``.

    Args:
        directory: config, password file, persistence, certificates and ``mosquitto.log``.
        users: user name -> password; None = anonymous clients allowed.
        tls: serve TLS only, with a certificate for 127.0.0.1 signed by the CA in :attr:`ca_file`.
        acl: lines of a mosquitto ACL file (e.g. ``["topic read #"]``: clients may subscribe but not publish).
    """

    def __init__(
        self, directory: Path, users: dict[str, str] | None = None, tls: bool = False, acl: list[str] | None = None
    ) -> None:
        if MISSING:
            raise RuntimeError(MISSING)
        self.directory = directory
        self.port = free_port()
        self.ca_file = directory / "ca.pem"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {directory}/",
            f"log_dest file {directory}/mosquitto.log",
            f"user {getpass.getuser()}",  # as root, mosquitto would switch to a user that cannot read tmp_path
        ]
        if users is None:
            lines.append("allow_anonymous true")
        else:
            passwords = directory / "passwd"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        if acl is not None:
            (directory / "acl").write_text("\n".join(acl) + "\n")
            lines.append(f"acl_file {directory}/acl")
        if tls:
            make_certificates(directory)
            lines += [f"cafile {self.ca_file}", f"certfile {directory}/server.pem", f"keyfile {directory}/server.key"]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker; return once it accepts connections."""
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while not accepts(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves its sessions). Safe to call twice."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


class Recorder:
    """A paho subscriber that records every message ``(topic, payload, retain)`` under ``topic_filter``; the payload
    is the decoded JSON, or the bytes of one that is not JSON (availability, snapshots, empty retained messages).

    With ``persistent`` it keeps a broker-side session (clean_session False, QoS 1): messages published while
    it is disconnected are delivered when it reconnects (paho reconnects by itself).
    """

    def __init__(self, port: int, topic_filter: str, persistent: bool = False, client_id: str = "recorder") -> None:
        self.messages: list[tuple[str, Any, bool]] = []
        self._lock = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        self._client.reconnect_delay_set(0.05, 0.2)
        topic_filter_ = topic_filter

        def on_connect(client, userdata, flags, reason_code, properties):
            client.subscribe(topic_filter_, qos=1)

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            self._subscribed.set()

        def on_message(client, userdata, message):
            try:
                payload = json.loads(message.payload)
            except ValueError:
                payload = bytes(message.payload)
            with self._lock:
                self.messages.append((message.topic, payload, bool(message.retain)))
                self._lock.notify_all()

        self._client.on_connect = on_connect
        self._client.on_subscribe = on_subscribe
        self._client.on_message = on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the recording subscriber did not get its SUBACK")

    def wait_for(self, predicate: Callable[[list[tuple[str, Any, bool]]], bool], timeout_s: float = 10.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self.messages), timeout_s)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """A factory of started :class:`Mosquitto` brokers (``users=``, ``tls=``, ``acl=``); all are stopped at
    teardown."""
    if MISSING:
        pytest.skip(MISSING)
    made: list[Mosquitto] = []

    def make(
        users: dict[str, str] | None = None, start: bool = True, tls: bool = False, acl: list[str] | None = None
    ) -> Mosquitto:
        directory = tmp_path / f"mosquitto{len(made)}"
        directory.mkdir()
        broker = Mosquitto(directory, users, tls, acl)
        made.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()
