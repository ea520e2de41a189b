"""Pipeline metrics for a monitoring stack, through ``prometheus_client``.

:class:`Metrics` owns a private :class:`prometheus_client.CollectorRegistry` (so several pipelines or tests in one
process never share series) and serves it with ``prometheus_client.start_http_server`` from a daemon thread, on
127.0.0.1 unless configured otherwise. The runtime feeds it the messages it publishes; the MQTT sink's counters are
read at scrape time (:meth:`Metrics.watch_mqtt`), so are the webhook sink's (:meth:`Metrics.watch_webhook`).

Series (label ``camera`` = camera id):

- ``emim_frames_total`` counter: frames the camera decoded (its newest frame number + 1, from heartbeats).
- ``emim_labels_published_total`` counter: label messages published (= windows classified).
- ``emim_dropped_frames_total`` counter: frames the pipeline never processed (ring overruns, torn reads, gaps).
- ``emim_dropped_windows_total`` counter: ready windows skipped because inference was behind.
- ``emim_frames_lost_total`` counter: frames lost upstream of the ring (source side).
- ``emim_reconnects_total`` counter: source reconnections.
- ``emim_events_total`` counter, labels ``camera``, ``label``: action events started.
- ``emim_camera_fps`` gauge: frames per second the camera delivers.
- ``emim_camera_staleness_seconds`` gauge: heartbeat time minus capture time of the newest processed frame.
- ``emim_camera_state`` gauge, labels ``camera``, ``state``: one series per source state from the start, 1 for the
  current state (``connecting`` until the first heartbeat) and 0 for the others, so an alert on ``stalled`` has a
  series before it ever happens.
- ``emim_stage_latency_seconds`` histogram, labels ``camera``, ``stage``: the stages of each label message
  (``latency.stages``), in seconds, buckets :data:`LATENCY_BUCKETS_MS` (ms).
- ``emim_engine_info`` gauge = 1, labels ``model``, ``backend``, ``precision``, ``device``, ``checkpoint_sha256``.
- With an MQTT sink: ``emim_mqtt_sent_total``, ``emim_mqtt_dropped_total``, ``emim_mqtt_reconnects_total``
  (counters), ``emim_mqtt_queued`` (gauge) and ``emim_mqtt_state{state}`` (gauge, 1 for the current state).
- With a webhook sink: ``emim_webhook_sent_total``, ``emim_webhook_dropped_total`` (counters), ``emim_webhook_queued``
  (gauge) and ``emim_webhook_state{state}`` (gauge).
- While recording, per camera: ``emim_record_frames_written_total``, ``emim_record_frames_lost_total`` (to write
  errors), ``emim_record_write_errors_total``, ``emim_record_frames_dropped_total`` (encoder behind) counters and
  ``emim_record_write_error`` (gauge, 1 while the camera's recording is failing).

Counters mirror the cumulative counts the messages carry; they never go down (a pipeline restart starts a new
process and new series, as Prometheus expects).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from emim_stream.pipeline.capture.sources import SourceState
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage, StatusMessage
from emim_stream.pipeline.comms.webhook import WEBHOOK_STATES
from emim_stream.pipeline.endpoints import is_loopback
from emim_stream.pipeline.errors import PublishError

__all__ = ["LATENCY_BUCKETS_MS", "MQTT_STATES", "Metrics"]

_log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Upper bounds of the stage latency histogram buckets in ms (a ``+Inf`` bucket follows)."""
ENGINE_LABELS = ("model", "backend", "precision", "device", "checkpoint_sha256")
MQTT_STATES = ("connecting", "connected", "unreachable", "reconnecting", "refused", "rejecting", "closed")
"""States of :class:`emim_stream.pipeline.comms.mqtt.MqttSink`, each a series of ``emim_mqtt_state``."""

prometheus_client.disable_created_metrics()  # no ``*_created`` series: counters here start with the process


class StatsSource(Protocol):
    """Anything with a ``stats()`` dict like :meth:`emim_stream.pipeline.comms.mqtt.MqttSink.stats`."""

    def stats(self) -> dict[str, Any]: ...


class CameraStatsSource(Protocol):
    """Anything with a per-camera ``stats(camera_id)``, like
    :meth:`emim_stream.pipeline.outputs.record.Recorder.stats`."""

    def stats(self, camera_id: str) -> dict[str, Any]: ...


