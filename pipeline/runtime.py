"""The inference process: rings -> VMP stage -> clip windows -> scheduler -> engine -> publish.

``run(cfg)`` wires the parts and runs the loop below until the duration passes, ``stop`` is
set, or every camera has ended::

    for each camera with no window waiting:        drain its ring frame by frame
        RingReader.read_next -> VmpStage.push -> ClipWindow.push
        a window that completes while the ring already holds the frames of the next one is
        skipped (counted): when behind, only the newest window is served
    Scheduler: ready windows, round-robin over cameras, up to the engine's max batch
    Engine.infer(batch) -> Postprocessor -> Publisher.send -> LatencyRecorder.add
    every heartbeat_s: status/<camera>/ messages
    EventTracker per camera (pipeline.events): closed action events on events/<camera>/
    MqttSink (pipeline.mqtt, outputs.mqtt): copies of the messages to a broker, from its own threads
    frame taps (pipeline.preview, pipeline.record) see each frame read: JPEG previews on preview/<camera>/
    (view.preview_fps) and annotated recordings (record.dir), both encoded in their own threads

The camera processes never wait for this loop: when it falls behind, rings overwrite their oldest
frames and the readers count them as dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from engines.backends import start_engine
from engines.backends.base import Engine
from engines.errors import BackendUnavailableError, ConfigError
from engines.layers.vmp import MEAN, STD
from pipeline.camera import CameraExit, state_from_code
from pipeline.config import CameraConfig, EventsConfig, PipelineConfig, config_hash
from pipeline.events import EventTracker, WindowSpan
from pipeline.latency import LatencyRecorder
from pipeline.messages import (
    EventMessage,
    LabelMessage,
    ModelInfo,
    StatusMessage,
    WindowInfo,
    event_topic,
    label_topic,
    latency_breakdown_ms,
    status_topic,
)
from pipeline.metrics import Metrics
from pipeline.mqtt import MqttSink
from pipeline.postprocess import Postprocessor
from pipeline.preview import PreviewTap
from pipeline.publish import CurveServer, Publisher, SlowSubscriberPolicy
from pipeline.record import Recorder
from pipeline.ring import RingReader, SharedRing
from pipeline.sources import SourceState
from pipeline.supervisor import CameraSupervisor
from pipeline.truth import truth_for
from pipeline.vmp_stage import VmpStage
from pipeline.window import ClipWindow

if TYPE_CHECKING:
    from engines.backends.aoti_engine import BackgroundBuild

__all__ = ["RunReport", "Scheduler", "run"]

_log = logging.getLogger(__name__)
_IDLE_SLEEP_S = 0.0005


@dataclass(frozen=True, slots=True)
class WindowJob:
    """A ready window of one camera, waiting for the engine (its clip is a view, valid until the next push)."""

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


class _CameraStream:
    """Per-camera state of the inference loop."""

    def __init__(
        self,
        cfg: CameraConfig,
        ring: SharedRing,
        engine: Engine,
        stride: int,
        smoothing: float,
        topk: int,
        events: EventsConfig | None = None,
    ):
        spec = engine.input_spec
        vmp = engine.vmp
        mean, std = ((vmp.mean,) * 3, (vmp.std,) * 3) if vmp is not None else ((MEAN,) * 3, (STD,) * 3)
        self.cfg, self.ring, self.stride = cfg, ring, stride
        self.reader = RingReader(ring, start_seq=0)
        self.stage = VmpStage(vmp, engine.device, mean, std, dtype=torch.float32)
        self.window = ClipWindow(spec.frames, stride, spec.height, spec.width, engine.device, torch.float32)
        self.post = Postprocessor(engine.labels, topk, smoothing)
        self.captures: deque[tuple[int, int]] = deque(maxlen=spec.frames)
        """Capture (mono, wall) ns of the last T frames read: when a window is ready, its oldest frame's first."""
        self.events = EventTracker(cfg.id, engine.labels, events) if events is not None and events.enabled else None
        self.closed_events: list[EventMessage] = []
        self.events_sent = 0
        self.truth = truth_for(cfg, engine.labels)
        self.pts: deque[tuple[int, int]] = deque(maxlen=spec.frames + stride + 1)
        """(seq, source pts) of the latest frames: a window's truth is read from its first and last frame."""
        self.buf = np.empty((ring.height, ring.width, 3), dtype=np.uint8)
        self.pending: WindowJob | None = None
        self.dropped_windows = 0
        self.nonfinite_windows = 0
        self.labels_sent = 0
        self.last_capture_mono_ns = 0
        self.last_status_mono = 0.0
        self.taps: tuple[PreviewTap | Recorder, ...] = ()
        """Frame observers (live-view previews, recorder): cheap, non-blocking ``on_frame`` calls."""

    def window_truth(self, first_seq: int, last_seq: int) -> str | None:
        """The true class of the window from the frame before ``first_seq`` (VMP's reference) to ``last_seq``."""
        if self.truth is None:
            return None
        pts = {seq: p for seq, p in self.pts if first_seq - 1 <= seq <= last_seq}
        if last_seq not in pts:
            return None
        return self.truth.window(pts[min(pts)], pts[last_seq])

    def drain(self, limit: int) -> bool:
        """Read up to ``limit`` frames; True when a window is ready (``pending`` set)."""
        for _ in range(limit):
            frame = self.reader.read_next(out=self.buf)
            if frame is None:
                return False
            for tap in self.taps:
                tap.on_frame(self.cfg.id, frame)
            read_mono = time.monotonic_ns()
            self.last_capture_mono_ns = frame.capture_mono_ns
            self.captures.append((frame.capture_mono_ns, frame.capture_wall_ns))
            if self.truth is not None:
                self.pts.append((frame.seq, frame.source_pts_ns))
            prompt = self.stage.push(frame.image, frame.seq)
            if prompt is None:
                self.post.reset()
                if self.events is not None:
                    self.closed_events += self.events.interrupt("gap")
                continue
            vmp_done = time.monotonic_ns()
            if not self.window.push(prompt, frame.seq):
                continue
            if self.window.will_be_ready_within(self.ring.latest_seq - frame.seq):
                self.dropped_windows += 1  # a newer window is already in the ring: serve that one
                continue
            self.pending = WindowJob(
                self.cfg.id,
                self.window.clip(),
                self.window.first_seq,
                frame.seq,
                frame.capture_mono_ns,
                frame.capture_wall_ns,
                frame.ring_mono_ns,
                read_mono,
                vmp_done,
                *self.captures[0],
            )
            return True
        return False


