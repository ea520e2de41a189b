"""What every frame source shares: the frame records, the source states, the :class:`FrameSource` protocol and the
small helpers the decoders use alike (URI kinds, RTSP transports, pacing, the missing-file message).

The decoders are :mod:`emim_stream.pipeline.capture.sources` (OpenCV, the synthetic camera, and ``open_source``,
which picks one) and :mod:`emim_stream.pipeline.capture.ffmpeg` (FFmpeg through PyAV).
"""

from __future__ import annotations

import abc
import logging
import os
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.uris import is_network_stream, redact_uri
from emim_stream.pipeline.errors import EndOfStream, SourceConnectionError

__all__ = [
    "FALLBACK_FPS",
    "DecodingSource",
    "FrameSource",
    "OpenableSource",
    "Pacer",
    "PreparedFrame",
    "SourceFrame",
    "SourceInfo",
    "SourceState",
    "classify_uri",
    "missing_file_message",
    "rtsp_transports",
]

_RTSP_TRANSPORTS = ("auto", "tcp", "udp")
FALLBACK_FPS = 30.0
"""Pacing rate of a file whose container does not state a usable fps."""
_MAX_LAG_S = 1.0  # a paced source that falls this far behind its schedule restarts the schedule

_log = logging.getLogger(__name__)


class SourceState(str, Enum):
    """Where a source stands; the value is what ``status/<camera_id>/`` messages carry."""

    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What ``open()`` found out about a source."""

    uri_redacted: str
    width: int
    height: int
    fps: float  # the source's nominal frame rate; 0.0 if it does not say
    is_live: bool  # a camera or stream (frames come at their own pace) rather than a file
    backend: str  # OpenCV backend name ('FFMPEG', 'V4L2', ...) or 'synthetic'


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One decoded frame.

    ``image`` is ``[H, W, 3]`` uint8 **BGR**, C-contiguous and owned by the frame. ``capture_mono_ns`` /
    ``capture_wall_ns`` are ``time.monotonic_ns()`` / ``time.time_ns()`` when the frame became available
    (decoded from a live source; released on schedule from a paced file). ``source_pts_ns`` is the
    stream's own presentation time (monotonic across file loops), -1 if unknown.
    """

    image: np.ndarray
    capture_mono_ns: int
    capture_wall_ns: int
    source_pts_ns: int

    @property
    def source_size(self) -> tuple[int, int]:
        """``(width, height)`` of the decoded picture."""
        return self.image.shape[1], self.image.shape[0]


class PreparedFrame:
    """One frame from a source that crops and scales while decoding (the FFmpeg decoder).

    ``image`` is ``[h, w, 3]`` uint8 **RGB** at the ring's size, made on its first access: a frame the model does not
    sample is never converted or scaled. The clocks are :class:`SourceFrame`'s; ``source_size`` is ``(width,
    height)`` of the decoded picture.
    """

    __slots__ = ("_image", "_make", "capture_mono_ns", "capture_wall_ns", "source_pts_ns", "source_size")

    def __init__(
        self,
        make: Callable[[], np.ndarray],
        capture_mono_ns: int,
        capture_wall_ns: int,
        source_pts_ns: int,
        source_size: tuple[int, int],
    ) -> None:
        self._make = make
        self._image: np.ndarray | None = None
        self.capture_mono_ns = capture_mono_ns
        self.capture_wall_ns = capture_wall_ns
        self.source_pts_ns = source_pts_ns
        self.source_size = source_size

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = self._make()
        return self._image


@runtime_checkable
class FrameSource(Protocol):
    """What the camera process needs from a source."""

    @property
    def state(self) -> SourceState: ...

    def open(self) -> SourceInfo:
        """Connect / open; may be called again after ``close()`` or an error to reconnect."""
        ...

    def read(self) -> SourceFrame | PreparedFrame | None:
        """The next frame, or None when none is available right now (a stall)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> FrameSource: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def classify_uri(uri: str | int) -> tuple[str, str | int]:
    """``(kind, target)`` of a source URI: ``camera`` (an index, or a ``/dev`` character device), ``network`` (a URL
    of a streaming scheme) or ``file`` (a path, ``file://`` removed)."""
    if isinstance(uri, int) or uri.strip().isdigit():
        return "camera", int(uri)
    if is_network_stream(uri):
        return "network", uri
    path = uri.removeprefix("file://")
    is_device = path.startswith("/dev/") and os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode)
    return ("camera" if is_device else "file"), path


