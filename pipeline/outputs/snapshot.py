"""Event snapshots: a JPEG of the frame at an event's peak with the label drawn on it, off the inference loop.

The loop keeps a copy of a window's newest frame while that window is the peak of the open event or of a run that
may become one (:meth:`Snapshots.keep`, told which frames by
:meth:`emim_stream.pipeline.inference.events.EventTracker.peak_seqs`). When an event message goes out
(:meth:`Snapshots.take`) whose peak frame has not been encoded for that event yet, the frame is queued for a worker
thread: it scales the frame up to ``height`` rows (nearest neighbour, like the recordings), writes the label and
score on the left of a band above it and the camera and capture time (UTC) on the right, encodes a JPEG and hands
it to ``deliver`` (the MQTT sink's retained ``snapshot`` topic, the recorder's file beside the event clip). So an
event has a snapshot from its ``start`` on, replaced when an ``update`` or its ``end`` carries a better peak. The
queue is bounded: when full the oldest job is dropped and counted (``dropped``), the loop never waits.

The picture is the frame the model sees (resized and cropped to its H x W), not the camera's native picture.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import cv2
import numpy as np

from emim_stream.pipeline.comms.messages import EventMessage

__all__ = ["Snapshots", "draw_snapshot"]

_log = logging.getLogger(__name__)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _put_text(out: np.ndarray, text: str, x0: int, x1: int, band: int) -> None:
    """``text`` in white, as large as fits between columns ``x0`` and ``x1`` of the band (rows 0..band)."""
    thickness = max(1, band // 24)
    margin = max(2, band // 8)
    (w, h), _ = cv2.getTextSize(text, _FONT, 1.0, thickness)
    scale = max(0.1, min((x1 - x0 - 2 * margin) / max(w, 1), (band - 2 * margin) / max(h, 1)))
    (_, h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    cv2.putText(out, text, (x0 + margin, (band + h) // 2), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def draw_snapshot(image_rgb: np.ndarray, event: EventMessage, height: int) -> np.ndarray:
    """A BGR picture: ``image_rgb`` scaled to ``height`` rows under a band naming the event's label and peak score
    (left) and its camera and start time, UTC (right)."""
    frame_h, frame_w = image_rgb.shape[:2]
    width = max(2, round(frame_w * height / frame_h) // 2 * 2)
    band = max(24, height // 6) // 2 * 2
    out = np.zeros((height + band, width, 3), dtype=np.uint8)
    picture = out[band:]
    cv2.resize(image_rgb, (width, height), dst=picture, interpolation=cv2.INTER_NEAREST)
    cv2.cvtColor(picture, cv2.COLOR_RGB2BGR, dst=picture)
    split = width * 11 // 20
    stamp = time.strftime("%H:%M:%S", time.gmtime(event.start_wall_ns / 1e9))
    _put_text(out, f"{event.label} {event.peak_score:.2f}", 0, split, band)
    _put_text(out, f"{event.camera_id} {stamp}", split, width, band)
    return out


class Snapshots:
    """Peak-frame copies per camera and the JPEG encoder thread (see the module docstring).

    Args:
        camera_ids: the cameras of the pipeline.
        deliver: called from the encoder thread with the event and its JPEG; it must not block for long.
        height: rows of the scaled picture (a text band is added above).
        quality: JPEG quality, 1..100.
        queue_size: snapshots waiting to be encoded; when full the oldest is dropped (counted).
    """

    def __init__(
        self,
        camera_ids: Iterable[str],
        deliver: Callable[[EventMessage, bytes], None],
        height: int = 360,
        quality: int = 90,
        queue_size: int = 8,
    ) -> None:
        self.deliver, self.height, self.quality = deliver, height, quality
        self._frames: dict[str, dict[int, np.ndarray]] = {c: {} for c in camera_ids}
        self._encoded: dict[str, tuple[str, int]] = {}  # camera -> (event id, peak seq) last queued
        self._jobs: deque[tuple[EventMessage, np.ndarray] | None] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self.encoded = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._work, name="snapshots", daemon=True)
        self._thread.start()

    def keep(self, camera_id: str, seq: int, image: np.ndarray, wanted: set[int]) -> None:
        """Keep a copy of frame ``seq`` if it is ``wanted`` (a peak frame); forget kept frames no longer wanted."""
        frames = self._frames[camera_id]
        for old in [s for s in frames if s not in wanted]:
            del frames[old]
        if seq in wanted and seq not in frames:
            frames[seq] = image.copy()

    def take(self, event: EventMessage) -> bool:
        """Queue the snapshot of ``event``'s peak frame unless it is queued already; True when the event has one."""
        done = self._encoded.get(event.camera_id)
        if done == (event.id, event.peak_seq):
            return True
        frame = self._frames[event.camera_id].get(event.peak_seq)
        if frame is None:  # not kept (frames were lost): an earlier peak's snapshot stands, if any
            return done is not None and done[0] == event.id
        self._encoded[event.camera_id] = (event.id, event.peak_seq)
        with self._cond:
            if len(self._jobs) >= self._queue_size:
                self._jobs.popleft()
                self.dropped += 1
            self._jobs.append((event, frame))
            self._cond.notify()
        return True

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs)
                job = self._jobs.popleft()
            if job is None:
                return
            event, frame = job
            ok, jpeg = cv2.imencode(
                ".jpg", draw_snapshot(frame, event, self.height), [cv2.IMWRITE_JPEG_QUALITY, self.quality]
            )
            if not ok:  # pragma: no cover - OpenCV encodes any uint8 HxWx3 image
                _log.error("snapshot of event %s: JPEG encoding failed", event.id)
                continue
            self.deliver(event, jpeg.tobytes())
            with self._cond:
                self.encoded += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Encode and deliver what is queued (for up to ``timeout_s``), then stop the thread. Idempotent."""
        if self._thread.is_alive():
            with self._cond:
                self._jobs.append(None)
                self._cond.notify()
            self._thread.join(timeout_s)
