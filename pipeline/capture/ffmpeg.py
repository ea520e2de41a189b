"""The FFmpeg decoder of a camera (``cameras[].decoder: ffmpeg``): decode, crop and scale in one FFmpeg pass.

:class:`FfmpegSource` decodes with PyAV (FFmpeg's libraries inside the camera process: no child process to leave
behind on a kill, and the frames never cross a pipe) and hands out :class:`~emim_stream.pipeline.capture.frames.
PreparedFrame` s whose image is made on first use by an FFmpeg filter graph: the centre window that covers the
model's size is cropped, then scaled and converted to RGB in one pass. A frame the model does not sample is decoded
and never converted or scaled (OpenCV converts every frame to BGR at full size).

The picture is :func:`emim_stream.engines.transforms.fit_frame`'s with FFmpeg's scaler instead of OpenCV's
(:func:`~emim_stream.pipeline.capture.hwaccel.scale_flags`): on a 1080p test pattern scaled to 224x224 with
``area`` the pixels differ from the OpenCV path's by 0.86 levels of 255 on average (99th percentile 3);
``emim-stream bench-decode`` measures it on its own files.

Everything else is :class:`~emim_stream.pipeline.capture.sources.OpenCvSource`'s contract: the same states, pacing,
timeouts (``open_timeout_s`` and ``read_timeout_s`` are PyAV's open and per-read timeouts), ``rtsp_transport``
choice and fallback, file loops with continuing timestamps, and credentials redacted in every message. Cameras
(USB indexes, ``/dev/video*``) are not read here: :func:`~emim_stream.pipeline.capture.sources.open_source` gives
them OpenCV.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from functools import partial

import av
import av.filter
import numpy as np
from av.codec.hwaccel import HWAccel, hwdevices_available
from av.container import InputContainer
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import check_resize
from emim_stream.engines.uris import redact_uri
from emim_stream.pipeline.capture.frames import (
    FALLBACK_FPS,
    DecodingSource,
    PreparedFrame,
    SourceInfo,
    SourceState,
    missing_file_message,
)
from emim_stream.pipeline.capture.hwaccel import HWACCELS, PRESETS, cover_crop, scale_flags
from emim_stream.pipeline.errors import SourceConnectionError, SourceError

__all__ = ["FfmpegSource", "av_reason"]

_log = logging.getLogger(__name__)

_AV_ERRORS = (av.FFmpegError, OSError, EOFError)


class FfmpegSource(DecodingSource[VideoFrame, PreparedFrame]):
    """A file or network stream decoded by FFmpeg (PyAV), its frames cropped and scaled to ``height x width`` RGB.

    Args:
        uri: file path (or ``file://`` URI) or network URL (``rtsp://``, ``http(s)://``, ...).
        height, width: the size of the frames handed out (the ring's).
        resize: a :class:`~emim_stream.engines.transforms.ResizeMethod` name.
        loop, pace, open_timeout_s, read_timeout_s, rtsp_transport: as
            :class:`~emim_stream.pipeline.capture.sources.OpenCvSource`.
        hwaccel: a preset of :data:`emim_stream.pipeline.capture.hwaccel.PRESETS`: the device that decodes.

    Raises:
        ConfigError: a non-positive timeout or size, an unknown transport, resize method or preset, a preset this
            FFmpeg cannot use, or a camera device (read those with the OpenCV decoder).
    """

    def __init__(
        self,
        uri: str,
        height: int,
        width: int,
        resize: str = "area",
        loop: bool = False,
        pace: bool = True,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        rtsp_transport: str = "auto",
        hwaccel: str = "none",
    ) -> None:
        super().__init__(uri, loop, pace, open_timeout_s, read_timeout_s, rtsp_transport)
        if height < 1 or width < 1:
            raise ConfigError(f"decoder output size must be positive, got {width}x{height}")
        if self._kind == "camera":
            raise ConfigError(f"decoder 'ffmpeg' reads files and streams; camera {self.uri_redacted} needs 'opencv'")
        if hwaccel not in PRESETS:
            raise ConfigError(f"hwaccel {hwaccel!r} is not a preset; expected one of {', '.join(HWACCELS)}")
        self.preset = PRESETS[hwaccel]
        if self.preset.device_type is not None and self.preset.device_type not in hwdevices_available():
            raise ConfigError(
                f"hwaccel {hwaccel!r}: this FFmpeg (PyAV {av.__version__}) cannot use {self.preset.device_type} "
                f"devices; it has {', '.join(hwdevices_available()) or 'none'}"
            )
        if self.preset.decoder is not None and self.preset.decoder not in av.codecs_available:
            raise ConfigError(f"hwaccel {hwaccel!r}: this FFmpeg has no {self.preset.decoder} decoder")
        self.height, self.width = height, width
        self.flags = scale_flags(check_resize(resize, "resize"))
        self._container: InputContainer | None = None
        self._frames: Iterator[VideoFrame] = iter(())
        self._fps = 0.0
        self._graph: av.filter.Graph | None = None
        self._graph_key: tuple[int, int, str] | None = None

    def open(self) -> SourceInfo:
        """Open (or re-open, from the start) the source and check that it delivers a frame.

        Raises:
            SourceError: missing or undecodable file.
            SourceConnectionError: a network stream that cannot be reached or sends no frame.
        """
        self._opening()
        first = self._connect()
        self._serving(first, self._fps)
        backend = "FFmpeg" if self.preset.name == "none" else f"FFmpeg ({self.preset.name})"
        info = SourceInfo(self.uri_redacted, first.width, first.height, self._fps, self._is_live, backend)
        _log.info("opened %s: %dx%d at %.2f fps via %s", self.uri_redacted, first.width, first.height, self._fps,
                  backend)  # fmt: skip
        return info

    def close(self) -> None:
        """Close the container; the state becomes ENDED. Safe to call twice."""
        if self._container is not None:
            self._container.close()
            self._container = None
            _log.info("closed %s", self.uri_redacted)
        self._frames = iter(())
        self._pending = None
        if self._opened_before:
            self._state = SourceState.ENDED

    def _is_open(self) -> bool:
        return self._container is not None

    def _connect(self) -> VideoFrame:
        """Open the container and decode its first frame, or raise the error that says why not."""
        target = str(self._target)  # a file or a URL: cameras are refused at construction
        if not self._is_live and not os.path.isfile(target):
            raise SourceError(missing_file_message(target, self.uri_redacted))
        reason, opened = "", False
        # PyAV checks a timeout from FFmpeg's I/O callbacks, under the interpreter lock: streams only
        timeout = (self.open_timeout_s, self.read_timeout_s) if self._is_live else None
        for attempt, transport in enumerate(self._transports):
            options = {} if transport is None else {"rtsp_transport": transport}
            try:
                container = av.open(target, options=options, timeout=timeout, hwaccel=self._hwaccel())
            except _AV_ERRORS as err:
                reason = av_reason(err)
                continue
            opened = True
            try:
                first = self._start(container)
            except (*_AV_ERRORS, StopIteration, IndexError) as err:
                container.close()
                reason = av_reason(err)
                continue
            if transport is not None:
                self._rtsp_worked(transport, tried=self._transports[:attempt])
            self._container = container
            return first
        if self.preset.name != "none":
            reason += f"; hwaccel {self.preset.name!r} needs {self.preset.needs}"
        if self._is_live:
            what = "sent no frame" if opened else "cannot be reached"
            tried = " or ".join(str(t).upper() for t in self._transports)
            over = "" if self._transports == [None] else f" over {tried}"
            raise SourceConnectionError(
                f"stream {self.uri_redacted} {what}{over} (open_timeout_s={self.open_timeout_s}, "
                f"read_timeout_s={self.read_timeout_s}; FFmpeg: {reason})"
            )
        what = "cannot decode its first frame" if opened else "cannot open it (not a video, or corrupt)"
        if not opened and self.preset.name != "none":
            what = f"cannot open it on hwaccel {self.preset.name!r}"
        raise SourceError(f"video file {self.uri_redacted}: FFmpeg {what} ({reason})")

    def _hwaccel(self) -> HWAccel | None:
        device = self.preset.device_type
        return None if device is None else HWAccel(device, allow_software_fallback=False)

    def _start(self, container: InputContainer) -> VideoFrame:
        """Set up decoding of the container's first video stream; its first frame (IndexError: no video stream)."""
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threads would hold frames back: latency on a live stream
        self._fps = _usable_rate(stream)
        self._frames = _decoded(container, stream, self.preset.decoder)
        frame = next(self._frames)
        self._set_pts(frame)
        return frame

    def _decode(self) -> VideoFrame | None:
        """The next decoded frame (the probe frame first), updating ``_last_pts_ns``; None at the end or on error."""
        if self._container is None:
            raise RuntimeError(f"{self.uri_redacted}: read() on a source that is not open")
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except _AV_ERRORS as err:  # a read timeout, a dropped connection, a corrupt end of a file
            _log.debug("%s: %s", self.uri_redacted, av_reason(err))
            self._frames = iter(())
            return None
        self._set_pts(frame)
        return frame

    def _set_pts(self, frame: VideoFrame) -> None:
        pts, base = frame.pts, frame.time_base
        self._last_pts_ns = -1 if pts is None or base is None else self._pts_offset_ns + round(pts * base * 10**9)

    def _rewind(self) -> None:
        """Loop a file: open it again at the start; the pacing schedule and the timestamps carry on."""
        last_pts_ns = self._last_pts_ns
        if self._container is not None:
            self._container.close()
            self._container = None
        try:
            self._pending = self._connect()
        except SourceError:
            self.close()
            raise
        self._pts_offset_ns = last_pts_ns + round(1e9 / (self._fps or FALLBACK_FPS))
        self._set_pts(self._pending)

    def _frame(self, decoded: VideoFrame, mono_ns: int, wall_ns: int) -> PreparedFrame:
        return PreparedFrame(partial(self._prepare, decoded), mono_ns, wall_ns, self._last_pts_ns,
                             (decoded.width, decoded.height))  # fmt: skip

    def _prepare(self, frame: VideoFrame) -> np.ndarray:
        """``frame`` cropped, scaled and converted: ``[height, width, 3]`` uint8 RGB, C-contiguous."""
        key = (frame.width, frame.height, frame.format.name)
        if self._graph is None or key != self._graph_key:
            self._graph, self._graph_key = self._build_graph(*key), key
        self._graph.push(frame)
        out = self._graph.vpull()
        return np.ascontiguousarray(out.to_ndarray())

    def _build_graph(self, in_w: int, in_h: int, pix_fmt: str) -> av.filter.Graph:
        """crop -> scale (in the decoded pixel format) -> RGB, for frames of this size and format."""
        crop_w, crop_h, left, top = cover_crop(in_w, in_h, self.height, self.width)
        graph = av.filter.Graph()
        node = graph.add_buffer(width=in_w, height=in_h, format=pix_fmt, time_base=Fraction(1, 90_000))
        for name, args in (
            ("crop", f"{crop_w}:{crop_h}:{left}:{top}"),
            ("scale", f"{self.width}:{self.height}:flags={self.flags}"),
            ("format", "rgb24"),
            ("buffersink", ""),
        ):
            nxt = graph.add(name, args)
            node.link_to(nxt)
            node = nxt
        graph.configure()
        return graph


def _decoded(container: InputContainer, stream: VideoStream, decoder: str | None) -> Iterator[VideoFrame]:
    """The stream's frames, from FFmpeg's default decoder for its codec or the one named."""
    if decoder is None:
        yield from container.decode(stream)
        return
    codec = av.CodecContext.create(decoder, "r")
    if not isinstance(codec, VideoCodecContext):
        raise ConfigError(f"hwaccel decoder {decoder!r} is not a video decoder")
    codec.extradata = stream.codec_context.extradata
    for packet in container.demux(stream):
        for frame in codec.decode(packet):
            if isinstance(frame, VideoFrame):
                yield frame


def av_reason(err: BaseException) -> str:
    """FFmpeg's reason for ``err`` without the URL it repeats (credentials redacted all the same)."""
    if isinstance(err, StopIteration):
        return "no video frame"
    if isinstance(err, IndexError):
        return "no video stream"
    if isinstance(err, av.ExitError):  # the open or read timeout interrupted FFmpeg
        return "timed out"
    return redact_uri(getattr(err, "strerror", None) or str(err) or type(err).__name__)


def _usable_rate(stream: VideoStream) -> float:
    """The stream's nominal fps, or 0.0 when it states none or nonsense."""
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    return fps if 0 < fps <= 1000 else 0.0