class Scheduler:
    """Picks ready windows for one engine call: round-robin over cameras, at most ``max_batch``.

    Every camera with a ready window is served within ``ceil(cameras / max_batch)`` calls.
    """

    def __init__(self, camera_ids: list[str], max_batch: int) -> None:
        self.order = list(camera_ids)
        self.max_batch = max_batch
        self._start = 0

    def pick(self, ready: set[str]) -> list[str]:
        """Camera ids to serve now, in a fair rotating order."""
        n = len(self.order)
        rotated = [self.order[(self._start + i) % n] for i in range(n)]
        chosen = [c for c in rotated if c in ready][: self.max_batch]
        if chosen:
            self._start = (self.order.index(chosen[-1]) + 1) % n
        return chosen


@dataclass
class RunReport:
    """What a run did: labels per camera, drops, the latency summary and why it ended."""

    labels: dict[str, int] = field(default_factory=dict)
    dropped_frames: dict[str, int] = field(default_factory=dict)
    dropped_windows: dict[str, int] = field(default_factory=dict)
    latency: dict = field(default_factory=dict)
    engine: str = ""
    reason: str = ""
    publish_dropped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """Cameras whose source cannot work (missing file, corrupt video, no such camera) -> why."""
    events: dict[str, int] = field(default_factory=dict)
    mqtt: dict | None = None
    """The MQTT sink's final :meth:`pipeline.mqtt.MqttSink.stats` (None: no sink)."""


