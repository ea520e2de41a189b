"""Annotated recordings: per camera an MP4 of the frames the model sees, with its current label drawn on them.

:class:`Recorder` is a tap of the inference loop: ``on_frame`` copies each frame read into one bounded queue
(full: the frame is dropped and counted in ``dropped``, the loop never waits) and ``on_label`` notes each camera's
newest label. One writer thread scales every frame up to ``record.height`` (nearest neighbour: the model's pixels
stay visible), adds a text band above it (top-1 label on the left; score and total latency on the right, see
:func:`overlay_layout`) and encodes it with OpenCV's FFmpeg writer: H.264 where the OpenCV build can encode it,
else MPEG-4 part 2 (:func:`probe_codec`). A camera's series of files rotates after ``max_s`` seconds of video or
``max_mb`` megabytes: ``DIR/<camera>_<UTC start>.mp4``. The frame rate of a file is measured from the capture
times of its first frames.

With ``record.event_clips``, the writer also keeps the last ``clip_max_s + clip_pre_s`` seconds of each camera's
frames, and for every ended action event (``on_event``, :mod:`emim_stream.pipeline.inference.events`) writes
``DIR/events/<camera>_<label>_<UTC start>_<id prefix>.mp4`` (:meth:`Recorder.event_paths`): from ``clip_pre_s``
before the event's first frame (at most ``clip_max_s`` before its end) to ``clip_post_s`` after its last, once those
frames have arrived (or at close). The event's snapshot (:mod:`emim_stream.pipeline.outputs.snapshot`) is kept
beside it, same name with ``.jpg`` (:meth:`Recorder.save_snapshot`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.capture.ring import RingFrame
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage
from emim_stream.pipeline.config import RecordConfig

__all__ = ["CODECS", "Overlay", "OverlayLayout", "Recorder", "draw_overlay", "overlay_layout", "probe_codec"]

_log = logging.getLogger(__name__)

CODECS = {"h264": "avc1", "mpeg4": "mp4v"}
"""Codec name -> the FourCC OpenCV's FFmpeg writer takes for it in an MP4 container."""
_FPS_FRAMES = 8  # frames whose capture times set a new file's frame rate
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SIZE_CHECK_FRAMES = 30


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


@contextlib.contextmanager
def _quiet_ffmpeg() -> Iterator[None]:
    """Silence OpenCV's and FFmpeg's logging while probing encoders (a failed probe is expected, not news)."""
    previous_env = os.environ.get("OPENCV_FFMPEG_LOGLEVEL")
    previous_level = cv2.utils.logging.getLogLevel()
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous_level)
        if previous_env is None:
            del os.environ["OPENCV_FFMPEG_LOGLEVEL"]
        else:
            os.environ["OPENCV_FFMPEG_LOGLEVEL"] = previous_env


def probe_codec(choice: str) -> str:
    """The codec to record with: ``h264`` or ``mpeg4``, checked by opening a writer of each.

    Args:
        choice: ``auto`` (H.264 when it can be encoded, else MPEG-4 part 2), ``h264`` or ``mpeg4``.

    Raises:
        ConfigError: the asked codec (or, for ``auto``, neither) can be encoded by this OpenCV build.
    """
    candidates = ["h264", "mpeg4"] if choice == "auto" else [choice]
    with tempfile.TemporaryDirectory() as tmp, _quiet_ffmpeg():
        for codec in candidates:
            writer = cv2.VideoWriter(str(Path(tmp) / "probe.mp4"), cv2.VideoWriter.fourcc(*CODECS[codec]), 30, (64, 64))
            opened = writer.isOpened()
            writer.release()
            if opened:
                return codec
    raise ConfigError(
        f"record.codec: {choice!r} cannot be encoded by this OpenCV {cv2.__version__} build"
        + ("; use auto or mpeg4" if choice == "h264" else "")
    )


def _utc_stamp(wall_s: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_s))


class _CameraFile:
    """An open MP4 (a camera's series file or an event clip), with what decides its rotation."""

    def __init__(self, stem: Path, codec: str, fps: float, layout: OverlayLayout) -> None:
        self.path = stem.with_name(stem.name + ".mp4")
        n = 1
        while self.path.exists():
            self.path = stem.with_name(f"{stem.name}_{n}.mp4")
            n += 1
        self.fps = fps
        self.layout = layout
        self.frames = 0
        self.writer = cv2.VideoWriter(
            str(self.path), cv2.VideoWriter.fourcc(*CODECS[codec]), fps, (layout.width, layout.height)
        )
        if not self.writer.isOpened():
            raise OSError(f"cannot open {self.path} for writing")

    def full(self, max_s: float, max_bytes: float) -> bool:
        if self.frames / self.fps >= max_s:
            return True
        return self.frames % _SIZE_CHECK_FRAMES == 0 and self.path.stat().st_size >= max_bytes


def _fps_of(frames: list[tuple[RingFrame, Overlay | None]]) -> float:
    """Frame rate from the capture times of ``frames`` (30 when they cannot tell), in 1..240."""
    span_ns = frames[-1][0].capture_mono_ns - frames[0][0].capture_mono_ns
    fps = (len(frames) - 1) * 1e9 / span_ns if span_ns > 0 else 30.0
    return round(min(max(fps, 1.0), 240.0), 2)


