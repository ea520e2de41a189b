"""What the live view knows about each camera, built from the pipeline's messages.

:class:`ViewState` takes every ``labels/``, ``status/``, ``events/`` and ``preview/`` message (``apply``) and, once a
second (``tick``), turns the labels of the last ``window_s`` seconds into latency chart points: each point holds the
p50 and p99 of ``total`` and the p50 of every stage over the labels received in the ``point_s`` seconds before it
(numpy's default linear interpolation). Every change bumps one version counter; an HTTP client remembers the version
it has seen and gets only the parts that changed since (:meth:`ViewState.changes`), so a slow client skips
intermediate frames instead of queueing them. Memory is bounded: the newest frame, label and status, the last
``max_events`` events and ``window_s`` seconds of latency samples per camera. An event's ``start``, ``update`` and
``end`` messages (one ``id``) make one entry, newest event first, replaced as the later phases arrive.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ViewState"]

SILENT_AFTER_S = 3.5
"""A camera without a status message for this long is shown as silent (the pipeline stopped or is unreachable)."""


@dataclass
class _Camera:
    """One camera's parts; ``versions[part]`` = the state version at which ``part`` last changed."""

    frame: dict[str, Any] | None = None
    label: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=8))
    samples: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)
    latency: dict[str, Any] | None = None
    points: deque[tuple[float, float, float, dict[str, float]]] = field(default_factory=deque)
    status_mono: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)


