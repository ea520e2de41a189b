"""The inference loop over all cameras: streams -> scheduler -> engine -> postprocess -> events -> outputs.

One pass (:meth:`InferenceLoop.step`)::

    for each camera with no window waiting:        CameraStream.drain (emim_stream.pipeline.inference.stream)
        RingReader.read_next -> VmpStage.push -> ClipWindow.push; older ready windows skipped when behind
    Scheduler.pick: ready windows, round-robin over cameras, up to the engine's max batch
    Engine.infer(batch) -> Postprocessor -> Outputs.label -> LatencyRecorder.add -> observers
    EventTracker per camera: event start/update/end -> Outputs.keep_frame (peak frames), Outputs.event -> observers

:meth:`InferenceLoop.run` repeats it until stopped, with the camera processes' notes, ``status/<camera>/``
heartbeats, the box's ``stats/<box_id>/`` message and live-view previews in between, and swaps in an engine built
in the background at a window boundary. The camera processes never wait for this loop: when it falls behind, rings
overwrite their oldest frames and the readers count them as dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from msgspec.structs import replace

from emim_stream.engines.backends.base import Engine, EngineInfo
from emim_stream.engines.errors import BackendUnavailableError
from emim_stream.pipeline.capture.camera import state_from_code
from emim_stream.pipeline.capture.sources import SourceState
from emim_stream.pipeline.capture.supervisor import CameraSupervisor
from emim_stream.pipeline.comms.messages import (
    CameraStats,
    EventMessage,
    LabelMessage,
    ModelInfo,
    Percentiles,
    StatsMessage,
    StatusMessage,
    WindowInfo,
    event_topic,
    label_topic,
    latency_breakdown_ms,
    stats_topic,
    status_topic,
)
from emim_stream.pipeline.inference.events import WindowSpan
from emim_stream.pipeline.inference.latency import ALL_CAMERAS, LatencyRecorder
from emim_stream.pipeline.inference.scheduler import Scheduler
from emim_stream.pipeline.inference.stream import CameraStream, WindowJob
from emim_stream.pipeline.outputs.dispatch import Outputs

if TYPE_CHECKING:
    from emim_stream.engines.backends.aoti_engine import BackgroundBuild

__all__ = ["CallbackObserver", "InferenceLoop", "LoopSettings", "Observer"]

_log = logging.getLogger(__name__)
_IDLE_SLEEP_S = 0.0005


class Observer(Protocol):
    """Sees every message the loop publishes and every engine it serves from.

    Implementations: :class:`emim_stream.pipeline.outputs.metrics.Metrics`, :class:`CallbackObserver`. Calls run in
    the loop: they
    must be quick.
    """

    def observe_label(self, msg: LabelMessage) -> None: ...

    def observe_event(self, msg: EventMessage) -> None: ...

    def observe_status(self, msg: StatusMessage) -> None: ...

    def set_engine(self, info: EngineInfo) -> None: ...


@dataclass(frozen=True, slots=True)
class CallbackObserver:
    """An :class:`Observer` that hands labels and events to plain callables (e.g. the ``run`` command's printing)."""

    on_label: Callable[[LabelMessage], None] | None = None
    on_event: Callable[[EventMessage], None] | None = None

    def observe_label(self, msg: LabelMessage) -> None:
        if self.on_label is not None:
            self.on_label(msg)

    def observe_event(self, msg: EventMessage) -> None:
        if self.on_event is not None:
            self.on_event(msg)

    def observe_status(self, msg: StatusMessage) -> None:
        pass

    def set_engine(self, info: EngineInfo) -> None:
        pass


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """The loop's knobs, from the pipeline config."""

    drain_limit: int
    """Frames read per camera per pass at most (``ring.slots``: a whole ring)."""
    heartbeat_s: float
    """Seconds between ``status/<camera>/`` messages (``publish.heartbeat_s``)."""
    stall_timeout_s: float
    """A live camera whose ring heartbeat is older than this is reported stalled (``supervisor.stall_timeout_s``)."""
    config_hash: str
    """The resolved config's hash, carried by status messages."""
    box_id: str = "box"
    """This box's id in ``stats/<box_id>/`` messages."""
    stats_s: float = 0.0
    """Seconds between the box's stats messages (``publish.stats_s``; 0 = none)."""


def _model_info(info: EngineInfo) -> ModelInfo:
    return ModelInfo(info.model_name, info.backend, info.precision, info.device, info.checkpoint_sha256)


def _percentiles(stages: dict[str, dict[str, float | int]] | None) -> Percentiles | None:
    """The ``total`` row of a :meth:`LatencyRecorder.summary` camera, rounded to µs (None: no window)."""
    if not stages:
        return None
    total = stages["total"]
    return Percentiles(int(total["count"]), *(round(total[k], 3) for k in ("p50", "p90", "p99", "max")))


class InferenceLoop:
    """The inference loop over all cameras (see the module docstring).

    Args:
        engine: the engine to serve from. The loop closes an engine it swaps out; the caller closes the one in
            use at the end (``loop.engine``).
        streams: one per camera, in config order.
        scheduler: picks the cameras of each engine call.
        outputs: where messages go.
        settings: drain limit, heartbeat period, stall timeout, config hash.
        latency: gets every published label's stage latencies.
        observers: see every published message (metrics, callbacks).
        build: a compiled engine building in the background, swapped in when done (docs/architecture.md#warm-up).
    """

    def __init__(
        self,
        engine: Engine,
        streams: Sequence[CameraStream],
        scheduler: Scheduler,
        outputs: Outputs,
        settings: LoopSettings,
        *,
        latency: LatencyRecorder,
        observers: Sequence[Observer] = (),
        build: BackgroundBuild | None = None,
    ) -> None:
        self.engine, self.scheduler, self.outputs, self.settings = engine, scheduler, outputs, settings
        self.streams = {s.camera_id: s for s in streams}
        self.latency, self.observers, self.build = latency, tuple(observers), build
        self.model_info = _model_info(engine.describe())
        self.started_mono = self.last_stats_mono = time.monotonic()
        self.interval_latency = LatencyRecorder(capacity=4096)
        """Total latency of the windows since the last stats message."""
        self.source_states = dict.fromkeys(self.streams, (SourceState.CONNECTING, 0.0))
        """Camera -> (state, fps) of its last heartbeat."""
        self.warmup_latency: dict[str, dict[str, dict[str, float | int]]] = {}
        """:attr:`latency`'s summary of the windows served while the engine was built (empty: no swap); the
        recorder restarts at the swap, so it then holds only the windows of the compiled engine."""
        self.warmup_engine = ""
        """The backend that served while the engine was built (empty: no swap)."""

    def run(
        self,
        cameras: CameraSupervisor,
        duration_s: float | None,
        stop: threading.Event,
        on_note: Callable[[str, str], None] | None = None,
    ) -> str:
        """Loop until ``stop`` is set, ``duration_s`` passes or every camera has ended; returns why it ended.

        Args:
            cameras: the started camera processes (polled for notes and restarts, details for status).
            duration_s: stop after this many seconds (None: no limit).
            stop: set to end the loop.
            on_note: called with ``(camera_id, text)`` for every camera problem report.
        """
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while True:
            if stop.is_set():
                return "stopped"
            if deadline is not None and time.monotonic() >= deadline:
                return "duration reached"
            if self.build is not None and self.build.done():
                self.swap_engine(self.build)  # between engine calls: a window boundary
            for cam_id, text in cameras.poll():
                if on_note is not None:
                    on_note(cam_id, text)
            busy = self.step()
            self.heartbeats(cameras)
            self.box_stats()
            self.outputs.previews()
            if not busy:
                if cameras.all_finished() and all(s.caught_up() for s in self.streams.values()):
                    return "all cameras ended"
                time.sleep(_IDLE_SLEEP_S)

    def step(self) -> bool:
        """One pass: drain every camera with no window waiting, then serve one batch; True when it did work."""
        busy = False
        for stream in self.streams.values():
            if stream.pending is None:
                busy |= stream.drain(self.settings.drain_limit)
            if stream.closed_events:
                self.publish_events(stream, stream.closed_events)
                stream.closed_events = []
        chosen = self.scheduler.pick({cam_id for cam_id, s in self.streams.items() if s.pending is not None})
        if chosen:
            self.serve([self.streams[c] for c in chosen])
            busy = True
        return busy

    def serve(self, batch: list[CameraStream]) -> None:
        """One engine call for the pending windows of ``batch``, then one label message per camera."""
        jobs = [stream.pending for stream in batch if stream.pending is not None]  # all: the scheduler's pick
        clips = jobs[0].clip.unsqueeze(0) if len(jobs) == 1 else torch.stack([j.clip for j in jobs])
        infer_start = time.monotonic_ns()
        logits = self.engine.infer(clips)
        infer_end = time.monotonic_ns()
        for stream, job, row in zip(batch, jobs, logits, strict=True):
            stream.pending = None
            if not bool(torch.isfinite(row).all()):
                self.skip_nonfinite(stream, job)
                continue
            topk = tuple(stream.post(row))
            publish_mono, publish_wall = time.monotonic_ns(), time.time_ns()
            stages = latency_breakdown_ms(
                job.capture_mono_ns,
                job.ring_mono_ns,
                job.read_mono_ns,
                job.vmp_done_mono_ns,
                infer_start,
                infer_end,
                publish_mono,
            )
            msg = LabelMessage(
                camera_id=stream.camera_id,
                window=WindowInfo(
                    job.first_seq,
                    job.last_seq,
                    stream.window.frames,
                    stream.window.stride,
                    (job.capture_mono_ns - job.first_capture_mono_ns) / 1e6,
                ),
                topk=topk,
                model=self.model_info,
                capture_mono_ns=job.capture_mono_ns,
                capture_wall_ns=job.capture_wall_ns,
                vmp_done_mono_ns=job.vmp_done_mono_ns,
                infer_start_mono_ns=infer_start,
                infer_end_mono_ns=infer_end,
                publish_mono_ns=publish_mono,
                publish_wall_ns=publish_wall,
                latency_ms=stages,
                dropped_frames=stream.reader.dropped,
                dropped_windows=stream.dropped_windows,
                msg_seq=self.outputs.next_msg_seq(label_topic(stream.camera_id)),
                truth=job.truth,
            )
            self.outputs.label(msg)
            stream.labels_sent += 1
            self.latency.add(stream.camera_id, stages)
            self.interval_latency.add(stream.camera_id, {"total": stages["total"]})
            for observer in self.observers:
                observer.observe_label(msg)
            if stream.events is not None:
                span = WindowSpan(
                    job.first_seq,
                    job.last_seq,
                    job.first_capture_mono_ns,
                    job.first_capture_wall_ns,
                    job.capture_mono_ns,
                    job.capture_wall_ns,
                )
                events = stream.events.push(span, stream.post.scores)
                # the stream's buffer still holds the window's newest frame: no frame is read while a window waits
                wanted = stream.events.peak_seqs() | {e.peak_seq for e in events}
                self.outputs.keep_frame(stream.camera_id, job.last_seq, stream.buf, wanted)
                self.publish_events(stream, events)

    def skip_nonfinite(self, stream: CameraStream, job: WindowJob) -> None:
        """A window whose scores are NaN/Inf (e.g. fp16 overflow) is counted as skipped, never published."""
        stream.dropped_windows += 1
        stream.nonfinite_windows += 1
        if stream.nonfinite_windows & (stream.nonfinite_windows - 1) == 0:  # the 1st, 2nd, 4th, ...: no log flood
            _log.warning(
                "camera %s: window %d-%d has non-finite scores (precision overflow?); skipped (%d so far)",
                stream.camera_id,
                job.first_seq,
                job.last_seq,
                stream.nonfinite_windows,
            )

    def publish_events(self, stream: CameraStream, events: list[EventMessage]) -> None:
        """Publish event messages of ``stream`` on ``events/<camera>/`` (and to the other outputs)."""
        for event in events:
            msg = replace(
                event,
                publish_mono_ns=time.monotonic_ns(),
                publish_wall_ns=time.time_ns(),
                msg_seq=self.outputs.next_msg_seq(event_topic(stream.camera_id)),
            )
            msg = self.outputs.event(msg)
            stream.events_sent += msg.phase == "start"
            for observer in self.observers:
                observer.observe_event(msg)

    def close_events(self) -> None:
        """Close and publish every open event (``end_reason`` ``stopped``): the run is over."""
        for stream in self.streams.values():
            if stream.events is not None:
                self.publish_events(stream, stream.events.interrupt("stopped"))

    def heartbeats(self, cameras: CameraSupervisor) -> None:
        """A ``status/<camera>/`` message per camera every ``heartbeat_s``."""
        now = time.monotonic()
        for cam_id, stream in self.streams.items():
            if now - stream.last_status_mono < self.settings.heartbeat_s:
                continue
            stream.last_status_mono = now
            st = stream.ring.status()
            now_ns = time.monotonic_ns()
            state = state_from_code(st.state)
            if state is SourceState.LIVE and now_ns - st.heartbeat_mono_ns > self.settings.stall_timeout_s * 1e9:
                state = SourceState.STALLED
            self.source_states[cam_id] = (state, st.fps)
            msg = StatusMessage(
                camera_id=cam_id,
                state=state.value,
                fps=st.fps,
                staleness_ms=(now_ns - stream.last_capture_mono_ns) / 1e6 if stream.last_capture_mono_ns else None,
                latest_seq=st.latest_frame_seq,
                reconnects=st.reconnects,
                frames_lost=st.frames_lost,
                dropped_frames=stream.reader.dropped,
                source_width=st.source_width,
                source_height=st.source_height,
                heartbeat_mono_ns=st.heartbeat_mono_ns,
                publish_mono_ns=now_ns,
                publish_wall_ns=time.time_ns(),
                config_hash=self.settings.config_hash,
                detail=cameras.cameras[cam_id].detail,
                outputs=self.outputs.stats(cam_id),
                msg_seq=self.outputs.next_msg_seq(status_topic(cam_id)),
            )
            self.outputs.status(msg)
            for observer in self.observers:
                observer.observe_status(msg)

    def box_stats(self) -> None:
        """The box's ``stats/<box_id>/`` message every ``stats_s``: cameras, fps, latency over the interval, engine,
        drops and the outputs' state."""
        now = time.monotonic()
        if not self.settings.stats_s or now - self.last_stats_mono < self.settings.stats_s:
            return
        interval_s, self.last_stats_mono = now - self.last_stats_mono, now
        summary = self.interval_latency.summary()
        self.interval_latency.reset()
        cameras = {
            cam_id: CameraStats(
                state=self.source_states[cam_id][0].value,
                fps=self.source_states[cam_id][1],
                labels=stream.labels_sent,
                events=stream.events_sent,
                dropped_frames=stream.reader.dropped,
                dropped_windows=stream.dropped_windows,
                latency_ms=_percentiles(summary.get(cam_id)),
            )
            for cam_id, stream in self.streams.items()
        }
        self.outputs.box_stats(
            StatsMessage(
                box_id=self.settings.box_id,
                uptime_s=round(now - self.started_mono, 3),
                interval_s=round(interval_s, 3),
                engine=self.model_info,
                cameras=cameras,
                latency_ms=_percentiles(summary.get(ALL_CAMERAS)),
                publish_dropped=self.outputs.publisher.dropped,
                outputs=self.outputs.stats(),
                publish_mono_ns=time.monotonic_ns(),
                publish_wall_ns=time.time_ns(),
                msg_seq=self.outputs.next_msg_seq(stats_topic(self.settings.box_id)),
            )
        )

    def swap_engine(self, build: BackgroundBuild) -> None:
        """Serve from the engine ``build`` made (the finished background build), from the next window on; logged."""
        self.build = None
        try:
            new = build.engine()
        except BackendUnavailableError as err:
            keep = self.engine.describe().summary()
            _log.warning("background %s build gave no engine (%s); keeping %s", build.step, err.reason, keep)
            return
        finally:
            build.close()
        old, spec = self.engine.input_spec, new.input_spec
        if spec.shape(1) != old.shape(1) or new.device != self.engine.device:
            _log.warning("the engine built in the background takes other clips (%s); not swapping", spec)
            new.close()
            return
        previous, self.engine = self.engine, new
        self.warmup_engine, self.warmup_latency = previous.describe().backend, self.latency.summary()
        self.latency.reset()
        info = new.describe()
        self.model_info = _model_info(info)
        for observer in self.observers:
            observer.set_engine(info)
        _log.info(
            "engine swapped at a window boundary, %.0f s after start: %s -> %s",
            time.monotonic() - build.started,
            previous.describe().backend,
            info.summary(),
        )
        previous.close()
