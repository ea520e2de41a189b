"""JPEG previews of the frames the inference loop reads, for the live view (topic ``preview/<camera_id>/``).

:class:`PreviewTap` sees every frame the loop reads (``on_frame``) but keeps at most ``fps`` per second and camera:
a due frame is copied into a one-slot mailbox per camera and a background thread encodes it (OpenCV releases the
GIL while encoding). The loop sends what is ready with ``take()``; a camera whose previous preview is still being
encoded has the older one replaced (counted in ``replaced``), so the loop never waits and memory stays bounded.

The preview is the frame the model sees (resized and cropped to its H x W), not the camera's native picture.
Payload: :class:`emim_stream.pipeline.comms.messages.PreviewMessage` (schema 1, ``msg_seq`` set by the publisher):
``camera_id``,
``clock_domain``, ``seq`` (the camera's frame number), ``capture_mono_ns``, ``capture_wall_ns``, ``width``, ``height``,
``format`` = ``"jpeg"`` and ``data`` (the JPEG, base64).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2
import numpy as np

from emim_stream.pipeline.capture.ring import RingFrame
from emim_stream.pipeline.comms.messages import PreviewMessage, validate_camera_id

__all__ = ["PreviewTap", "preview_topic"]


def preview_topic(camera_id: str) -> bytes:
    """ZeroMQ topic of a camera's previews: ``b"preview/<camera_id>/"``."""
    return f"preview/{validate_camera_id(camera_id)}/".encode()


class PreviewTap:
    """Rate-limited JPEG previews encoded off the inference loop.

    Args:
        camera_ids: the cameras of the pipeline.
        fps: previews per second and camera (> 0).
        quality: JPEG quality, 1..100.
    """

    def __init__(self, camera_ids: list[str], fps: float, quality: int = 80) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self._period_ns = int(1e9 / fps)
        self._quality = quality
        self._next_due_ns = dict.fromkeys(camera_ids, 0)
        self._pending: dict[str, tuple[int, np.ndarray, int, int]] = {}
        self._ready: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.replaced = 0
        self._thread = threading.Thread(target=self._encode_loop, name="preview-encoder", daemon=True)
        self._thread.start()

    def on_frame(self, camera_id: str, frame: RingFrame) -> None:
        """Offer a frame just read; copied only when the camera's next preview is due. Never blocks for long."""
        now = time.monotonic_ns()
        if now < self._next_due_ns[camera_id]:
            return
        self._next_due_ns[camera_id] = now + self._period_ns
        item = (frame.frame_seq, frame.image.copy(), frame.capture_mono_ns, frame.capture_wall_ns)
        with self._cond:
            if camera_id in self._pending:
                self.replaced += 1
            self._pending[camera_id] = item
            self._cond.notify()

    def take(self) -> list[tuple[bytes, dict[str, Any]]]:
        """``(topic, payload)`` of every preview encoded since the last call (at most one per camera)."""
        if not self._ready:  # unlocked peek: a preview that lands right now is sent next time
            return []
        with self._cond:
            ready, self._ready = self._ready, {}
        return [(preview_topic(camera_id), payload) for camera_id, payload in ready.items()]

    def _encode_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                camera_id, (seq, image, capture_mono_ns, capture_wall_ns) = self._pending.popitem()
            payload = self._payload(camera_id, seq, image, capture_mono_ns, capture_wall_ns)
            with self._cond:
                self._ready[camera_id] = payload

    def _payload(self, camera_id: str, seq: int, image: np.ndarray, mono_ns: int, wall_ns: int) -> dict[str, Any]:
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self._quality]
        )
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 HxWx3 image
            raise RuntimeError(f"JPEG encoding of a {image.shape} frame failed")
        height, width = image.shape[:2]
        return PreviewMessage(camera_id, seq, mono_ns, wall_ns, width, height, jpeg.tobytes()).to_payload()

    def close(self) -> None:
        """Stop the encoder thread (pending previews are discarded). Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)
