"""Network endpoints, checked without a socket: loopback hosts, TCP ports, remote binds.

The publisher, the live view and the config validation share these checks (camera processes load the config and
never import ZeroMQ).
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback", "is_remote_tcp", "port_problem", "tcp_host"]

_LOOPBACK_NAMES = ("localhost",)


def port_problem(port: str) -> str | None:
    """Why ``port`` (the text after the last ``:`` of a TCP endpoint) is no port, or None when it is one.

    ``*`` and ``0`` mean any free port; otherwise 1-65535 (libzmq would silently wrap 99999 to 34463).
    """
    if port == "*" or (port.isdigit() and int(port) <= 65535):
        return None
    return f"port {port!r} must be 1-65535, or 0 / * for any free port"


def is_remote_tcp(endpoint: str) -> bool:
    """True for a ``tcp://`` endpoint whose host is not a loopback address (reachable from other hosts)."""
    return endpoint.startswith("tcp://") and not is_loopback(tcp_host(endpoint))


def tcp_host(endpoint: str) -> str:
    """The host of ``tcp://HOST:PORT``."""
    return endpoint[len("tcp://") :].rpartition(":")[0]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``, bracketed or not)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # an interface name or a wildcard ("*", "eth0"): may be reachable from outside
