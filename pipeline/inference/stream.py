"""One camera as the inference loop sees it: ring -> VMP stage -> clip window -> a ready window (or none).

:meth:`CameraStream.drain` reads the camera's ring frame by frame and shows each frame to the frame taps
(live-view previews, recorder). A frame the model sees is one or more of its samples (the camera process
sampled it, :mod:`emim_stream.engines.sampling`): each sample becomes a VMP prompt against the previous sample
and goes into the clip window; a gap in the sample numbers restarts both. Draining stops at the first window
that is ready, as a :class:`WindowJob` in ``pending``, for the scheduler and the engine. The real-time rule
lives here: a window that completes while the ring already holds the samples of the next one is skipped and
counted (``dropped_windows``), so a loop that is behind serves each camera's newest window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from emim_stream.engines.backends.base import Engine
from emim_stream.pipeline.capture.ring import RingFrame, RingReader, SharedRing
from emim_stream.pipeline.comms.messages import EventMessage
from emim_stream.pipeline.config import CameraConfig, EventsConfig, PostprocessConfig
from emim_stream.pipeline.inference.events import EventTracker
from emim_stream.pipeline.inference.postprocess import Postprocessor
from emim_stream.pipeline.inference.truth import Truth, truth_for
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow
from emim_stream.pipeline.outputs.dispatch import FrameTap

__all__ = ["CameraStream", "WindowJob", "build_stream"]


@dataclass(frozen=True, slots=True)
class WindowJob:
    """A ready window of one camera, waiting for the engine (its clip is a view, valid until the next push).

    ``first_seq`` / ``last_seq`` are the camera's frame numbers of the window's oldest and newest sample; the
    ``first_capture_*`` stamps are the oldest sample's, the other capture stamps the newest one's.
    """

    camera_id: str
    clip: torch.Tensor
    first_seq: int
    last_seq: int
    capture_mono_ns: int
    capture_wall_ns: int
    ring_mono_ns: int
    read_mono_ns: int
    vmp_done_mono_ns: int
    first_capture_mono_ns: int
    first_capture_wall_ns: int
    truth: str | None = None


class _Sample(NamedTuple):
    """What a window needs to know of each of its samples."""

    frame_seq: int
    capture_mono_ns: int
    capture_wall_ns: int
    source_pts_ns: int


class CameraStream:
    """Per-camera state of the inference loop: the stages of one camera and what they counted.

    Args:
        camera_id: the camera's id.
        ring: the camera's ring; read from seq 0.
        stage: the VMP stage (on the engine's device).
        window: the clip window (T and stride; on the engine's device).
        post: softmax, top-k and smoothing of this camera's scores.
        events: the camera's action-event tracker (None: events off).
        truth: the true class of the source's frames (None: unknown).
        taps: frame observers, shown every frame read.
    """

    def __init__(
        self,
        camera_id: str,
        ring: SharedRing,
        stage: VmpStage,
        window: ClipWindow,
        post: Postprocessor,
        *,
        events: EventTracker | None = None,
        truth: Truth | None = None,
        taps: Sequence[FrameTap] = (),
    ) -> None:
        self.camera_id, self.ring = camera_id, ring
        self.reader = RingReader(ring, start_seq=0)
        self.stage, self.window, self.post = stage, window, post
        self.events, self.truth, self.taps = events, truth, tuple(taps)
        self.samples: deque[_Sample] = deque(maxlen=window.frames + 1)
        """The latest contiguous samples: a ready window's T and, before them, VMP's reference."""
        self.buf = np.empty((ring.height, ring.width, 3), dtype=np.uint8)
        self._rest: tuple[RingFrame, int, int] | None = None
        """(frame, its next sample, read time) while a frame that is several samples is half pushed."""
        self.pending: WindowJob | None = None
        self.closed_events: list[EventMessage] = []
        """Events closed by a gap in the frames, waiting to be published."""
        self.dropped_windows = 0
        self.nonfinite_windows = 0
        self.labels_sent = 0
        self.events_sent = 0
        self.last_capture_mono_ns = 0
        self.last_status_mono = 0.0

    def window_truth(self) -> str | None:
        """The true class of the window just completed, from VMP's reference sample to its newest."""
        if self.truth is None:
            return None
        return self.truth.window(self.samples[0].source_pts_ns, self.samples[-1].source_pts_ns)

    def caught_up(self) -> bool:
        """True when every frame written to the ring so far has been read (and pushed)."""
        return self._rest is None and self.ring.latest_seq < self.reader.next_seq

    def drain(self, limit: int) -> bool:
        """Read up to ``limit`` frames; True when a window is ready (``pending`` set)."""
        for _ in range(limit):
            if self._rest is None:
                frame = self.reader.read_next(out=self.buf)
                if frame is None:
                    return False
                for tap in self.taps:
                    tap.on_frame(self.camera_id, frame)
                self.last_capture_mono_ns = frame.capture_mono_ns
                self._rest = (frame, frame.sample_seq, time.monotonic_ns())
            frame, sample, read_mono = self._rest
            end = frame.sample_seq + frame.samples
            while sample < end:
                sample += 1
                if self._push(frame, sample - 1, read_mono):
                    self._rest = (frame, sample, read_mono) if sample < end else None
                    return True
            self._rest = None
        return False

    def _push(self, frame: RingFrame, sample: int, read_mono: int) -> bool:
        """Sample number ``sample`` (``frame``) into the VMP stage and the window; True when a window is ready."""
        info = _Sample(frame.frame_seq, frame.capture_mono_ns, frame.capture_wall_ns, frame.source_pts_ns)
        prompt = self.stage.push(frame.image, sample)
        if prompt is None:  # the first sample, or the first after a gap: VMP's reference only
            self.samples.clear()
            self.samples.append(info)
            self.post.reset()
            if self.events is not None:
                self.closed_events += self.events.interrupt("gap")
            return False
        self.samples.append(info)
        vmp_done = time.monotonic_ns()
        if not self.window.push(prompt, sample):
            return False
        if self.window.will_be_ready_within(self.ring.latest_sample_seq - sample):
            self.dropped_windows += 1  # a newer window is already in the ring: serve that one
            return False
        oldest = self.samples[-self.window.frames]
        self.pending = WindowJob(
            self.camera_id,
            self.window.clip(),
            oldest.frame_seq,
            frame.frame_seq,
            frame.capture_mono_ns,
            frame.capture_wall_ns,
            frame.ring_mono_ns,
            read_mono,
            vmp_done,
            oldest.capture_mono_ns,
            oldest.capture_wall_ns,
            self.window_truth(),
        )
        return True


def build_stream(
    camera: CameraConfig,
    ring: SharedRing,
    engine: Engine,
    stride: int,
    postprocess: PostprocessConfig,
    events: EventsConfig,
    taps: Sequence[FrameTap] = (),
) -> CameraStream:
    """The stream of ``camera`` with its stages made for ``engine`` (its device, clip spec, VMP and labels).

    Raises:
        ConfigError: the camera's truth sidecar is malformed or names a class the model does not know.
    """
    spec, clip = engine.input_spec, engine.clip
    return CameraStream(
        camera.id,
        ring,
        VmpStage(engine.vmp, engine.device, clip.mean, clip.std, dtype=torch.float32),
        ClipWindow(spec.frames, stride, spec.height, spec.width, engine.device, torch.float32),
        Postprocessor(engine.labels, postprocess.topk, postprocess.smoothing),
        events=EventTracker(camera.id, engine.labels, events) if events.enabled else None,
        truth=truth_for(camera, engine.labels),
        taps=taps,
    )
