"""CURVE key pairs and client authentication for the label stream (ZeroMQ CURVE + a ZAP handler).

Key files are pyzmq / czmq certificates (``zmq.auth.create_certificates`` format; ``zmq.auth.load_certificate``
reads them): ``NAME.key`` holds the public key (mode 0644, safe to share) and ``NAME.key_secret`` the public and
the secret key (mode 0600, never leaves its machine). Keys are Z85 text, 40 characters each::

    #   ****  Generated on 2026-08-01 12:00:00 by emim-stream  ****
    #   ZeroMQ CURVE **Secret** Certificate
    metadata
        name = server
    curve
        public-key = "<40 Z85 characters>"
        secret-key = "<40 Z85 characters>"

Set-up: ``emim-stream keys --out DIR --name server`` on the box that publishes, ``--name NAME`` once per
subscriber; copy each subscriber's ``NAME.key`` into the publisher's authorised-clients directory and the server's
``server.key`` to each subscriber. :class:`CurveServer` makes a :class:`emim_stream.pipeline.comms.publish.Publisher`
a CURVE server
whose ZAP handler (:func:`start_authenticator`) admits only those client keys; :class:`CurveClient` gives a
:class:`emim_stream.pipeline.comms.subscribe.Subscriber` its key pair and the server's public key. A subscriber
without keys, or with
a key that is not authorised, completes no handshake and receives nothing. The authorised keys are read once, when
the publisher starts; restart it to apply a change.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth import load_certificate
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.errors import PublishError

__all__ = [
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "CurveClient",
    "CurveServer",
    "KeyPair",
    "load_authorized_keys",
    "load_key_pair",
    "load_public_key",
    "start_authenticator",
    "write_key_pair",
]

_LOG = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
"""Public certificate file suffix (czmq's convention, also what ``zmq.auth.load_certificates`` globs)."""
SECRET_SUFFIX = ".key_secret"
"""Secret certificate file suffix."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_BANNER = "#   ****  Generated on {now} by emim-stream  ****\n#   ZeroMQ CURVE {kind} Certificate\n#   {advice}\n\n"
_SECRET_ADVICE = "DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions (0600)."
_PUBLIC_ADVICE = "Share it with the other side of the connection."


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair as Z85 bytes (40 each); ``secret_key`` is None when read from a public certificate."""

    public_key: bytes
    secret_key: bytes | None


@dataclass(frozen=True, slots=True)
class CurveServer:
    """CURVE for a publisher: its own key pair and the client keys it admits.

    Args:
        secret_key_file: the server's secret certificate (``server.key_secret``, mode 0600).
        authorized_clients: a directory whose ``*.key`` files are the admitted clients' public certificates, or
            the admitted public keys themselves (Z85 bytes).
    """

    secret_key_file: str | os.PathLike[str]
    authorized_clients: str | os.PathLike[str] | tuple[bytes, ...]

    def load(self) -> tuple[KeyPair, frozenset[bytes]]:
        """The server key pair and the admitted client keys.

        Raises:
            ConfigError: a missing, malformed or group/world-readable secret key file; no admitted client key.
        """
        return load_key_pair(self.secret_key_file), load_authorized_keys(self.authorized_clients)


@dataclass(frozen=True, slots=True)
class CurveClient:
    """CURVE for a subscriber: its own key pair and the publisher's public key.

    Args:
        secret_key_file: this client's secret certificate (``NAME.key_secret``, mode 0600).
        server_public_key_file: the publisher's public certificate (``server.key``; a secret one works too).
    """

    secret_key_file: str | os.PathLike[str]
    server_public_key_file: str | os.PathLike[str]

    def load(self) -> tuple[KeyPair, bytes]:
        """The client key pair and the server's public key.

        Raises:
            ConfigError: a missing, malformed or group/world-readable key file.
        """
        return load_key_pair(self.secret_key_file), load_public_key(self.server_public_key_file)


def write_key_pair(out_dir: str | os.PathLike[str], name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Generate a CURVE key pair and write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600).

    The secret file is created with mode 0600 from the start (never readable by others, whatever the umask).
    A missing ``out_dir`` is created with mode 0700.

    Returns:
        (public certificate path, secret certificate path).

    Raises:
        ConfigError: a bad name, a file that exists and ``overwrite`` is False, or a directory/file that cannot
            be written.
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(f"key name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (e.g. server, cam-viewer)")
    if not zmq.has("curve"):
        raise ConfigError(f"this libzmq {zmq.zmq_version()} is built without CURVE; key pairs would be useless")
    directory = Path(out_dir)
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    existing = [str(p) for p in (public_path, secret_path) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{' and '.join(existing)} already {'exist' if len(existing) > 1 else 'exists'}; "
            "choose another name or overwrite (--force)"
        )
    public_key, secret_key = zmq.curve_keypair()
    now = datetime.datetime.now().replace(microsecond=0)
    curve = f'curve\n    public-key = "{public_key.decode()}"\n'
    secret_text = (
        _BANNER.format(now=now, kind="**Secret**", advice=_SECRET_ADVICE)
        + f"metadata\n    name = {name}\n"
        + curve
        + f'    secret-key = "{secret_key.decode()}"\n'
    )
    public_text = _BANNER.format(now=now, kind="Public", advice=_PUBLIC_ADVICE) + "metadata\n" + curve
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_new(secret_path, secret_text, 0o600)
        _write_new(public_path, public_text, 0o644)
    except OSError as err:
        raise ConfigError(f"cannot write the key pair {name!r} to {directory}: {err}") from err
    return public_path, secret_path


def _write_new(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a fresh file created with ``mode`` (an existing file is replaced, not reused)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), mode)  # the umask may have narrowed it; never wider than asked
        f.write(text)