def run(
    cfg: PipelineConfig,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    on_label: Callable[[LabelMessage], None] | None = None,
    on_note: Callable[[str, str], None] | None = None,
    on_event: Callable[[EventMessage], None] | None = None,
    on_publishing: Callable[[str], None] | None = None,
) -> RunReport:
    """Run the pipeline until ``duration_s`` passes, ``stop`` is set or every camera has ended.

    Args:
        cfg: the validated pipeline config.
        duration_s: stop after this many seconds (None: run until stopped).
        stop: set it (e.g. from a signal handler) to end the run cleanly.
        on_label: called with every published label message.
        on_note: called with ``(camera_id, text)`` for every camera problem report.
        on_event: called with every published (closed) action event.
        on_publishing: called with the bound endpoint (wildcard port resolved) once the publisher is bound.

    Raises:
        ConfigError: ``ring.slots`` does not exceed the engine's clip length.

    Returns:
        The :class:`RunReport`. Every camera process is stopped, every ring unlinked and the
        sockets closed before this returns, also on errors.
    """
    stop = stop or threading.Event()
    report = RunReport()
    with ExitStack() as resources:
        engine, build = start_engine(cfg.engine)  # warm-up: a missing aoti package builds in the background
        resources.enter_context(engine)
        if build is not None:
            resources.callback(build.close)
        info = engine.describe()
        report.engine = info.summary()
        _log.info("engine: %s", report.engine)
        if engine.vmp is None:
            _log.warning("the checkpoint has no VMP parameters: normalised frames go to the model unchanged")
        publisher = resources.enter_context(
            Publisher(
                cfg.publish.endpoint,
                cfg.publish.send_hwm,
                cfg.publish.linger_ms,
                allow_remote=cfg.publish.allow_remote,
                slow_subscriber=SlowSubscriberPolicy(cfg.publish.slow_subscriber),
                curve=_curve(cfg),
            )
        )
        if on_publishing is not None:
            on_publishing(publisher.endpoint)
        metrics = None
        if cfg.metrics.port is not None:
            metrics = Metrics(
                cfg.metrics.port, cfg.metrics.host, cfg.metrics.allow_remote, cameras=[c.id for c in cfg.cameras]
            )
            resources.callback(metrics.close)
            metrics.set_engine(info)
        spec = engine.input_spec
        if cfg.ring.slots <= spec.frames:
            raise ConfigError(f"ring.slots: must exceed the clip length {spec.frames}, got {cfg.ring.slots}")
        sup = resources.enter_context(
            CameraSupervisor(cfg.cameras, cfg.ring.slots, spec.height, spec.width, cfg.supervisor)
        )
        loop = _Loop(cfg, engine, sup, publisher, metrics, on_label, on_note)
        loop.on_event = on_event
        loop.build = build
        resources.callback(lambda: loop.engine.close())  # the engine swapped in, if any
        if cfg.outputs.mqtt.host is not None:
            loop.mqtt = resources.enter_context(MqttSink(cfg.outputs.mqtt))
            if metrics is not None:
                metrics.watch_mqtt(loop.mqtt)
        loop.add_taps(_preview_tap(cfg, resources), _recorder(cfg, resources))
        sup.start()
        report.reason = loop.run(duration_s, stop)
        report.engine = loop.engine.describe().summary()
        for cam in loop.cams.values():
            if cam.events is not None:
                loop.publish_events(cam, cam.events.interrupt("stopped"))
        for cam_id, cam in loop.cams.items():
            report.labels[cam_id] = cam.labels_sent
            report.dropped_frames[cam_id] = cam.reader.dropped
            report.dropped_windows[cam_id] = cam.dropped_windows
            report.events[cam_id] = cam.events_sent
        report.failed = {cam_id: h.detail for cam_id, h in sup.cameras.items() if h.finished == CameraExit.SOURCE_ERROR}
        report.publish_dropped = publisher.dropped
        report.latency = loop.recorder.summary()
        if loop.mqtt is not None:
            loop.mqtt.close()
            report.mqtt = loop.mqtt.stats()
    return report


def _preview_tap(cfg: PipelineConfig, resources: ExitStack) -> PreviewTap | None:
    if cfg.view.preview_fps <= 0:
        return None
    tap = PreviewTap([c.id for c in cfg.cameras], cfg.view.preview_fps, cfg.view.preview_quality)
    resources.callback(tap.close)
    return tap


def _recorder(cfg: PipelineConfig, resources: ExitStack) -> Recorder | None:
    if cfg.record.dir is None:
        return None
    recorder = Recorder(cfg.record, [c.id for c in cfg.cameras])
    resources.callback(recorder.close)
    return recorder


def _curve(cfg: PipelineConfig) -> CurveServer | None:
    p = cfg.publish
    return CurveServer(p.curve_secret_key_file, p.curve_clients_dir) if p.curve_secret_key_file else None