class Metrics:
    """The pipeline's metrics, optionally served on ``http://host:port/metrics``.

    Thread-safe (prometheus_client's metrics are). A context manager; :meth:`close` stops the server.

    Args:
        port: HTTP port (0: any free one, see :attr:`port`); None: collect only (see :meth:`render`).
        host: address to bind. Anything but loopback needs ``allow_remote`` (the publisher's rule) and logs a
            warning: the endpoint has no authentication.
        allow_remote: allow a non-loopback ``host``.
        cameras: camera ids whose state series exist from the start (``connecting`` = 1).

    Raises:
        PublishError: the port cannot be bound, or a non-loopback host without ``allow_remote``.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        allow_remote: bool = False,
        cameras: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("emim_frames", "Frames the camera delivered into the ring", ["camera"], registry=r)
        self.labels = Counter(
            "emim_labels_published", "Label messages (classified windows) published", ["camera"], registry=r
        )
        self.dropped_frames = Counter(
            "emim_dropped_frames", "Frames the pipeline never processed (overruns, torn reads)", ["camera"], registry=r
        )
        self.dropped_windows = Counter(
            "emim_dropped_windows", "Ready windows skipped because inference was behind", ["camera"], registry=r
        )
        self.frames_lost = Counter(
            "emim_frames_lost", "Frames lost upstream of the ring (source)", ["camera"], registry=r
        )
        self.reconnects = Counter("emim_reconnects", "Source reconnections", ["camera"], registry=r)
        self.events = Counter("emim_events", "Action events started", ["camera", "label"], registry=r)
        self.fps = Gauge("emim_camera_fps", "Frames per second the camera delivers", ["camera"], registry=r)
        self.staleness = Gauge(
            "emim_camera_staleness_seconds",
            "Heartbeat time minus capture time of the newest frame",
            ["camera"],
            registry=r,
        )
        self.state = Gauge(
            "emim_camera_state", "1 for the current source state of the camera, 0 for the others", ["camera", "state"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "emim_stage_latency_seconds",
            "Per-window latency of each pipeline stage (CLOCK_MONOTONIC)",
            ["camera", "stage"],
            buckets=[b / 1000 for b in LATENCY_BUCKETS_MS],
            registry=r,
        )
        self.engine = Info("emim_engine", "Identity of the inference engine (value 1)", registry=r)
        self._mirrored: dict[tuple[Counter, str], float] = {}
        self._lock = threading.Lock()
        for camera_id in cameras:
            self._set_state(camera_id, SourceState.CONNECTING.value)
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        if port is not None:
            self._serve(host, port, allow_remote)

    def _serve(self, host: str, port: int, allow_remote: bool) -> None:
        if not is_loopback(host):
            if not allow_remote:
                raise PublishError(
                    f"metrics host {host!r} is not a loopback address; serving it exposes the metrics to the network. "
                    "Use 127.0.0.1, or allow it explicitly (metrics.allow_remote: true)"
                )
            _log.warning("metrics are served on %s:%d without authentication (metrics.allow_remote)", host, port)
        try:
            self._http = prometheus_client.start_http_server(port, host, self.registry)
        except OSError as err:
            raise PublishError(
                f"cannot serve metrics on {host}:{port}: {err.strerror or err}; choose a free port (0 = any free one)"
            ) from err
        _log.info("metrics on http://%s:%d/metrics", host, self.port)

    @property
    def port(self) -> int | None:
        """The bound HTTP port, or None when not serving."""
        return None if self._http is None else self._http[0].server_address[1]

    def observe_label(self, msg: LabelMessage) -> None:
        """Count a published label, mirror its drop counters and record its stage latencies."""
        cam = msg.camera_id
        self.labels.labels(cam).inc()
        self._mirror(self.dropped_frames, cam, msg.dropped_frames)
        self._mirror(self.dropped_windows, cam, msg.dropped_windows)
        for stage, ms in msg.latency_ms.items():
            self.latency.labels(cam, stage).observe(ms / 1000)

    def observe_status(self, msg: StatusMessage) -> None:
        """Mirror a heartbeat's counters, fps, staleness and source state."""
        cam = msg.camera_id
        self._mirror(self.frames, cam, msg.latest_seq + 1)
        self._mirror(self.dropped_frames, cam, msg.dropped_frames)
        self._mirror(self.frames_lost, cam, msg.frames_lost)
        self._mirror(self.reconnects, cam, msg.reconnects)
        self.fps.labels(cam).set(msg.fps)
        if msg.staleness_ms is None:
            self.staleness.remove(cam)  # unknown: no sample (a no-op when there is none)
        else:
            self.staleness.labels(cam).set(msg.staleness_ms / 1000)
        self._set_state(cam, msg.state)

    def observe_event(self, msg: EventMessage) -> None:
        """Count an action event that started."""
        if msg.phase == "start":
            self.events.labels(msg.camera_id, msg.label).inc()

    def set_engine(self, info: Mapping[str, Any] | Any) -> None:
        """Set the engine identity from a mapping or dataclass (e.g. ``EngineInfo``).

        ``model`` is read from the key ``model``, ``model_name`` or ``name``; missing labels are empty.
        """
        fields = dict(info) if isinstance(info, Mapping) else dataclasses.asdict(info)
        model = fields.get("model", fields.get("model_name", fields.get("name", "")))
        self.engine.info({"model": str(model), **{key: str(fields.get(key, "")) for key in ENGINE_LABELS[1:]}})

    def watch_mqtt(self, sink: StatsSource) -> None:
        """Export the MQTT sink's counters and state, read at every scrape."""
        counters = (
            ("sent", "Messages the broker confirmed (QoS 0: written to the connection)"),
            ("dropped", "Messages dropped (queue full while the broker was away, or refused)"),
            ("reconnects", "Reconnections to the broker"),
        )
        self.registry.register(_SinkCollector(sink, "emim_mqtt", "the broker", counters, MQTT_STATES))

    def watch_webhook(self, sink: StatsSource) -> None:
        """Export the webhook sink's counters and state, read at every scrape."""
        counters = (
            ("sent", "Events the webhook servers accepted (2xx)"),
            ("dropped", "Events dropped (queue full, or failed after the retries)"),
        )
        self.registry.register(_SinkCollector(sink, "emim_webhook", "the webhook servers", counters, WEBHOOK_STATES))

    def watch_recorder(self, recorder: CameraStatsSource, cameras: list[str]) -> None:
        """Export each camera's recording counters and write-error state, read at every scrape."""
        self.registry.register(_RecordCollector(recorder, cameras))

    def render(self) -> str:
        """All metrics in the Prometheus text format (what a scrape gets)."""
        return prometheus_client.generate_latest(self.registry).decode()

    def close(self) -> None:
        """Stop the HTTP server. Idempotent."""
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join()
            self._http = None

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mirror(self, counter: Counter, camera_id: str, total: float) -> None:
        """Raise ``counter{camera}`` to an external cumulative ``total`` (a lower, older total is ignored)."""
        key = (counter, camera_id)
        with self._lock:
            previous = self._mirrored.get(key)
            if previous is not None and total <= previous:
                return
            self._mirrored[key] = total
        counter.labels(camera_id).inc(total - (previous or 0))

    def _set_state(self, camera_id: str, current: str) -> None:
        for state in {*(s.value for s in SourceState), current}:
            self.state.labels(camera_id, state).set(1 if state == current else 0)


