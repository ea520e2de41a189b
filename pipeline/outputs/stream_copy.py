"""Recording a camera's main stream as it comes (``cameras[].record_source``): its packets copied, never decoded.

An IP camera serves its picture twice: a main stream (1080p to 4K) and a low-resolution sub-stream. Decoding the
main stream only to shrink it to the model's input costs most of a camera's CPU (``emim-stream bench-decode``);
decoding the sub-stream costs a fraction of that. With ``record_source``, the model reads ``source`` (the
sub-stream) and :class:`StreamCopy` records the main stream: a thread reads its compressed video packets and
copies them into the camera's crash-safe fragmented MP4 segments (:class:`~emim_stream.pipeline.outputs.segments.
CopiedFile`, named and retained like the encoded ones): full resolution, the camera's own encoding, no decoding and
no encoding. Such a recording has no labels drawn on it; event clips and snapshots (when asked for) still come from
the frames the model sees.

A segment starts at a key frame and ends at the first key frame after ``segment_s`` of video (or ``max_mb``), so
its length follows the camera's key-frame interval. A stream that drops or ends is opened again with capped
exponential backoff (``supervisor.restart_backoff_s``); the segment being written is closed first, so what was
recorded plays. A write error (full disk, removed or read-only directory) is logged once, counted in ``lost``
(frames) and retried every ``record.retry_s``, as for the encoded recordings. ``state`` is ``connecting``,
``recording``, ``reconnecting`` or ``write_error``, with the reason in ``detail``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import av

from emim_stream.engines.uris import redact_uri
from emim_stream.pipeline.capture.ffmpeg import av_reason
from emim_stream.pipeline.capture.frames import rtsp_transports
from emim_stream.pipeline.config import CameraConfig
from emim_stream.pipeline.outputs.segments import WRITE_ERRORS, CopiedFile, SegmentFiles, SegmentSeries

__all__ = ["StreamCopy"]

_log = logging.getLogger(__name__)

_READ_ERRORS = (av.FFmpegError, OSError, EOFError, IndexError)
"""What opening or reading a stream raises (IndexError: it has no video stream)."""


class StreamCopy(SegmentSeries[CopiedFile]):
    """Records ``camera.record_source`` into ``segments`` from a thread of its own (see the module docstring).

    Args:
        camera: the camera (its ``record_source``, ``rtsp_transport`` and timeouts are used).
        segments: the camera's segment files.
        segment_s, max_bytes: a segment ends at the first key frame after this much video or this size.
        retry_s: after a write error, how often a new segment is tried.
        backoff: (first, max) delay in seconds before opening a dropped stream again; it doubles per failure.

    Counters: those of :class:`~emim_stream.pipeline.outputs.segments.SegmentSeries` and ``reconnects``.
    """

    def __init__(
        self,
        camera: CameraConfig,
        segments: SegmentFiles,
        segment_s: float,
        max_bytes: float,
        retry_s: float,
        backoff: tuple[float, float],
    ) -> None:
        if camera.record_source is None:
            raise ValueError(f"camera {camera.id!r} has no record_source")
        super().__init__(segments, retry_s)
        self.uri, self.uri_redacted = camera.record_source, redact_uri(camera.record_source)
        self.segment_s, self.max_bytes = segment_s, max_bytes
        self._transports = rtsp_transports(self.uri, camera.rtsp_transport)
        self._timeout = (camera.open_timeout_s, camera.read_timeout_s)
        self._backoff = backoff
        self.reconnects = 0
        self.state = "connecting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"record-{camera.id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay, opened_before = self._backoff[0], False
        while not self._stop.is_set():
            container = self._open()
            if container is not None:
                if opened_before:
                    self.reconnects += 1
                opened_before, delay = True, self._backoff[0]
                reason = self._copy(container)
                self._finish()
                if self._stop.is_set():
                    break
                self._set("reconnecting", f"record_source {self.uri_redacted} {reason}", logging.WARNING)
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff[1])

    def _open(self) -> Any:
        """The opened stream, or None (state and detail say why)."""
        reasons = []
        for transport in self._transports:
            options = {} if transport is None else {"rtsp_transport": transport}
            try:
                return av.open(self.uri, options=options, timeout=self._timeout)
            except _READ_ERRORS as err:
                reasons.append(f"{transport.upper() + ': ' if transport else ''}{av_reason(err)}")
        state = "connecting" if self.state == "connecting" else "reconnecting"
        self._set(state, f"record_source {self.uri_redacted} cannot be reached ({'; '.join(reasons)})", logging.WARNING)
        return None

    def _copy(self, container: Any) -> str:
        """Copy the stream's video packets until it ends, drops or the copy is closed; why it stopped."""
        try:
            stream = container.streams.video[0]
            _log.info("recording %s from %s (%dx%d, copied as it comes)", self.camera_id, self.uri_redacted,
                      stream.codec_context.width, stream.codec_context.height)  # fmt: skip
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return "closed"
                if packet.dts is not None:
                    self._write(packet, stream)
            return "ended"
        except _READ_ERRORS as err:
            return f"dropped ({av_reason(err)})"
        finally:
            container.close()

    def _write(self, packet: av.Packet[Any], stream: Any) -> None:
        """Copy one packet; a segment starts at a key frame; write errors are counted, never raised."""
        if self._waiting_to_retry():
            return
        current = self._current
        if current is not None and packet.is_keyframe and self._full(current):
            self._finish()
            current = None
        if current is None and not packet.is_keyframe:
            return  # before the first key frame nothing can be decoded: such frames are not recorded
        try:
            if current is None:
                current = self._start(stream, packet)
            if current.write(packet):
                self._wrote(current)
        except WRITE_ERRORS as err:
            self.lost += 1
            self._fail(err)

    def _start(self, stream: Any, first: av.Packet[Any]) -> CopiedFile:
        path = self.segments.new_path()
        try:
            self._current = CopiedFile(path, stream, first)
        except WRITE_ERRORS:
            self.segments.forget(path)
            raise
        _log.info("recording %s to %s", self.camera_id, path)
        self._opened()
        return self._current

    def _full(self, current: CopiedFile) -> bool:
        return current.seconds >= self.segment_s or current.size() >= self.max_bytes

    def _set(self, state: str, detail: str, level: int) -> None:
        """Enter ``state`` for ``detail``: logged at ``level`` when that is news, else at DEBUG."""
        news = (state, detail) != (self.state, self.detail)
        _log.log(level if news else logging.DEBUG, "recording %s: %s", self.camera_id, detail)
        self.state, self.detail = state, detail

    def stats(self) -> dict[str, Any]:
        """:meth:`SegmentSeries.stats` and ``reconnects``."""
        return {**super().stats(), "reconnects": self.reconnects}

    def stop(self) -> None:
        """Ask the copy to stop (:meth:`close` waits for it)."""
        self._stop.set()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop copying and close the segment being written (waits for a blocked read up to its timeout)."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            _log.warning("recording %s: the stream read did not return in %g s; its segment stays open",
                         self.camera_id, timeout_s)  # fmt: skip