def rtsp_transports(uri: str | int, rtsp_transport: str) -> list[str | None]:
    """The RTP transports to try, in order, for ``uri``: ``[None]`` (nothing to choose) unless it is RTSP.

    Raises:
        ConfigError: an unknown transport.
    """
    if rtsp_transport not in _RTSP_TRANSPORTS:
        raise ConfigError(f"rtsp_transport must be one of {', '.join(_RTSP_TRANSPORTS)}, got {rtsp_transport!r}")
    if urllib.parse.urlsplit(str(uri)).scheme.lower() not in ("rtsp", "rtsps"):
        return [None]
    return ["tcp", "udp"] if rtsp_transport == "auto" else [rtsp_transport]


class Pacer:
    """Releases item ``n`` at ``start + n / fps`` on the monotonic clock: sleeping never accumulates drift."""

    def __init__(self, fps: float) -> None:
        self._period_ns = 1e9 / fps
        self._start_ns: float | None = None

    def wait(self, n: int) -> None:
        now = time.monotonic_ns()
        if self._start_ns is None or now - (self._start_ns + n * self._period_ns) > _MAX_LAG_S * 1e9:
            self._start_ns = now - n * self._period_ns  # first item, or too far behind: restart here
            return
        delay_ns = self._start_ns + n * self._period_ns - now
        if delay_ns > 0:
            time.sleep(delay_ns / 1e9)


def missing_file_message(path: str, shown: str) -> str:
    """Why a source that is not a network URL or camera index cannot be a video file."""
    if os.path.isdir(path):
        return f"{shown} is a directory, not a video file"
    if path.startswith("/dev/"):
        what = "is not a camera (not a character device)" if os.path.exists(path) else "does not exist"
        return f"camera device {shown} {what}; is the camera plugged in (ls /dev/video*)?"
    return f"video file not found: {shown}"


Decoded = TypeVar("Decoded")
"""What a decoder's ``_decode`` gives (an OpenCV image, a PyAV frame)."""
Frame = TypeVar("Frame", SourceFrame, PreparedFrame)
"""What its ``read`` hands out."""


_Source = TypeVar("_Source", bound="OpenableSource")


