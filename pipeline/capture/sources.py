"""Frame sources: video files, RTSP/HTTP streams and USB cameras through OpenCV, and the synthetic scene.

Every source implements :class:`FrameSource` and is a context manager (``with open_source(uri) as src``
opens it, leaving the block closes it). Colour order: these sources return BGR at the source's size (OpenCV's
decode order; the synthetic source converts), so one ``Preprocessor(..., bgr=True)`` path serves them; the FFmpeg
decoder (:mod:`emim_stream.pipeline.capture.ffmpeg`) returns :class:`PreparedFrame` s, RGB at the ring's size.

States (:class:`SourceState`, published on ``status/<camera_id>/``): a source is CONNECTING until its
first ``open()`` succeeds (RECONNECTING on later attempts and after a loss), LIVE while frames arrive,
STALLED while a live source's reads fail but it is not yet lost, and ENDED once a file is exhausted or
the source is closed. A live source that stays silent for ``read_timeout_s`` raises
:class:`SourceConnectionError`; reconnecting (with backoff) is the caller's job: wait, ``open()`` again.

Credentials never reach a message or a log line: :func:`redact_uri` (:mod:`emim_stream.engines.uris`, where the
``synthetic://`` query parser lives too) strips ``user:password@`` and secret-looking query values from
every URI the sources print.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import get_args

import cv2
import numpy as np

from emim_stream.engines.data.synthetic import SEGMENT_S, SyntheticScene, label_index
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.uris import SYNTHETIC_SIZE, SyntheticQuery, is_synthetic, redact_uri
from emim_stream.pipeline.capture.ffmpeg import FfmpegSource
from emim_stream.pipeline.capture.frames import (
    FALLBACK_FPS,
    DecodingSource,
    FrameSource,
    OpenableSource,
    Pacer,
    PreparedFrame,
    SourceFrame,
    SourceInfo,
    SourceState,
    classify_uri,
    missing_file_message,
)
from emim_stream.pipeline.config import Decoder
from emim_stream.pipeline.errors import SourceConnectionError, SourceError

__all__ = [
    "DECODERS",
    "SOURCES",
    "FrameSource",
    "OpenCvSource",
    "PreparedFrame",
    "SourceFrame",
    "SourceInfo",
    "SourceState",
    "SyntheticSource",
    "open_source",
    "redact_uri",
]

_log = logging.getLogger(__name__)

_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


class OpenCvSource(DecodingSource[np.ndarray, SourceFrame]):
    """A source decoded by ``cv2.VideoCapture``: a video file, an RTSP/HTTP(S) stream or a USB camera.

    Files are finite (``is_live`` False); network URLs (HTTP(S) included) and cameras are live.

    Args:
        uri: file path (or ``file://`` URI), network URL (``rtsp://``, ``http(s)://``, ...), or a camera
            index (an int or a digit string; ``/dev/video*`` device nodes are cameras too).
        loop: files only: rewind at the end instead of raising :class:`EndOfStream`.
        pace: files only: release frames at the file's own fps (monotonic schedule); False reads as
            fast as the decoder goes. Live sources are never paced (they pace themselves).
        open_timeout_s: network streams: give up connecting after this long (FFmpeg's open timeout).
        read_timeout_s: live sources: a source that delivers no frame for this long is lost
            (:class:`SourceConnectionError`). It is also FFmpeg's per-read timeout, so a network read
            blocks up to this long: FFmpeg cannot resume a stream once that timeout fired, so a shorter
            per-read timeout would turn every short stall into a reconnect.
        rtsp_transport: ``rtsp://`` and ``rtsps://`` only: RTP over ``tcp`` or ``udp``; ``auto`` tries TCP, then
            UDP (the one that worked last goes first on a reconnect) and logs which one worked. Passed to FFmpeg
            through ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` for the duration of the open only (other options already
            set there are kept).

    Raises:
        ConfigError: a non-positive timeout or an unknown transport.
    """

    def __init__(
        self,
        uri: str | int,
        loop: bool = False,
        pace: bool = True,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        rtsp_transport: str = "auto",
    ) -> None:
        super().__init__(uri, loop, pace, open_timeout_s, read_timeout_s, rtsp_transport)
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> SourceInfo:
        """Open (or re-open, from the start) the source and check that it delivers a frame.

        Raises:
            SourceError: missing or undecodable file, camera that does not open or sends nothing.
            SourceConnectionError: a network stream that cannot be reached or sends no frame.
        """
        self._opening()
        self._cap, first = self._connect()
        height, width = first.shape[:2]
        fps = _usable_fps(self._cap)
        self._serving(first, fps)
        info = SourceInfo(self.uri_redacted, width, height, fps, self._is_live, self._cap.getBackendName())
        _log.info("opened %s: %dx%d at %.2f fps via %s", self.uri_redacted, width, height, fps, info.backend)
        return info

    def close(self) -> None:
        """Release the capture; the state becomes ENDED. Safe to call twice."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
            _log.info("closed %s", self.uri_redacted)
        self._pending = None
        if self._opened_before:
            self._state = SourceState.ENDED

    def _is_open(self) -> bool:
        return self._cap is not None

    def _connect(self) -> tuple[cv2.VideoCapture, np.ndarray]:
        """A capture that has delivered its first frame, or the error that says why not."""
        if self._kind == "file" and not os.path.isfile(self._target):
            raise SourceError(missing_file_message(str(self._target), self.uri_redacted))
        for attempt, transport in enumerate(self._transports):
            cap = self._capture(transport)
            ok, first = cap.read() if cap.isOpened() else (False, None)
            if ok and first is not None and first.ndim == 3 and first.shape[2] == 3:
                if transport is not None:
                    self._rtsp_worked(transport, tried=self._transports[:attempt])
                return cap, first
            opened = cap.isOpened()
            cap.release()
        if self._kind == "network":
            what = "sent no frame" if opened else "cannot be reached"
            tried = " or ".join(str(t).upper() for t in self._transports)
            over = "" if self._transports == [None] else f" over {tried}"
            raise SourceConnectionError(
                f"stream {self.uri_redacted} {what}{over} (open_timeout_s={self.open_timeout_s}, "
                f"read_timeout_s={self.read_timeout_s})"
            )
        if self._kind == "camera":
            what = "delivers no frames" if opened else "does not open"
            raise SourceError(f"camera {self.uri_redacted} {what}; check the index or device and its permissions")
        what = "cannot decode its first frame" if opened else "cannot open it (not a video, or corrupt)"
        raise SourceError(f"video file {self.uri_redacted}: OpenCV {what}")

    def _capture(self, rtsp_transport: str | None) -> cv2.VideoCapture:
        """An opened (or failed) capture of the target; network streams with the open/read timeouts."""
        if self._kind != "network":
            return cv2.VideoCapture(self._target, cv2.CAP_ANY)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(self.read_timeout_s * 1000),
        ]  # fmt: skip
        with _ffmpeg_capture_option("rtsp_transport", rtsp_transport):
            return cv2.VideoCapture(self._target, cv2.CAP_FFMPEG, params)

    def _open_capture(self) -> cv2.VideoCapture:
        if self._cap is None:
            raise RuntimeError(f"{self.uri_redacted}: read() on a source that is not open")
        return self._cap

    def _decode(self) -> np.ndarray | None:
        """The next decoded image (the probe frame first), updating ``_last_pts_ns``; None on failure."""
        cap = self._open_capture()
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            ok, image = cap.read()
            if not ok or image is None:
                return None
        pos_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        known = self._kind != "camera" and math.isfinite(pos_ms) and pos_ms >= 0
        self._last_pts_ns = self._pts_offset_ns + round(pos_ms * 1e6) if known else -1
        return image

    def _rewind(self) -> None:
        """Loop a file: open it again at the start; the pacing schedule and the timestamps carry on."""
        self._open_capture().release()
        self._cap = None
        try:
            self._cap, self._pending = self._connect()
        except SourceError:
            self.close()
            raise
        self._pts_offset_ns = self._last_pts_ns + round(1e9 / (_usable_fps(self._cap) or FALLBACK_FPS))

    def _frame(self, decoded: np.ndarray, mono_ns: int, wall_ns: int) -> SourceFrame:
        return SourceFrame(decoded, mono_ns, wall_ns, self._last_pts_ns)


class SyntheticSource(OpenableSource):
    """A live camera that films :class:`emim_stream.engines.data.synthetic.SyntheticScene` (BGR frames, like OpenCV).

    URI: ``synthetic://?seed=1&fps=30&size=320x240&label=left&segment_s=4&style=photo``, every parameter
    optional (defaults: seed 0, fps 30, size 320x240, no label = cycle through the classes, segment_s
    :data:`~emim_stream.engines.data.synthetic.SEGMENT_S`,
    style classic; ``photo``: photographs seen by a realistic camera). ``label=left,right`` scripts the
    segments: one class per segment, in turn.
    Frame ``n`` is scene frame ``n`` with presentation time ``n / fps``; with ``pace`` it is released at
    ``start + n / fps`` on the monotonic clock, otherwise as fast as it renders.

    Raises:
        ConfigError: malformed URI or a bad/unknown query parameter (the message names it).
    """

    PARAMETERS = ("seed", "fps", "size", "label", "segment_s", "style")

    def __init__(self, uri: str, pace: bool = True) -> None:
        query = SyntheticQuery(uri, self.PARAMETERS, "synthetic source", "synthetic://?seed=1&fps=30")
        self.uri = uri
        self.pace = pace
        self.seed = int(query.number("seed", int, 0, lambda v: v >= 0, ">= 0"))
        self.fps = query.number("fps", float, 30.0, lambda v: math.isfinite(v) and 0 < v <= 1000, "in (0, 1000]")
        self.width, self.height = query.size("size", SYNTHETIC_SIZE)
        self.segment_s = query.number("segment_s", float, SEGMENT_S, lambda v: math.isfinite(v) and v > 0, "> 0")
        labels = query.text("label", "")
        label = labels.split(",") if labels else None
        if label is not None:
            try:
                [label_index(name) for name in label]
            except ConfigError as err:
                raise ConfigError(f"synthetic source parameter 'label': {err}") from None
        try:
            self.scene = SyntheticScene(
                self.seed, self.height, self.width, self.fps, label, self.segment_s, query.text("style", "classic")
            )
        except ConfigError as err:
            raise ConfigError(f"synthetic source parameter 'style': {err}") from None
        self._state = SourceState.CONNECTING
        self._running = False
        self._pacer: Pacer | None = None
        self._next = 0

    def open(self) -> SourceInfo:
        """Start the camera at scene frame 0 (again, after ``close()``)."""
        self._running = True
        self._next = 0
        self._pacer = Pacer(self.fps) if self.pace else None
        self._state = SourceState.LIVE
        return SourceInfo(self.uri, self.width, self.height, self.fps, True, "synthetic")

    def read(self) -> SourceFrame:
        """The next scene frame (BGR), released on schedule when paced."""
        if not self._running:
            raise RuntimeError(f"{self.uri}: read() on a source that is not open")
        n = self._next
        image = cv2.cvtColor(self.scene.frame(n), cv2.COLOR_RGB2BGR)
        if self._pacer is not None:
            self._pacer.wait(n)
        self._next = n + 1
        return SourceFrame(image, time.monotonic_ns(), time.time_ns(), round(n * 1e9 / self.fps))

    def label_at(self, n: int) -> str:
        """The true class of frame ``n`` (ground truth for demos and tests)."""
        return self.scene.label_at(n)

    def close(self) -> None:
        """Stop; the state becomes ENDED."""
        if self._running:
            self._state = SourceState.ENDED
        self._running = False

    def _is_open(self) -> bool:
        return self._running


@contextlib.contextmanager
def _ffmpeg_capture_option(key: str, value: str | None) -> Iterator[None]:
    """Set one FFmpeg option in ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (``k;v|k;v``) while a capture opens.

    OpenCV's FFmpeg backend reads the variable when it opens a stream; other options the user set there are kept,
    and the variable is restored afterwards (each camera runs in its own process).
    """
    if value is None:
        yield
        return
    old = os.environ.get(_FFMPEG_OPTIONS)
    options = dict(item.split(";", 1) for item in (old or "").split("|") if ";" in item)
    options[key] = value
    os.environ[_FFMPEG_OPTIONS] = "|".join(f"{k};{v}" for k, v in options.items())
    try:
        yield
    finally:
        if old is None:
            del os.environ[_FFMPEG_OPTIONS]
        else:
            os.environ[_FFMPEG_OPTIONS] = old


def _usable_fps(cap: cv2.VideoCapture) -> float:
    """The capture's nominal fps, or 0.0 when it states none or nonsense."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if math.isfinite(fps) and 0 < fps <= 1000 else 0.0


SOURCES: dict[str, Callable[..., FrameSource]] = {
    "opencv": OpenCvSource,
    "ffmpeg": FfmpegSource,
    "synthetic": SyntheticSource,
}
"""Source kind -> class; :func:`open_source` picks by URI scheme and decoder."""

DECODERS: tuple[Decoder, ...] = get_args(Decoder)
"""The decoders of files, streams and cameras (``cameras[].decoder``)."""


def open_source(
    uri: str | int,
    *,
    loop: bool = False,
    pace: bool = True,
    open_timeout_s: float = 10.0,
    read_timeout_s: float = 5.0,
    rtsp_transport: str = "auto",
    decoder: str = "opencv",
    size: tuple[int, int] | None = None,
    resize: str = "area",
    hwaccel: str = "none",
) -> FrameSource:
    """Build the source for ``uri`` (not yet opened: call ``open()`` or use it in a ``with`` block).

    ``synthetic://...`` gives a :class:`SyntheticSource` (which takes only ``pace``: it is endless and
    local, so ``loop``, the timeouts, ``rtsp_transport`` and the decoder do not apply). With ``decoder``
    ``'ffmpeg'``, files and streams give an :class:`~emim_stream.pipeline.capture.ffmpeg.FfmpegSource` that hands out
    ``size`` (height, width) RGB frames made with ``resize`` on the ``hwaccel`` preset's device; anything else
    (and USB cameras whatever the decoder) an :class:`OpenCvSource`.

    Raises:
        ConfigError: an unknown decoder, ``'ffmpeg'`` without ``size``, or a setting the source rejects.
    """
    if decoder not in DECODERS:
        raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if is_synthetic(uri):
        return SOURCES["synthetic"](uri, pace=pace)
    options = {"loop": loop, "pace": pace, "open_timeout_s": open_timeout_s, "read_timeout_s": read_timeout_s,
               "rtsp_transport": rtsp_transport}  # fmt: skip
    if decoder == "ffmpeg" and classify_uri(uri)[0] != "camera":
        if size is None:
            raise ConfigError("decoder 'ffmpeg' scales while decoding and needs the output size")
        return SOURCES["ffmpeg"](str(uri), *size, resize=resize, hwaccel=hwaccel, **options)
    return SOURCES["opencv"](uri, **options)