class _Loop:
    """The inference loop over all cameras (see the module docstring)."""

    def __init__(self, cfg, engine, sup, publisher, metrics, on_label, on_note) -> None:
        self.cfg, self.engine, self.sup, self.publisher, self.metrics = cfg, engine, sup, publisher, metrics
        self.on_label, self.on_note = on_label, on_note
        self.recorder = LatencyRecorder()
        self.cfg_hash = config_hash(cfg)
        info = engine.describe()
        self.model_info = ModelInfo(info.model_name, info.backend, info.precision, info.device, info.checkpoint_sha256)
        out = cfg.output
        self.cams = {
            cam.id: _CameraStream(
                cam, sup.cameras[cam.id].ring, engine, cfg.stride_of(cam), out.smoothing, out.topk, cfg.events
            )
            for cam in cfg.cameras
        }
        self.scheduler = Scheduler(list(self.cams), engine.input_spec.max_batch)
        self.preview: PreviewTap | None = None
        self.recording: Recorder | None = None
        self.mqtt: MqttSink | None = None
        self.on_event: Callable[[EventMessage], None] | None = None
        self.build: BackgroundBuild | None = None
        """A compiled engine building in the background; swapped in when done (DESIGN "Warm-up")."""

    def add_taps(self, preview: PreviewTap | None, recorder: Recorder | None) -> None:
        """Show every camera's frames to the live-view previews and the recorder (either may be None)."""
        self.preview, self.recording = preview, recorder
        taps = tuple(t for t in (preview, recorder) if t is not None)
        for cam in self.cams.values():
            cam.taps = taps

    def run(self, duration_s: float | None, stop: threading.Event) -> str:
        """Loop until stopped; returns why it ended."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        drain_limit = self.cfg.ring.slots
        while True:
            if stop.is_set():
                return "stopped"
            if deadline is not None and time.monotonic() >= deadline:
                return "duration reached"
            if self.build is not None and self.build.done():
                self.swap_engine()  # between engine calls: a window boundary
            for cam_id, text in self.sup.poll():
                if self.on_note is not None:
                    self.on_note(cam_id, text)
            busy = False
            for cam in self.cams.values():
                if cam.pending is None:
                    busy |= cam.drain(drain_limit)
                if cam.closed_events:
                    self.publish_events(cam, cam.closed_events)
                    cam.closed_events = []
            chosen = self.scheduler.pick({cam_id for cam_id, cam in self.cams.items() if cam.pending is not None})
            if chosen:
                self.serve([self.cams[c] for c in chosen])
                busy = True
            self.heartbeats()
            if self.preview is not None:
                for topic, payload in self.preview.take():
                    self.publisher.send(topic, payload)
            if not busy:
                if self.sup.all_finished() and all(c.ring.latest_seq < c.reader.next_seq for c in self.cams.values()):
                    return "all cameras ended"
                time.sleep(_IDLE_SLEEP_S)

    def skip_nonfinite(self, cam: _CameraStream, job: WindowJob) -> None:
        """A window whose scores are NaN/Inf (e.g. fp16 overflow) is counted as skipped, never published."""
        cam.dropped_windows += 1
        cam.nonfinite_windows += 1
        if cam.nonfinite_windows & (cam.nonfinite_windows - 1) == 0:  # the 1st, 2nd, 4th, ...: no log flood
            _log.warning(
                "camera %s: window %d-%d has non-finite scores (precision overflow?); skipped (%d so far)",
                cam.cfg.id, job.first_seq, job.last_seq, cam.nonfinite_windows,
            )

    def swap_engine(self) -> None:
        """Serve from the engine the background build made, from the next window on; logged."""
        build, self.build = self.build, None
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
        info = new.describe()
        self.model_info = ModelInfo(info.model_name, info.backend, info.precision, info.device, info.checkpoint_sha256)
        if self.metrics is not None:
            self.metrics.set_engine(info)
        _log.info(
            "engine swapped at a window boundary, %.0f s after start: %s -> %s",
            time.monotonic() - build.started,
            previous.describe().backend,
            info.summary(),
        )
        previous.close()

    def serve(self, batch: list[_CameraStream]) -> None:
        """One engine call for the pending windows of ``batch``, then one label message per camera."""
        jobs = [cam.pending for cam in batch]
        clips = jobs[0].clip.unsqueeze(0) if len(jobs) == 1 else torch.stack([j.clip for j in jobs])
        infer_start = time.monotonic_ns()
        logits = self.engine.infer(clips)
        infer_end = time.monotonic_ns()
        for cam, job, row in zip(batch, jobs, logits, strict=True):
            cam.pending = None
            if not bool(torch.isfinite(row).all()):
                self.skip_nonfinite(cam, job)
                continue
            topk = tuple(cam.post(row))
            topic = label_topic(cam.cfg.id)
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
                camera_id=cam.cfg.id,
                window=WindowInfo(job.first_seq, job.last_seq, cam.window.frames, cam.stride),
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
                dropped_frames=cam.reader.dropped,
                dropped_windows=cam.dropped_windows,
                msg_seq=self.publisher.next_msg_seq(topic),
                truth=cam.window_truth(job.first_seq, job.last_seq),
            )
            payload = msg.to_payload()
            self.publisher.send(topic, payload)
            if self.mqtt is not None:
                self.mqtt.send("label", cam.cfg.id, payload)
            if self.recording is not None:
                self.recording.on_label(msg)
            cam.labels_sent += 1
            self.recorder.add(cam.cfg.id, stages)
            if self.metrics is not None:
                self.metrics.observe_label(msg)
            if self.on_label is not None:
                self.on_label(msg)
            if cam.events is not None:
                span = WindowSpan(
                    job.first_seq,
                    job.last_seq,
                    job.first_capture_mono_ns,
                    job.first_capture_wall_ns,
                    job.capture_mono_ns,
                    job.capture_wall_ns,
                )
                self.publish_events(cam, cam.events.push(span, cam.post.scores))

    def publish_events(self, cam: _CameraStream, events: list[EventMessage]) -> None:
        """Publish closed action events of ``cam`` on ``events/<camera>/`` (and to the MQTT sink)."""
        for event in events:
            topic = event_topic(cam.cfg.id)
            msg = replace(
                event,
                publish_mono_ns=time.monotonic_ns(),
                publish_wall_ns=time.time_ns(),
                msg_seq=self.publisher.next_msg_seq(topic),
            )
            payload = msg.to_payload()
            self.publisher.send(topic, payload)
            if self.mqtt is not None:
                self.mqtt.send("event", cam.cfg.id, payload)
            if self.recording is not None:
                self.recording.on_event(msg)
            cam.events_sent += 1
            if self.metrics is not None:
                self.metrics.observe_event(msg)
            if self.on_event is not None:
                self.on_event(msg)

    def heartbeats(self) -> None:
        """A ``status/<camera>/`` message per camera every ``publish.heartbeat_s``."""
        now = time.monotonic()
        for cam_id, cam in self.cams.items():
            if now - cam.last_status_mono < self.cfg.publish.heartbeat_s:
                continue
            cam.last_status_mono = now
            st = cam.ring.status()
            now_ns = time.monotonic_ns()
            state = state_from_code(st.state)
            if state is SourceState.LIVE and now_ns - st.heartbeat_mono_ns > self.cfg.supervisor.stall_timeout_s * 1e9:
                state = SourceState.STALLED
            topic = status_topic(cam_id)
            msg = StatusMessage(
                camera_id=cam_id,
                state=state.value,
                fps=st.fps,
                staleness_ms=(now_ns - cam.last_capture_mono_ns) / 1e6 if cam.last_capture_mono_ns else None,
                latest_seq=st.latest_seq,
                reconnects=st.reconnects,
                frames_lost=st.frames_lost,
                dropped_frames=cam.reader.dropped,
                source_width=st.source_width,
                source_height=st.source_height,
                heartbeat_mono_ns=st.heartbeat_mono_ns,
                publish_mono_ns=now_ns,
                publish_wall_ns=time.time_ns(),
                config_hash=self.cfg_hash,
                detail=self.sup.cameras[cam_id].detail,
                outputs={} if self.mqtt is None else {"mqtt": self.mqtt.stats()},
                msg_seq=self.publisher.next_msg_seq(topic),
            )
            payload = msg.to_payload()
            self.publisher.send(topic, payload)
            if self.mqtt is not None:
                self.mqtt.send("status", cam_id, payload)
            if self.metrics is not None:
                self.metrics.observe_status(msg)