class OpenableSource(abc.ABC):
    """What every source shares: its ``state``, and a ``with`` block that opens it (unless it is open) and closes
    it. A source implements ``open``, ``close`` and ``_is_open`` and keeps ``_state``."""

    _state: SourceState

    @property
    def state(self) -> SourceState:
        return self._state

    @abc.abstractmethod
    def open(self) -> SourceInfo:
        ...

    @abc.abstractmethod
    def close(self) -> None:
        ...

    @abc.abstractmethod
    def _is_open(self) -> bool:
        ...

    def __enter__(self: _Source) -> _Source:
        if not self._is_open():
            self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class DecodingSource(OpenableSource, Generic[Decoded, Frame]):
    """What the decoders of files and streams share: the states, file pacing and loops, the end of a file, a live
    source's stalls and loss, and the order of RTSP transports to try.

    A decoder implements ``open`` (between :meth:`_opening` and :meth:`_serving`), ``close``, ``_is_open``,
    ``_decode`` (the next decoded frame, the probe frame first, setting ``_last_pts_ns``; None at the end or on a
    failure), ``_rewind`` (a file from its start, timestamps carrying on) and ``_frame`` (what ``read`` hands out).
    Arguments as :class:`~emim_stream.pipeline.capture.sources.OpenCvSource`.

    Raises:
        ConfigError: a non-positive timeout or an unknown transport.
    """

    def __init__(
        self,
        uri: str | int,
        loop: bool,
        pace: bool,
        open_timeout_s: float,
        read_timeout_s: float,
        rtsp_transport: str,
    ) -> None:
        if not (open_timeout_s > 0 and read_timeout_s > 0):
            raise ConfigError(
                f"source timeouts must be > 0, got open_timeout_s={open_timeout_s}, read_timeout_s={read_timeout_s}"
            )
        self.uri_redacted = redact_uri(uri)
        self._kind, self._target = classify_uri(uri)
        self.loop, self.pace = loop, pace
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self._transports = rtsp_transports(uri, rtsp_transport)
        self.rtsp_transport_used: str | None = None
        """The RTP transport of the open RTSP stream (``tcp`` / ``udp``), None for other sources."""
        self._is_live = self._kind != "file"
        self._state = SourceState.CONNECTING
        self._opened_before = False
        self._exhausted = False
        self._pending: Decoded | None = None  # a file's first frame, decoded by the probe in open()
        self._pacer: Pacer | None = None
        self._released = 0  # frames released since open (indexes the pacing schedule)
        self._pts_offset_ns = 0  # added to a file's timestamps after each loop
        self._last_pts_ns = -1
        self._last_frame_mono_ns = 0

    @abc.abstractmethod
    def _decode(self) -> Decoded | None:
        ...

    @abc.abstractmethod
    def _rewind(self) -> None:
        ...

    @abc.abstractmethod
    def _frame(self, decoded: Decoded, mono_ns: int, wall_ns: int) -> Frame:
        ...

    def _opening(self) -> None:
        """The start of ``open``: the previous connection closed, the state CONNECTING (RECONNECTING after one)."""
        self.close()
        self._state = SourceState.RECONNECTING if self._opened_before else SourceState.CONNECTING
        self._opened_before = True
        self._pts_offset_ns = 0
        self._last_pts_ns = -1

    def _serving(self, first: Decoded, fps: float) -> None:
        """The end of ``open``: ``first`` (the probe) kept for a file, pacing at ``fps`` set up, the state LIVE."""
        self._pending = None if self._is_live else first  # a live stream has more; a file must not lose it
        self._pacer = None
        if self.pace and not self._is_live:
            if fps == 0.0:
                _log.warning("%s: no usable fps in the file; pacing at %.0f fps", self.uri_redacted, FALLBACK_FPS)
            self._pacer = Pacer(fps or FALLBACK_FPS)
        self._exhausted = False
        self._released = 0
        self._last_frame_mono_ns = time.monotonic_ns()
        self._state = SourceState.LIVE

    def read(self) -> Frame | None:
        """The next frame; None while a live source stalls (after a short wait, so callers do not spin).

        Raises:
            EndOfStream: a file without ``loop`` is exhausted (also on every later call).
            SourceConnectionError: a live source delivered nothing for ``read_timeout_s``.
            SourceError: a looping file cannot be opened or decoded again after its end.
        """
        if self._exhausted:
            raise EndOfStream(f"{self.uri_redacted}: no more frames")
        decoded = self._decode()
        if decoded is None and not self._is_live:
            if not self.loop:
                self.close()
                self._exhausted = True
                raise EndOfStream(f"{self.uri_redacted}: end of file after {self._released} frames")
            self._rewind()
            decoded = self._decode()
        if decoded is None:
            self._stall()
            return None
        if self._pacer is not None:
            self._pacer.wait(self._released)
        self._released += 1
        now = time.monotonic_ns()
        self._last_frame_mono_ns = now
        self._state = SourceState.LIVE
        return self._frame(decoded, now, time.time_ns())

    def _rtsp_worked(self, transport: str, tried: list[str | None]) -> None:
        """Remember (and log, when it changes) the transport that worked; it goes first on a reconnect."""
        if transport != self.rtsp_transport_used:
            failed = f" ({', '.join(str(t).upper() for t in tried)} failed)" if tried else ""
            _log.info("%s: RTP over %s%s", self.uri_redacted, transport.upper(), failed)
        self.rtsp_transport_used = transport
        self._transports.remove(transport)
        self._transports.insert(0, transport)

    def _stall(self) -> None:
        """A live source gave no frame: STALLED, or lost once silent for ``read_timeout_s``."""
        silent_s = (time.monotonic_ns() - self._last_frame_mono_ns) / 1e9
        if silent_s >= self.read_timeout_s:
            self.close()
            self._state = SourceState.RECONNECTING
            raise SourceConnectionError(f"stream {self.uri_redacted} lost: no frame for {silent_s:.1f} s")
        self._state = SourceState.STALLED
        time.sleep(min(0.05, self.read_timeout_s - silent_s))
