"""The inference process, composed: engine, outputs, observers, camera processes, streams, scheduler, loop.

``run(cfg)`` builds each part from its config section and wires them in the order a frame travels::

    CameraSupervisor: camera processes, one shared-memory ring each       emim_stream.pipeline.capture.supervisor
      -> CameraStream per camera: ring reader, VMP stage, clip window     emim_stream.pipeline.inference.stream
      -> Scheduler: ready windows, round-robin, up to the max batch       emim_stream.pipeline.inference.scheduler
      -> Engine.infer -> Postprocessor -> EventTracker                    emim_stream.pipeline.inference.loop
      -> Outputs: ZeroMQ PUB, MQTT sink (+ Home Assistant discovery),     emim_stream.pipeline.outputs.dispatch
         webhook sink, event snapshots, recorder, live-view previews
      -> LatencyRecorder, observers (Prometheus metrics, the callbacks)   emim_stream.pipeline.inference.loop

then runs :class:`emim_stream.pipeline.inference.loop.InferenceLoop` until the duration passes, ``stop`` is set or
every camera has
ended, and reports what it did. Every part is closed on every exit path.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from emim_stream.engines.backends import start_engine
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.sampling import SamplingRequest
from emim_stream.pipeline.capture.camera import CameraExit
from emim_stream.pipeline.capture.supervisor import CameraSupervisor
from emim_stream.pipeline.comms.homeassistant import announcement
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage
from emim_stream.pipeline.comms.mqtt import MqttSink, default_box_id
from emim_stream.pipeline.comms.publish import CurveServer, Publisher, SlowSubscriberPolicy
from emim_stream.pipeline.comms.webhook import WebhookSink
from emim_stream.pipeline.config import PipelineConfig, config_hash
from emim_stream.pipeline.inference.latency import LatencyRecorder
from emim_stream.pipeline.inference.loop import CallbackObserver, InferenceLoop, LoopSettings, Observer
from emim_stream.pipeline.inference.scheduler import Scheduler
from emim_stream.pipeline.inference.stream import build_stream
from emim_stream.pipeline.outputs.dispatch import Outputs
from emim_stream.pipeline.outputs.metrics import Metrics
from emim_stream.pipeline.outputs.preview import PreviewTap
from emim_stream.pipeline.outputs.record import Recorder, frames_wanted
from emim_stream.pipeline.outputs.snapshot import Snapshots

__all__ = ["RunReport", "run"]

_log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a run did: labels per camera, drops, the latency summary and why it ended."""

    labels: dict[str, int] = field(default_factory=dict)
    dropped_frames: dict[str, int] = field(default_factory=dict)
    dropped_windows: dict[str, int] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    """Per-window latency summary (after the swap, when an engine was built in the background)."""
    engine: str = ""
    warmup_latency: dict[str, Any] = field(default_factory=dict)
    """Per-window latency summary while the engine was built in the background (empty: no swap)."""
    warmup_engine: str = ""
    """The backend that served while the engine was built (empty: no swap)."""
    reason: str = ""
    publish_dropped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """Cameras whose source cannot work (missing file, corrupt video, no such camera) -> why."""
    misconfigured: dict[str, str] = field(default_factory=dict)
    """Cameras whose settings cannot work with their source (too slow for the model's sampling) -> why."""
    events: dict[str, int] = field(default_factory=dict)
    """Action events started per camera."""
    mqtt: dict[str, Any] | None = None
    """The MQTT sink's final :meth:`emim_stream.pipeline.comms.mqtt.MqttSink.stats` (None: no sink)."""
    webhook: dict[str, Any] | None = None
    """The webhook sink's final :meth:`emim_stream.pipeline.comms.webhook.WebhookSink.stats` (None: no sink)."""
    snapshots: dict[str, int] | None = None
    """Event snapshots ``encoded`` and ``dropped`` (None: no snapshot encoder)."""
    record: dict[str, dict[str, Any]] | None = None
    """Per camera, the recorder's final :meth:`emim_stream.pipeline.outputs.record.Recorder.stats` (None: not
    recording)."""


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
        on_event: called with every published action event message (start, update, end).
        on_publishing: called with the bound endpoint (wildcard port resolved) once the publisher is bound.

    Raises:
        ConfigError: ``ring.slots`` does not exceed the engine's clip length.

    Returns:
        The :class:`RunReport`. Every camera process is stopped, every ring unlinked and the
        sockets closed before this returns, also on errors.
    """
    stop = stop or threading.Event()
    with ExitStack() as resources:
        engine, build = start_engine(cfg.engine)  # warm-up: a missing aoti package builds in the background
        resources.enter_context(engine)
        if build is not None:
            resources.callback(build.close)
        info = engine.describe()
        _log.info("engine: %s", info.summary())
        if engine.vmp is None:
            _log.warning("the checkpoint has no VMP parameters: normalised frames go to the model unchanged")
        publisher = resources.enter_context(_publisher(cfg))
        if on_publishing is not None:
            on_publishing(publisher.endpoint)
        metrics = _metrics(cfg, resources)
        if metrics is not None:
            metrics.set_engine(info)
        spec = engine.input_spec
        if cfg.ring.slots <= spec.frames:
            raise ConfigError(f"ring.slots: must exceed the clip length {spec.frames}, got {cfg.ring.slots}")
        sampling = {
            cam.id: SamplingRequest.for_clip(engine.clip, cfg.stride_of(cam), cfg.frame_interval_of(cam))
            for cam in cfg.cameras
        }
        cameras = resources.enter_context(
            CameraSupervisor(
                cfg.cameras, cfg.ring.slots, spec.height, spec.width, cfg.supervisor, sampling,
                all_frames=frames_wanted(cfg.record, cfg.cameras),
            )
        )
        outputs = Outputs(
            publisher,
            _mqtt(cfg, resources, engine.labels, info.model_name),
            _preview_tap(cfg, resources),
            _recorder(cfg, resources),
            _webhook(cfg, resources),
        )
        outputs.snapshots = _snapshots(cfg, resources, outputs)
        if metrics is not None and outputs.mqtt is not None:
            metrics.watch_mqtt(outputs.mqtt)
        if metrics is not None and outputs.webhook is not None:
            metrics.watch_webhook(outputs.webhook)
        if metrics is not None and outputs.recorder is not None:
            metrics.watch_recorder(outputs.recorder, [c.id for c in cfg.cameras])
        streams = [
            build_stream(
                cam, cameras.cameras[cam.id].ring, engine, cfg.stride_of(cam), cfg.postprocess, cfg.events, outputs.taps
            )
            for cam in cfg.cameras
        ]
        observers: list[Observer] = [] if metrics is None else [metrics]
        observers.append(CallbackObserver(on_label, on_event))
        settings = LoopSettings(
            cfg.ring.slots,
            cfg.publish.heartbeat_s,
            cfg.supervisor.stall_timeout_s,
            config_hash(cfg),
            box_id=cfg.mqtt.box_id or default_box_id(),
            stats_s=cfg.publish.stats_s,
        )
        loop = InferenceLoop(
            engine,
            streams,
            Scheduler([c.id for c in cfg.cameras], spec.max_batch),
            outputs,
            settings,
            latency=LatencyRecorder(),
            observers=observers,
            build=build,
        )
        resources.callback(lambda: loop.engine.close())  # the engine swapped in, if any
        cameras.start()
        reason = loop.run(cameras, duration_s, stop, on_note)
        loop.close_events()
        return _report(reason, loop, cameras, outputs)


def _report(reason: str, loop: InferenceLoop, cameras: CameraSupervisor, outputs: Outputs) -> RunReport:
    """What the run did; closes the snapshot encoder, the sinks (the MQTT sink after the webhook: it takes the
    snapshots) and the recorder first, so their counts are final."""
    streams = loop.streams
    report = RunReport(
        labels={cam_id: s.labels_sent for cam_id, s in streams.items()},
        dropped_frames={cam_id: s.reader.dropped for cam_id, s in streams.items()},
        dropped_windows={cam_id: s.dropped_windows for cam_id, s in streams.items()},
        latency=loop.latency.summary(),
        engine=loop.engine.describe().summary(),
        warmup_latency=loop.warmup_latency,
        warmup_engine=loop.warmup_engine,
        reason=reason,
        publish_dropped=outputs.publisher.dropped,
        failed={cam_id: h.detail for cam_id, h in cameras.cameras.items() if h.finished == CameraExit.SOURCE_ERROR},
        misconfigured={
            cam_id: h.detail for cam_id, h in cameras.cameras.items() if h.finished == CameraExit.CONFIG_ERROR
        },
        events={cam_id: s.events_sent for cam_id, s in streams.items()},
    )
    if outputs.snapshots is not None:
        outputs.snapshots.close()
        report.snapshots = outputs.stats()["snapshots"]
    if outputs.webhook is not None:
        outputs.webhook.close()
        report.webhook = outputs.webhook.stats()
    if outputs.mqtt is not None:
        outputs.mqtt.close()
        report.mqtt = outputs.mqtt.stats()
    if outputs.recorder is not None:
        outputs.recorder.close()
        report.record = {cam_id: outputs.recorder.stats(cam_id) for cam_id in streams}
    return report


def _publisher(cfg: PipelineConfig) -> Publisher:
    p = cfg.publish
    curve = None
    if p.curve_secret_key_file and p.curve_clients_dir:  # set together (PublishConfig)
        curve = CurveServer(p.curve_secret_key_file, p.curve_clients_dir)
    return Publisher(
        p.endpoint,
        p.send_hwm,
        p.linger_ms,
        allow_remote=p.allow_remote,
        slow_subscriber=SlowSubscriberPolicy(p.slow_subscriber),
        curve=curve,
    )


def _metrics(cfg: PipelineConfig, resources: ExitStack) -> Metrics | None:
    m = cfg.metrics
    if m.port is None:
        return None
    metrics = Metrics(m.port, m.host, m.allow_remote, cameras=[c.id for c in cfg.cameras])
    resources.callback(metrics.close)
    return metrics


def _mqtt(cfg: PipelineConfig, resources: ExitStack, labels: Sequence[str], model: str) -> MqttSink | None:
    if cfg.mqtt.host is None:
        return None
    discovery = None
    if cfg.mqtt.home_assistant:
        box_id = cfg.mqtt.box_id or default_box_id()
        event_types = [label for label in labels if label not in cfg.events.exclude] if cfg.events.enabled else []
        cameras = [c.id for c in cfg.cameras]
        discovery = announcement(cfg.mqtt, box_id, cameras, event_types, model, _version())
    return resources.enter_context(MqttSink(cfg.mqtt, announcement=discovery))


def _version() -> str:
    try:
        return importlib.metadata.version("emim-stream")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def _webhook(cfg: PipelineConfig, resources: ExitStack) -> WebhookSink | None:
    if not cfg.webhook.urls:
        return None
    return resources.enter_context(WebhookSink(cfg.webhook))


def _snapshots(cfg: PipelineConfig, resources: ExitStack, outputs: Outputs) -> Snapshots | None:
    """The snapshot encoder when a snapshot has somewhere to go: the MQTT ``snapshot`` topic or event clips."""
    to_mqtt = outputs.mqtt is not None and "snapshot" in cfg.mqtt.kinds
    to_files = outputs.recorder is not None and cfg.record.event_clips
    if not (cfg.events.enabled and (to_mqtt or to_files)):
        return None
    snapshots = Snapshots([c.id for c in cfg.cameras], outputs.deliver_snapshot, height=cfg.record.height)
    resources.callback(snapshots.close)
    return snapshots


def _preview_tap(cfg: PipelineConfig, resources: ExitStack) -> PreviewTap | None:
    if cfg.view.preview_fps <= 0:
        return None
    tap = PreviewTap([c.id for c in cfg.cameras], cfg.view.preview_fps, cfg.view.preview_quality)
    resources.callback(tap.close)
    return tap


def _recorder(cfg: PipelineConfig, resources: ExitStack) -> Recorder | None:
    if cfg.record.dir is None:
        return None
    backoff = (cfg.supervisor.restart_backoff_s, cfg.supervisor.restart_backoff_max_s)
    recorder = Recorder(cfg.record, cfg.cameras, backoff)
    resources.callback(recorder.close)
    return recorder
