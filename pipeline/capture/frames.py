"""What every frame source shares: the frame records, the source states, the :class:`FrameSource` protocol and the
small helpers the decoders use alike (URI kinds, RTSP transports, pacing, the missing-file message).

The decoders are :mod:`emim_stream.pipeline.capture.sources` (OpenCV, the synthetic camera, and ``open_source``,
which picks one) and :mod:`emim_stream.pipeline.capture.ffmpeg` (FFmpeg through PyAV).
"""

from __future__ import annotations

import os
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np

from emim_stream.engines.errors import ConfigError

__all__ = [
    "FALLBACK_FPS",
    "FrameSource",
    "Pacer",
    "PreparedFrame",
    "SourceFrame",
    "SourceInfo",
    "SourceState",
    "classify_uri",
    "missing_file_message",
    "rtsp_transports",
]

_NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_RTSP_TRANSPORTS = ("auto", "tcp", "udp")
FALLBACK_FPS = 30.0
"""Pacing rate of a file whose container does not state a usable fps."""
_MAX_LAG_S = 1.0  # a paced source that falls this far behind its schedule restarts the schedule


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
    if urllib.parse.urlsplit(uri).scheme.lower() in _NETWORK_SCHEMES:
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