class _SinkCollector:
    """A sink's stats as metric families, read at scrape time: counters, ``queued`` and the state."""

    def __init__(
        self, sink: StatsSource, prefix: str, peer: str, counters: tuple[tuple[str, str], ...], states: Iterable[str]
    ) -> None:
        self.sink, self.prefix, self.peer, self.counters, self.states = sink, prefix, peer, counters, tuple(states)

    def collect(self) -> Iterator[Metric]:
        stats = self.sink.stats()
        for key, text in self.counters:
            yield CounterMetricFamily(f"{self.prefix}_{key}", text, value=stats[key])
        yield GaugeMetricFamily(f"{self.prefix}_queued", f"Messages waiting for {self.peer}", value=stats["queued"])
        state = GaugeMetricFamily(f"{self.prefix}_state", "1 for the sink's current state", labels=["state"])
        for name in self.states:
            state.add_metric([name], 1 if stats["state"] == name else 0)
        yield state


class _RecordCollector:
    """The recorder's per-camera stats as metric families, read at scrape time."""

    def __init__(self, recorder: CameraStatsSource, cameras: list[str]) -> None:
        self.recorder, self.cameras = recorder, cameras

    def collect(self) -> Iterator[Metric]:
        stats = {camera: self.recorder.stats(camera) for camera in self.cameras}
        for name, key, text in (
            ("emim_record_frames_written", "written", "Frames written into recording segments"),
            ("emim_record_frames_lost", "lost", "Frames lost to write errors (full disk, removed or read-only dir)"),
            ("emim_record_write_errors", "write_errors", "Write errors of the recording"),
            ("emim_record_frames_dropped", "dropped", "Frames not recorded because the encoder was behind"),
        ):
            family = CounterMetricFamily(name, text, labels=["camera"])
            for camera, values in stats.items():
                family.add_metric([camera], values[key])
            yield family
        failing = GaugeMetricFamily("emim_record_write_error", "1 while the recording is failing", labels=["camera"])
        for camera, values in stats.items():
            failing.add_metric([camera], 1 if values["state"] == "write_error" else 0)
        yield failing
        copied = {camera: values for camera, values in stats.items() if "reconnects" in values}  # record_source
        if copied:
            up = GaugeMetricFamily(
                "emim_record_source_up", "1 while the camera's record_source (main stream) is read", labels=["camera"]
            )
            for camera, values in copied.items():
                up.add_metric([camera], 1 if values["state"] in ("recording", "write_error") else 0)
            yield up
