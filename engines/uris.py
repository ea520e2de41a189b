"""Source and data-set URIs, written once: credential redaction and the ``synthetic://?...`` query.

The camera sources (:mod:`emim_stream.pipeline.capture.sources`), the data sets
(:mod:`emim_stream.engines.data.datasets`) and calibration
read the same URIs; a ``synthetic://?name=value&...`` URI is parsed by :class:`SyntheticQuery`
for both the synthetic camera and the synthetic data set, each with its own parameter names.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Sequence

from emim_stream.engines.errors import ConfigError

__all__ = [
    "MAX_SYNTHETIC_SIDE",
    "SYNTHETIC_SCHEME",
    "SYNTHETIC_SIZE",
    "SyntheticQuery",
    "is_network_stream",
    "is_synthetic",
    "redact_uri",
]

SYNTHETIC_SCHEME = "synthetic"
SYNTHETIC_SIZE: tuple[int, int] = (320, 240)
"""(width, height) of a synthetic camera without ``size=``; synthetic training clips render at the same size."""
MAX_SYNTHETIC_SIDE = 4096
"""Largest synthetic frame side in pixels (a 4K frame fits); the smallest is 8."""

_NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/]*@")
_SECRET_QUERY = re.compile(  # any query key that names a credential: passphrase, pwd, api_key, X-Auth-Token, ...
    r"(?P<key>[?&;][^?&;=#\s]*(?:pass|pwd|secret|token|auth|key|sig|cred|session)[^?&;=#\s]*=)[^&;#\s]*",
    re.IGNORECASE,
)
_SIZE = re.compile(r"(\d+)x(\d+)")


def redact_uri(uri: str | int | os.PathLike[str]) -> str:
    """``uri`` (or any text containing URIs) with credentials replaced by ``***``.

    ``rtsp://user:pass@host/x`` -> ``rtsp://***@host/x``; ``http://cam/v.cgi?user=a&pwd=b`` ->
    ``http://cam/v.cgi?user=a&pwd=***``; ``srt://h:9000?passphrase=p`` -> ``srt://h:9000?passphrase=***``. Every
    query key containing pass, pwd, secret, token, auth, key, sig, cred or session is redacted, whatever the
    scheme. Paths and camera indices come back unchanged.
    """
    text = os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_QUERY.sub(r"\g<key>***", text)


def is_network_stream(uri: object) -> bool:
    """Whether ``uri`` is a URL of a streaming scheme (RTSP, RTMP, HTTP(S), UDP, TCP, SRT)."""
    return isinstance(uri, str) and urllib.parse.urlsplit(uri).scheme.lower() in _NETWORK_SCHEMES


def is_synthetic(uri: object) -> bool:
    """Whether ``uri`` is a ``synthetic:`` URI (a string with that scheme)."""
    return isinstance(uri, str) and urllib.parse.urlsplit(uri).scheme == SYNTHETIC_SCHEME


class SyntheticQuery:
    """The ``name=value`` parameters of a ``synthetic://?...`` URI, checked against the names its reader takes.

    Values are URL-decoded; the typed getters check them and name the parameter in their errors.

    Args:
        uri: the URI.
        known: the parameter names the reader takes.
        what: what the URI opens, as messages name it (``'synthetic source'``, ``'synthetic data set'``).
        example: a well-formed URI, shown when ``uri`` is malformed.

    Raises:
        ConfigError: not ``synthetic://?...`` (a host, path or fragment), an unknown name, a name
            without ``=value``, or a name given twice.
    """

    def __init__(self, uri: str, known: Sequence[str], what: str, example: str) -> None:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme != SYNTHETIC_SCHEME or parts.netloc or parts.path or parts.fragment:
            raise ConfigError(f"a {what} URI looks like {example!r}, got {uri!r}")
        self.what = what
        self.options: dict[str, str] = {}
        for field in filter(None, parts.query.split("&")):
            name, sep, value = field.partition("=")
            if name not in known or not sep:
                raise ConfigError(
                    f"{what} parameter {name!r} in {uri!r} is unknown or has no '=value'; known: {', '.join(known)}"
                )
            if name in self.options:
                raise ConfigError(f"{what} parameter {name!r} is given twice in {uri!r}")
            self.options[name] = urllib.parse.unquote_plus(value)

    def text(self, name: str, default: str) -> str:
        """The value of ``name`` as given, or ``default``."""
        return self.options.get(name, default)

    def number(
        self,
        name: str,
        kind: type[int] | type[float],
        default: float,
        valid: Callable[[float], bool] = lambda v: True,
        rule: str = "",
    ) -> float:
        """The value of ``name`` as an ``int`` or ``float`` (``default`` when absent), checked by ``valid``.

        Raises:
            ConfigError: not a number of ``kind``, or ``valid`` refuses it (the message says ``rule``).
        """
        if name not in self.options:
            return default
        text = self.options[name]
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ConfigError(f"{self.what} parameter {name!r}={text!r} is not {expected}") from None
        if not valid(value):
            raise ConfigError(f"{self.what} parameter {name!r}={text!r} must be {rule}")
        return value

    def size(self, name: str, default: tuple[int, int]) -> tuple[int, int]:
        """The value of ``name`` as ``(width, height)`` from ``WIDTHxHEIGHT``, each side in 8..4096.

        Raises:
            ConfigError: another form or a side out of range.
        """
        if name not in self.options:
            return default
        text = self.options[name]
        match = _SIZE.fullmatch(text.strip().lower())
        if not match or not all(8 <= int(side) <= MAX_SYNTHETIC_SIDE for side in match.groups()):
            raise ConfigError(
                f"{self.what} parameter {name!r}={text!r} must be WIDTHxHEIGHT, each in 8..{MAX_SYNTHETIC_SIDE} "
                "(e.g. 320x240)"
            )
        return int(match[1]), int(match[2])
