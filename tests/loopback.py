"""What the test rigs that start real servers on 127.0.0.1 share (tests/mqtt_broker.py, tests/rtsp_rig.py,
tests/http_hook.py).

The skip reason when a server's tools are missing, a free TCP port, a probe for a listening port, a
``preexec_fn`` that ties a server's life to the test process (``PR_SET_PDEATHSIG``: SIGTERM when the test
process dies, so no server outlives a killed run), and a throw-away CA with a server certificate for 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["accepts", "die_with_parent", "free_port", "make_certificates", "missing_tools"]

OPENSSL = shutil.which("openssl")

_PR_SET_PDEATHSIG = 1
# resolved here, not in the forked child, where only async-signal-safe work is allowed before exec
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def missing_tools(needs: str, packages: str, *found: str | None) -> str | None:
    """None when every tool in ``found`` (``shutil.which`` results) is there on Linux, else the skip reason.

    Args:
        needs: what the rig needs, in words (``the RTSP rig needs Linux, ffmpeg and rtsp-server-perl``).
        packages: the Debian packages that bring the tools.
    """
    if all(found) and sys.platform == "linux":
        return None
    return f"{needs} (apt-get install -y --no-install-recommends {packages})"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def die_with_parent() -> None:
    """``preexec_fn`` (Linux): the child gets SIGTERM when the test process dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def make_certificates(directory: Path) -> Path:
    """``ca.pem`` (a throw-away CA) and ``server.pem`` / ``server.key`` for IP 127.0.0.1, signed by it, made with the
    ``openssl`` command in ``directory`` (the test is skipped without it); returns the CA's path."""
    if OPENSSL is None:
        pytest.skip("the TLS tests need the openssl command")

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=emim-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "1", "-extfile", "san.cnf")  # fmt: skip
    return directory / "ca.pem"