def _layout_of(frames: list[tuple[RingFrame, Overlay | None]], height: int) -> OverlayLayout:
    image = frames[0][0].image
    return overlay_layout(image.shape[0], image.shape[1], height)


class Recorder:
    """Writes an annotated MP4 series per camera, off the inference loop.

    Args:
        cfg: the ``record:`` section (``dir`` must be set).
        camera_ids: the cameras to record.

    Counters: ``written`` and ``dropped`` frames per camera, ``files`` and ``clips`` (paths, in order) per camera.

    Raises:
        ConfigError: the directory cannot be created or no codec can be encoded.
    """

    def __init__(self, cfg: RecordConfig, camera_ids: list[str]) -> None:
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
        self.written = dict.fromkeys(camera_ids, 0)
        self.dropped = dict.fromkeys(camera_ids, 0)
        self.files: dict[str, list[Path]] = {c: [] for c in camera_ids}
        self.clips: dict[str, list[Path]] = {c: [] for c in camera_ids}
        self._overlay: dict[str, Overlay] = {}
        self._history: dict[str, deque[tuple[RingFrame, Overlay | None]]] = {c: deque() for c in camera_ids}
        self._events: deque[EventMessage] = deque(maxlen=64)  # appended by the loop, taken by the writer
        self._pending_clips: list[EventMessage] = []
        self._queue: queue.Queue[tuple[str, RingFrame, Overlay | None] | None] = queue.Queue(cfg.queue_frames)
        self._thread = threading.Thread(target=self._write_loop, name="recorder", daemon=True)
        self._thread.start()
        _log.info("recording to %s (%s)", self.directory, self.codec)

    def on_frame(self, camera_id: str, frame: RingFrame) -> None:
        """Queue a copy of a frame just read with the camera's newest label; drop it when the queue is full."""
        copy = RingFrame(frame.seq, frame.image.copy(), frame.capture_mono_ns, frame.capture_wall_ns, 0)
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

    def event_paths(self, event: EventMessage) -> tuple[Path, Path]:
        """Where the clip and the snapshot of ``event`` go: ``DIR/events/<camera>_<label>_<UTC start>_<id[:8]>``
        with ``.mp4`` and ``.jpg``."""
        stem = f"{event.camera_id}_{event.label}_{_utc_stamp(event.start_wall_ns / 1e9)}_{event.id[:8]}"
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
        open_files: dict[str, _CameraFile] = {}
        starting: dict[str, list[tuple[RingFrame, Overlay | None]]] = {}
        try:
            while (item := self._queue.get()) is not None:
                camera_id, frame, overlay = item
                if self.cfg.event_clips:
                    self._clip_frame(camera_id, frame, overlay)
                current = open_files.get(camera_id)
                if current is None:
                    waiting = starting.setdefault(camera_id, [])
                    waiting.append((frame, overlay))
                    if len(waiting) < _FPS_FRAMES:
                        continue
                    open_files[camera_id] = self._start(camera_id, starting.pop(camera_id))
                    continue
                self._write(current, camera_id, frame, overlay)
                if current.full(self.cfg.max_s, self.cfg.max_mb * 1e6):
                    current.writer.release()
                    del open_files[camera_id]
            for camera_id, waiting in starting.items():  # cameras that ended within their first frames
                open_files[camera_id] = self._start(camera_id, waiting)
            self._write_clips(final=True)
        except OSError as err:  # a full disk or a removed directory: stop recording, keep the pipeline running
            _log.error("recording stopped: %s", err)
        finally:
            for current in open_files.values():
                current.writer.release()

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
        stem = self.event_paths(event)[0].with_suffix("")
        stem.parent.mkdir(exist_ok=True)
        clip = _CameraFile(stem, self.codec, _fps_of(frames), _layout_of(frames, self.cfg.height))
        for frame, overlay in frames:
            clip.writer.write(draw_overlay(frame.image, overlay, clip.layout))
        clip.writer.release()
        self.clips[event.camera_id].append(clip.path)
        _log.info("event clip %s: %d frames", clip.path, len(frames))

    def _start(self, camera_id: str, first: list[tuple[RingFrame, Overlay | None]]) -> _CameraFile:
        """Open a camera's next file at the frame rate of ``first`` and write those frames."""
        current = self._open(camera_id, first)
        for frame, overlay in first:
            self._write(current, camera_id, frame, overlay)
        return current

    def _open(self, camera_id: str, first: list[tuple[RingFrame, Overlay | None]]) -> _CameraFile:
        stem = self.directory / f"{camera_id}_{_utc_stamp()}"
        current = _CameraFile(stem, self.codec, _fps_of(first), _layout_of(first, self.cfg.height))
        self.files[camera_id].append(current.path)
        _log.info("recording %s to %s at %.2f fps", camera_id, current.path, current.fps)
        return current

    def _write(self, current: _CameraFile, camera_id: str, frame: RingFrame, overlay: Overlay | None) -> None:
        current.writer.write(draw_overlay(frame.image, overlay, current.layout))
        current.frames += 1
        self.written[camera_id] += 1

    def close(self) -> None:
        """Write what is queued, close the files and stop the thread. Idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
            for camera_id, files in self.files.items():
                _log.info(
                    "recorded %s: %d frames in %d file(s), %d dropped (encoder behind)",
                    camera_id, self.written[camera_id], len(files), self.dropped[camera_id],
                )