class ViewState:
    """Thread-safe per-camera state of the live view.

    Args:
        window_s: latency history kept and charted (seconds).
        point_s: labels each chart point summarises (the ``point_s`` seconds before it).
        max_events: events kept per camera.
    """

    def __init__(self, window_s: float = 60.0, point_s: float = 5.0, max_events: int = 8) -> None:
        self.window_s, self.point_s, self.max_events = window_s, point_s, max_events
        self._cameras: dict[str, _Camera] = {}
        self._stages: list[str] = []
        self._version = 0
        self._cond = threading.Condition()
        self.messages = 0

    @property
    def version(self) -> int:
        return self._version

    def _camera(self, camera_id: str) -> _Camera:
        cam = self._cameras.get(camera_id)
        if cam is None:
            cam = self._cameras[camera_id] = _Camera(events=deque(maxlen=self.max_events))
        return cam

    def _bump(self, cam: _Camera, part: str) -> None:
        self._version += 1
        cam.versions[part] = self._version
        self._cond.notify_all()

    def apply(self, payload: dict[str, Any], now_mono: float | None = None) -> None:
        """Take one message payload (any ``kind``; unknown kinds and malformed payloads are ignored)."""
        now_mono = time.monotonic() if now_mono is None else now_mono
        camera_id = payload.get("camera_id")
        if not isinstance(camera_id, str):
            return
        try:
            part, value = _PARTS[payload["kind"]](payload)
        except (KeyError, TypeError, ValueError, IndexError):
            return
        with self._cond:
            self.messages += 1
            cam = self._camera(camera_id)
            if part == "label":
                stages = value["latency"]
                cam.samples.append((now_mono, stages))
                self._stages.extend(s for s in stages if s not in self._stages and s != "total")
            if part == "events":
                _upsert(cam.events, value)
            else:
                setattr(cam, part, value)
            if part == "status":
                cam.status_mono = now_mono
            self._bump(cam, part)

    def tick(self, now_mono: float | None = None, now_wall: float | None = None) -> None:
        """Add a latency point per camera with recent labels; mark cameras silent. Call about once a second."""
        now_mono = time.monotonic() if now_mono is None else now_mono
        now_wall = time.time() if now_wall is None else now_wall
        with self._cond:
            for cam in self._cameras.values():
                while cam.samples and cam.samples[0][0] < now_mono - self.window_s:
                    cam.samples.popleft()
                while cam.points and cam.points[0][0] < now_wall - self.window_s:
                    cam.points.popleft()
                recent = [s for t, s in cam.samples if t >= now_mono - self.point_s]
                if recent:
                    total = np.array([s["total"] for s in recent], dtype=np.float64)
                    per_stage = {
                        stage: float(np.percentile([s[stage] for s in recent if stage in s] or [np.nan], 50))
                        for stage in self._stages
                    }
                    cam.points.append(
                        (now_wall, float(np.percentile(total, 50)), float(np.percentile(total, 99)), per_stage)
                    )
                if recent or cam.latency is not None:
                    cam.latency = self._latency_part(cam)
                    self._bump(cam, "latency")
                silent = cam.status is not None and now_mono - cam.status_mono > SILENT_AFTER_S
                if cam.status is not None and cam.status.get("silent", False) != silent:
                    cam.status = {**cam.status, "silent": silent}
                    self._bump(cam, "status")

    def _latency_part(self, cam: _Camera) -> dict[str, Any]:
        totals = np.array([s["total"] for _, s in cam.samples], dtype=np.float64)
        minute = (
            {"count": len(totals), "p50": float(np.percentile(totals, 50)), "p99": float(np.percentile(totals, 99))}
            if len(totals)
            else {"count": 0, "p50": None, "p99": None}
        )
        return {
            "t": [p[0] for p in cam.points],
            "total_p50": [p[1] for p in cam.points],
            "total_p99": [p[2] for p in cam.points],
            "stages": {
                stage: [None if np.isnan(v := p[3].get(stage, np.nan)) else v for p in cam.points]
                for stage in self._stages
            },
            "window_s": self.window_s,
            "point_s": self.point_s,
            "minute": minute,
        }

    def changes(self, since: int) -> tuple[int, list[dict[str, Any]]]:
        """The state version and, per camera with a part newer than ``since``, ``{"id", part: value, ...}``."""
        with self._cond:
            updates = []
            for camera_id in sorted(self._cameras):
                cam = self._cameras[camera_id]
                update: dict[str, Any] = {"id": camera_id}
                for part, version in cam.versions.items():
                    if version > since:
                        update[part] = list(cam.events) if part == "events" else getattr(cam, part)
                if len(update) > 1:
                    updates.append(update)
            return self._version, updates

    def wait(self, since: int, timeout_s: float) -> bool:
        """Wait until the version passes ``since``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._version > since, timeout_s)

    def frame_jpeg(self, camera_id: str) -> bytes | None:
        """The newest preview of a camera as JPEG bytes (None: none yet)."""
        with self._cond:
            cam = self._cameras.get(camera_id)
            frame = None if cam is None else cam.frame
        return None if frame is None else base64.b64decode(frame["data"])


def _frame(p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if p["format"] != "jpeg" or not isinstance(p["data"], str):
        raise ValueError("not a JPEG preview")
    return "frame", {k: p[k] for k in ("seq", "width", "height", "data", "capture_wall_ns")}


def _label(p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    stages = {str(k): float(v) for k, v in p["latency"]["stages"].items()}
    if "total" not in stages:
        raise ValueError("no total latency")
    topk = [{"label": str(e["label"]), "score": float(e["score"])} for e in p["topk"]]
    return "label", {
        "topk": topk,
        "window": p["window"],
        "latency": stages,
        "publish_wall_ns": p["timestamps"]["publish_wall_ns"],
        "model": p["model"]["name"],
        "dropped_frames": p.get("dropped_frames", 0),
        "dropped_windows": p.get("dropped_windows", 0),
    }


def _status(p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    keys = ("state", "fps", "staleness_ms", "latest_seq", "reconnects", "frames_lost", "dropped_frames", "detail")
    return "status", {**{k: p.get(k) for k in keys}, "state": str(p["state"]), "silent": False}


def _event(p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    keys = ("id", "phase", "start_wall_ns", "end_wall_ns", "peak_score", "mean_score", "windows", "end_reason")
    return "events", {k: p.get(k) for k in keys} | {"label": str(p["label"])}


def _upsert(events: deque[dict[str, Any]], event: dict[str, Any]) -> None:
    """Replace the entry of the same event (``id``) in place, or put a new one first."""
    for i, known in enumerate(events):
        if event["id"] is not None and known["id"] == event["id"]:
            events[i] = event
            return
    events.appendleft(event)


_PARTS = {"preview": _frame, "label": _label, "status": _status, "event": _event}