def load_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair in a secret certificate (``NAME.key_secret``).

    Raises:
        ConfigError: the file is missing, unreadable, malformed, has no secret key, or is accessible to group or
            others (fix: ``chmod 600 FILE``).
    """
    pair = _read_certificate(path)
    if pair.secret_key is None:
        raise ConfigError(
            f"{os.fspath(path)!r} holds no secret key; pass the {SECRET_SUFFIX} file of the pair, not the "
            f"{PUBLIC_SUFFIX} one"
        )
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(
            f"CURVE secret key file {os.fspath(path)!r} has mode {mode:04o}: group or others may read it; "
            f"run chmod 600 {os.fspath(path)!r}"
        )
    return pair


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key (Z85, 40 bytes) of a certificate, public or secret.

    Raises:
        ConfigError: the file is missing, unreadable or malformed.
    """
    return _read_certificate(path).public_key


def load_authorized_keys(clients: str | os.PathLike[str] | Iterable[bytes]) -> frozenset[bytes]:
    """The admitted client public keys: from the ``*.key`` files of a directory, or Z85 keys given directly.

    Raises:
        ConfigError: not a directory, a malformed key, or no key at all (nobody could connect).
    """
    if isinstance(clients, (str, os.PathLike)):
        directory = Path(clients)
        if not directory.is_dir():
            raise ConfigError(f"authorised CURVE clients directory {os.fspath(clients)!r} does not exist")
        keys = frozenset(load_public_key(p) for p in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")))
        where = f"in {os.fspath(clients)!r} (no *{PUBLIC_SUFFIX} files)"
    else:
        keys = frozenset(_check_key(key, "an authorised client key") for key in clients)
        where = "given"
    if not keys:
        raise ConfigError(
            f"no authorised CURVE client key {where}; create one per subscriber with "
            f"'emim-stream keys --out DIR --name NAME' and copy NAME{PUBLIC_SUFFIX} there"
        )
    return keys


def _read_certificate(path: str | os.PathLike[str]) -> KeyPair:
    try:
        public_key, secret_key = load_certificate(path)
    except OSError as err:
        raise ConfigError(f"cannot read CURVE key file {os.fspath(path)!r}: {err}") from err
    except ValueError as err:  # no public-key line
        raise ConfigError(f"{os.fspath(path)!r} is not a CURVE certificate: {err}") from err
    where = f"{os.fspath(path)!r}"
    return KeyPair(
        _check_key(public_key, f"the public key in {where}"),
        None if secret_key is None else _check_key(secret_key, f"the secret key in {where}"),
    )


def _check_key(key: bytes, what: str) -> bytes:
    """``key`` if it is a 40-character Z85 CURVE key."""
    if not isinstance(key, bytes) or not _Z85_KEY.fullmatch(key):
        raise ConfigError(f"{what} is not a 40-character Z85 CURVE key")
    try:
        z85.decode(key)
    except struct.error:  # a 5-character group above 2**32
        raise ConfigError(f"{what} is not a valid Z85 CURVE key") from None
    return key


class _AllowedKeys:
    """ZAP credentials provider (``configure_curve_callback``): admits exactly ``keys`` (Z85)."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        _LOG.warning("refused a CURVE client whose public key %s is not authorised", key.decode(errors="replace"))
        return False


def start_authenticator(context: zmq.Context[zmq.Socket[bytes]], client_keys: frozenset[bytes]) -> ThreadAuthenticator:
    """Start a ZAP handler on ``context`` that admits only CURVE clients with one of ``client_keys``.

    Start it before binding the CURVE server socket and stop it (``stop()``) before terminating the context.
    One per context: ZAP handlers bind the fixed ``inproc://zeromq.zap.01``.

    Raises:
        PublishError: the context already has a ZAP handler.
    """
    auth = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
    try:
        auth.start()
    except zmq.ZMQError as err:
        auth.stop()
        raise PublishError(
            f"cannot start the CURVE authenticator: {err} (another ZAP handler runs in this ZeroMQ context)"
        ) from err
    auth.configure_curve_callback("*", _AllowedKeys(client_keys))
    return auth
