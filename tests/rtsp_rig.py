"""A real RTSP camera on loopback for tests: ``rtsp-server-perl`` relays an H.264 test pattern that ``ffmpeg``
pushes, served at ``rtsp://127.0.0.1:PORT/cam`` (and, like an IP camera's low-resolution sub-stream, a second one
at ``.../sub`` when asked for).

ffmpeg cannot serve RTSP itself; Debian's ``rtsp-server-perl`` accepts a stream pushed to its source port
(ANNOUNCE/RECORD) and serves it to clients on its client port, RTP over UDP only: readers need
``rtsp_transport`` ``udp`` or ``auto`` (TCP fails, then UDP works), the camera setting ``cameras[].rtsp_transport``.

:class:`RtspCamera` picks free ports once and keeps them, so ``stop()`` then ``start()`` is a camera that goes
away and comes back at the same URL. Its processes get SIGTERM if the test process dies (``PR_SET_PDEATHSIG``),
and the :func:`rtsp_camera` fixture stops every camera it made, also when the test fails (import it into a
test module: ``from tests.rtsp_rig import rtsp_camera``). Install
the tools with ``apt-get install -y --no-install-recommends ffmpeg rtsp-server-perl``; :data:`MISSING` says why
the rig cannot run, for ``pytest.mark.skipif``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.loopback import accepts, die_with_parent, free_port, missing_tools

FFMPEG = shutil.which("ffmpeg")
RTSP_SERVER = shutil.which("rtsp-server-perl")
MISSING = missing_tools(
    "the RTSP rig needs Linux, ffmpeg and rtsp-server-perl", "ffmpeg rtsp-server-perl", FFMPEG, RTSP_SERVER
)
"""None when the rig can run, else the skip reason."""

_RTP_PORTS = 16  # UDP ports rtsp-server-perl may use from --rtp_start_port: 2 for the source, 2 per client SETUP


class RtspCamera:
    """An RTSP server plus an ffmpeg test-pattern pusher on 127.0.0.1.

    Args:
        log_dir: where ``rtsp-server.log`` and ``ffmpeg.log`` are written (appended across restarts).
        size: (width, height) of the pushed test pattern.
        fps: its frame rate (ffmpeg pushes in real time, ``-re``).
        gop: frames between key frames; a reader (re)starts decoding at the next one.
        sub_size: (width, height) of a sub-stream served at :attr:`sub_url` (None: none). One server serves both:
            two servers on one box would share the RTP port rtsp-server-perl falls back to.
    """

    def __init__(
        self,
        log_dir: Path,
        size: tuple[int, int] = (320, 240),
        fps: int = 30,
        gop: int = 15,
        sub_size: tuple[int, int] | None = None,
    ) -> None:
        if MISSING:
            raise RuntimeError(MISSING)
        self.log_dir = log_dir
        self.size, self.fps, self.gop, self.sub_size = size, fps, gop, sub_size
        self.client_port, self.source_port = free_port(), free_port()
        self.rtp_start_port = _free_udp_range(_RTP_PORTS)
        self._server: subprocess.Popen | None = None
        self._pushers: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        """Where readers connect: ``rtsp://127.0.0.1:PORT/cam``."""
        return f"rtsp://127.0.0.1:{self.client_port}/cam"

    @property
    def sub_url(self) -> str:
        """The sub-stream (``sub_size``): ``rtsp://127.0.0.1:PORT/sub``."""
        return f"rtsp://127.0.0.1:{self.client_port}/sub"

    @property
    def running(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self._server, *self._pushers))

    def start(self, timeout_s: float = 10.0) -> float:
        """Start the server and the pusher; return once the stream is served (seconds that took).

        Raises:
            RuntimeError: a process exited or the stream was not served within ``timeout_s`` (logs attached).
        """
        if self._server is not None:
            raise RuntimeError("the RTSP camera is already started")
        start = time.monotonic()
        deadline = start + timeout_s
        try:
            self._server = self._spawn(
                [
                    RTSP_SERVER,
                    "--clientport", str(self.client_port),
                    "--serverport", str(self.source_port),
                    "--client_listen_address", "127.0.0.1",
                    "--source_listen_address", "127.0.0.1",
                    "--rtp_start_port", str(self.rtp_start_port),
                ],
                "rtsp-server.log",
            )  # fmt: skip
            self._wait(lambda: accepts(self.source_port), deadline, "the server to listen")
            streams = [("cam", self.size, "ffmpeg.log")]
            if self.sub_size is not None:
                streams.append(("sub", self.sub_size, "ffmpeg-sub.log"))
            for path, (width, height), log_name in streams:
                self._pushers.append(self._spawn(
                    [
                        FFMPEG, "-hide_banner", "-loglevel", "warning", "-nostdin", "-re",
                        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={self.fps}",
                        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(self.gop),
                        "-f", "rtsp", "-rtsp_transport", "udp", f"rtsp://127.0.0.1:{self.source_port}/{path}",
                    ],
                    log_name,
                ))  # fmt: skip
                self._wait(partial(_describe_ok, self.client_port, path), deadline, f"/{path} to be served")
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - start

    def stop(self) -> None:
        """Stop both processes (SIGTERM, then SIGKILL after 3 s): the camera is gone. Safe to call twice."""
        processes = [*self._pushers, self._server]
        for proc in processes:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in processes:
            if proc is not None:
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(3)
        self._pushers, self._server = [], None

    def logs(self) -> str:
        """The tail of both logs, for assertion messages."""
        parts = []
        for name in ("rtsp-server.log", "ffmpeg.log", "ffmpeg-sub.log"):
            path = self.log_dir / name
            text = path.read_text(errors="replace")[-2000:] if path.exists() else "(none)"
            parts.append(f"--- {name}\n{text}")
        return "\n".join(parts)

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        with open(self.log_dir / log_name, "ab") as log:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            exited = [p.args[0] for p in (self._server, *self._pushers) if p is not None and p.poll() is not None]
            if exited:
                raise RuntimeError(f"{', '.join(exited)} exited while waiting for {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.05)

    def __enter__(self) -> RtspCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def rtsp_camera(tmp_path: Path) -> Iterator[Callable[..., RtspCamera]]:
    """A factory of started :class:`RtspCamera` s (keyword arguments as the class); all are stopped at teardown.

    Skips the test when the tools are missing.
    """
    if MISSING:
        pytest.skip(MISSING)
    made: list[RtspCamera] = []

    def make(**kwargs) -> RtspCamera:
        camera = RtspCamera(tmp_path, **kwargs)
        made.append(camera)
        camera.start()
        return camera

    yield make
    for camera in made:
        camera.stop()


def _free_udp_range(count: int) -> int:
    """An even port P with P .. P+count-1 free for UDP on 127.0.0.1 right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1] & ~1
        if base + count > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"found no {count} consecutive free UDP ports on 127.0.0.1")


def _describe_ok(port: int, path: str) -> bool:
    """True once ``rtsp://127.0.0.1:PORT/<path>`` answers DESCRIBE with 200 (a source is pushing to it)."""
    request = f"DESCRIBE rtsp://127.0.0.1:{port}/{path} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(request.encode())
            status_line = conn.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.startswith(b"RTSP/1.0 200")
