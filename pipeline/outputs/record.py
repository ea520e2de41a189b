"""Annotated recordings: per camera MP4 segments of its frames as the model sees them, with its current label drawn
on them.

While recording, the camera processes write every frame to the ring, not only the model's samples, so a
recording has the camera's full frame rate (at the model's input size).

:class:`Recorder` is a tap of the inference loop: ``on_frame`` copies each frame read into one bounded queue
(full: the frame is dropped and counted in ``dropped``, the loop never waits) and ``on_label`` notes each camera's
newest label. One writer thread scales every frame up to ``record.height`` (nearest neighbour: the model's pixels
stay visible), adds a text band above it (top-1 label on the left; score and total latency on the right, see
:func:`overlay_layout`) and hands it to the camera's
:class:`~emim_stream.pipeline.outputs.segments.SegmentWriter`: crash-safe fragmented MP4 segments of
``segment_s`` seconds (or ``max_mb``), ``DIR/<camera>_<UTC start>.mp4``, H.264 where FFmpeg can encode it, else
MPEG-4 part 2. A write error (full disk, removed or read-only directory) is one camera writer's problem: it is
logged, counted and retried there, and the other cameras go on recording.

A camera with ``record_source`` (its main stream, while ``source`` is a sub-stream for the model) is recorded from
that stream instead, copied as it comes (:class:`~emim_stream.pipeline.outputs.stream_copy.StreamCopy`): same file
names, segments and retention, no labels drawn; its camera process then writes only the model's samples, unless
event clips want every frame (:func:`frames_wanted`).

With ``record.event_clips``, the writer also keeps the last ``clip_max_s + clip_pre_s`` seconds of each camera's
frames, and for every ended action event (``on_event``, :mod:`emim_stream.pipeline.inference.events`) writes
``DIR/events/<camera>_<label>_<UTC start>_<id prefix>.mp4`` (:meth:`Recorder.event_paths`; camera and label
through :func:`~emim_stream.pipeline.outputs.filenames.safe_name`): from ``clip_pre_s`` before the event's first
frame (at most ``clip_max_s`` before its end) to ``clip_post_s`` after its last, once those frames have arrived (or
at close). The event's snapshot (:mod:`emim_stream.pipeline.outputs.snapshot`) is kept beside it, same name with
``.jpg`` (:meth:`Recorder.save_snapshot`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.capture.ring import RingFrame
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage
from emim_stream.pipeline.config import CameraConfig, RecordConfig
from emim_stream.pipeline.outputs.filenames import safe_name
from emim_stream.pipeline.outputs.segments import (
    WRITE_ERRORS,
    SegmentFiles,
    SegmentWriter,
    VideoFile,
    probe_codec,
    utc_stamp,
)
from emim_stream.pipeline.outputs.stream_copy import StreamCopy

__all__ = ["Overlay", "OverlayLayout", "Recorder", "draw_overlay", "frames_wanted", "overlay_layout"]

_log = logging.getLogger(__name__)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, slots=True)
class Overlay:
    """What is drawn on a frame: the camera's newest top-1 label, its score and the window's total latency."""

    label: str
    score: float
    latency_ms: float

    @classmethod
    def from_message(cls, msg: LabelMessage) -> Overlay:
        label, score = msg.topk[0]
        return cls(label, float(score), float(msg.latency_ms.get("total", 0.0)))


@dataclass(frozen=True, slots=True)
class OverlayLayout:
    """Geometry of a recorded frame: a text band of ``band`` rows above the scaled picture.

    Boxes are ``(x0, y0, x1, y1)`` in output pixels: ``label_box`` holds only the top-1 label,
    ``info_box`` the score and latency.
    """

    width: int
    height: int
    band: int
    label_box: tuple[int, int, int, int]
    info_box: tuple[int, int, int, int]


def overlay_layout(frame_height: int, frame_width: int, picture_height: int) -> OverlayLayout:
    """The layout for frames of ``frame_height`` x ``frame_width`` scaled to ``picture_height`` rows.

    Sizes are even (the codecs' chroma subsampling needs it).
    """
    width = max(2, round(frame_width * picture_height / frame_height) // 2 * 2)
    band = max(24, picture_height // 6) // 2 * 2
    split = width * 11 // 20
    return OverlayLayout(
        width=width,
        height=picture_height + band,
        band=band,
        label_box=(0, 0, split, band),
        info_box=(split, 0, width, band),
    )


def _fit_text(text: str, box: tuple[int, int, int, int], thickness: int) -> tuple[float, tuple[int, int]]:
    """The font scale that fits ``text`` into ``box`` (with a margin), and the origin that left-aligns it."""
    x0, y0, x1, y1 = box
    margin = max(2, (y1 - y0) // 8)
    (w, h), _ = cv2.getTextSize(text, _FONT, 1.0, thickness)
    scale = min((x1 - x0 - 2 * margin) / max(w, 1), (y1 - y0 - 2 * margin) / max(h, 1))
    scale = max(scale, 0.1)
    (_, h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    return scale, (x0 + margin, y0 + (y1 - y0 + h) // 2)


def draw_overlay(image_rgb: np.ndarray, overlay: Overlay | None, layout: OverlayLayout) -> np.ndarray:
    """A BGR frame of ``layout``'s size: ``image_rgb`` scaled up under a band with ``overlay`` written in it.

    Without an overlay (no label yet) the band stays black.
    """
    out = np.zeros((layout.height, layout.width, 3), dtype=np.uint8)
    picture = out[layout.band :]
    cv2.resize(image_rgb, (layout.width, layout.height - layout.band), dst=picture, interpolation=cv2.INTER_NEAREST)
    cv2.cvtColor(picture, cv2.COLOR_RGB2BGR, dst=picture)
    if overlay is not None:
        thickness = max(1, layout.band // 24)
        for text, box in (
            (overlay.label, layout.label_box),
            (f"{overlay.score:.2f} {overlay.latency_ms:.0f}ms", layout.info_box),
        ):
            scale, origin = _fit_text(text, box, thickness)
            cv2.putText(out, text, origin, _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def frames_wanted(cfg: RecordConfig, cameras: Sequence[CameraConfig]) -> set[str]:
    """The cameras whose every frame the recorder wants (not only the model's samples): those recorded from their
    frames, and all of them for event clips."""
    if cfg.dir is None:
        return set()
    return {cam.id for cam in cameras if cam.record_source is None or cfg.event_clips}


def _clip_fps(frames: list[tuple[RingFrame, Overlay | None]]) -> float:
    """Frame rate of a clip from the capture times of its frames (30 when they cannot tell), in 1..240."""
    span_ns = frames[-1][0].capture_mono_ns - frames[0][0].capture_mono_ns
    fps = (len(frames) - 1) * 1e9 / span_ns if span_ns > 0 else 30.0
    return round(min(max(fps, 1.0), 240.0), 2)


class Recorder:
    """Writes an annotated, crash-safe MP4 segment series per camera, off the inference loop.

    Args:
        cfg: the ``record:`` section (``dir`` must be set).
        cameras: the cameras to record; those with ``record_source`` from that stream.
        backoff: (first, max) delay before a dropped ``record_source`` is opened again.

    Counters: ``dropped`` frames per camera (queue full), ``clips`` (paths, in order) per camera; each camera's
    :class:`~emim_stream.pipeline.outputs.segments.SegmentWriter` in ``writers`` (or
    :class:`~emim_stream.pipeline.outputs.stream_copy.StreamCopy` in ``copies``) counts what it wrote and lost.

    Raises:
        ConfigError: the directory cannot be created or no codec can be encoded.
    """

    def __init__(
        self, cfg: RecordConfig, cameras: Sequence[CameraConfig], backoff: tuple[float, float] = (0.5, 10.0)
    ) -> None:
        if cfg.dir is None:
            raise ValueError("Recorder needs record.dir")
        self.cfg = cfg
        self.directory = Path(cfg.dir)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"record.dir: cannot create {str(self.directory)!r}: {err.strerror}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError(f"record.dir: {str(self.directory)!r} is not writable")
        self.codec = probe_codec(cfg.codec)
        camera_ids = [cam.id for cam in cameras]
        self.writers = {
            cam.id: SegmentWriter(self._segments(cam.id), self.codec, cfg.segment_s, cfg.max_mb * 1e6, cfg.retry_s)
            for cam in cameras
            if cam.record_source is None
        }
        self.copies = {
            cam.id: StreamCopy(cam, self._segments(cam.id), cfg.segment_s, cfg.max_mb * 1e6, cfg.retry_s, backoff)
            for cam in cameras
            if cam.record_source is not None
        }
        self._series: dict[str, SegmentWriter | StreamCopy] = {**self.writers, **self.copies}
        self._wanted = frames_wanted(cfg, cameras)
        self.dropped = dict.fromkeys(camera_ids, 0)
        self.clips: dict[str, list[Path]] = {c: [] for c in camera_ids}
        self._overlay: dict[str, Overlay] = {}
        self._layouts: dict[tuple[int, int], OverlayLayout] = {}
        self._history: dict[str, deque[tuple[RingFrame, Overlay | None]]] = {c: deque() for c in camera_ids}
        self._events: deque[EventMessage] = deque(maxlen=64)  # appended by the loop, taken by the writer
        self._pending_clips: list[EventMessage] = []
        self._queue: queue.Queue[tuple[str, RingFrame, Overlay | None] | None] = queue.Queue(cfg.queue_frames)
        self._thread = threading.Thread(target=self._write_loop, name="recorder", daemon=True)
        self._thread.start()
        _log.info("recording to %s (%s)", self.directory, self.codec)

    def _segments(self, camera_id: str) -> SegmentFiles:
        """The camera's segment files, the unplayable leftover of a killed run removed."""
        cfg = self.cfg
        segments = SegmentFiles(
            camera_id,
            self.directory,
            retain_bytes=None if cfg.retain_gb is None else cfg.retain_gb * 1e9,
            retain_s=None if cfg.retain_days is None else cfg.retain_days * 86400,
        )
        segments.remove_unplayable_leftover()
        return segments

    @property
    def written(self) -> dict[str, int]:
        """Frames written into segments, per camera."""
        return {c: w.written for c, w in self._series.items()}

    @property
    def files(self) -> dict[str, list[Path]]:
        """Segment files, per camera, in order."""
        return {c: w.files for c, w in self._series.items()}

    def stats(self, camera_id: str) -> dict[str, Any]:
        """The camera's recording state for status messages and metrics: its writer's (or stream copy's) ``stats()``
        and ``dropped``."""
        return {**self._series[camera_id].stats(), "dropped": self.dropped[camera_id]}

    def on_frame(self, camera_id: str, frame: RingFrame) -> None:
        """Queue a copy of a frame just read with the camera's newest label; drop it when the queue is full."""
        if camera_id not in self._wanted:
            return  # recorded from its main stream, and no event clips
        copy = replace(frame, image=frame.image.copy())
        try:
            self._queue.put_nowait((camera_id, copy, self._overlay.get(camera_id)))
        except queue.Full:
            self.dropped[camera_id] += 1

    def on_label(self, msg: LabelMessage) -> None:
        """Note ``msg``'s top-1 label, score and latency for the camera's next frames."""
        self._overlay[msg.camera_id] = Overlay.from_message(msg)

    def on_event(self, event: EventMessage) -> None:
        """With ``record.event_clips``: write a clip around this event once it has ended (module docstring)."""
        if self.cfg.event_clips and event.phase == "end":
            self._events.append(event)

    def _layout(self, image: np.ndarray) -> OverlayLayout:
        shape = image.shape[:2]
        if shape not in self._layouts:
            self._layouts[shape] = overlay_layout(shape[0], shape[1], self.cfg.height)
        return self._layouts[shape]

    def event_paths(self, event: EventMessage) -> tuple[Path, Path]:
        """Where the clip and the snapshot of ``event`` go: ``DIR/events/<camera>_<label>_<UTC start>_<id[:8]>``
        with ``.mp4`` and ``.jpg``."""
        stamp = utc_stamp(event.start_wall_ns / 1e9)
        stem = f"{safe_name(event.camera_id)}_{safe_name(event.label)}_{stamp}_{safe_name(event.id[:8])}"
        return self.directory / "events" / f"{stem}.mp4", self.directory / "events" / f"{stem}.jpg"

    def save_snapshot(self, event: EventMessage, jpeg: bytes) -> None:
        """Write (or replace) the event's snapshot beside its clip; a write error is logged, never raised."""
        path = self.event_paths(event)[1]
        try:
            path.parent.mkdir(exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(jpeg)
            partial.replace(path)
        except OSError as err:
            _log.error("event snapshot %s not written: %s", path, err)

    def _write_loop(self) -> None:
        """Each camera's frames to its own writer: a write error of one camera never stops another's."""
        while (item := self._queue.get()) is not None:
            camera_id, frame, overlay = item
            if self.cfg.event_clips:
                self._clip_frame(camera_id, frame, overlay)
            if (writer := self.writers.get(camera_id)) is not None:
                writer.write(draw_overlay(frame.image, overlay, self._layout(frame.image)), frame.capture_mono_ns)
        for writer in self.writers.values():
            writer.close()
        self._write_clips(final=True)

    def _clip_frame(self, camera_id: str, frame: RingFrame, overlay: Overlay | None) -> None:
        """Keep the frame for event clips, forget frames too old for any clip, write the clips now complete."""
        history = self._history[camera_id]
        history.append((frame, overlay))
        keep_ns = (self.cfg.clip_max_s + self.cfg.clip_pre_s) * 1e9
        while history[0][0].capture_mono_ns < frame.capture_mono_ns - keep_ns:
            history.popleft()
        self._write_clips(final=False)

    def _write_clips(self, final: bool) -> None:
        while self._events:
            self._pending_clips.append(self._events.popleft())
        waiting = []
        for event in self._pending_clips:
            history = self._history.get(event.camera_id)
            if not history:
                continue
            end_ns = event.end_mono_ns + int(self.cfg.clip_post_s * 1e9)
            if not final and history[-1][0].capture_mono_ns < end_ns:
                waiting.append(event)
                continue
            start_ns = max(
                event.start_mono_ns - int(self.cfg.clip_pre_s * 1e9), end_ns - int(self.cfg.clip_max_s * 1e9)
            )
            frames = [(f, o) for f, o in history if start_ns <= f.capture_mono_ns <= end_ns]
            if len(frames) >= 2:
                self._write_clip(event, frames)
        self._pending_clips = waiting

    def _write_clip(self, event: EventMessage, frames: list[tuple[RingFrame, Overlay | None]]) -> None:
        """One event clip; a write error loses this clip only (logged), never the recording."""
        path = self.event_paths(event)[0]
        layout = self._layout(frames[0][0].image)
        clip = None
        try:
            path.parent.mkdir(exist_ok=True)
            clip = VideoFile(path, self.codec, _clip_fps(frames), layout.width, layout.height)
            for frame, overlay in frames:
                clip.write(draw_overlay(frame.image, overlay, layout))
            clip.close()
        except WRITE_ERRORS as err:
            _log.error("event clip of %s (%s) not written: %s", event.camera_id, event.label, err)
            if clip is not None:
                clip.abandon()
                clip.path.unlink(missing_ok=True)
            return
        self.clips[event.camera_id].append(clip.path)
        _log.info("event clip %s: %d frames", clip.path, len(frames))

    def close(self) -> None:
        """Write what is queued, close the files and stop the thread. Idempotent."""
        if self._thread.is_alive():
            for copy in self.copies.values():
                copy.stop()  # all at once: each may wait for a read to time out
            for copy in self.copies.values():
                copy.close()
            self._queue.put(None)
            self._thread.join(timeout=30)
            for camera_id, series in self._series.items():
                _log.info(
                    "recorded %s: %d frames in %d file(s), %d dropped (encoder behind), %d lost to write errors",
                    camera_id, series.written, len(series.files), self.dropped[camera_id], series.lost,
                )
