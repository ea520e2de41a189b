"""Pipeline metrics for a monitoring stack: plain counters, gauges and histograms, one Prometheus exporter.

:class:`Counter`, :class:`Gauge` and :class:`Histogram` are plain Python and know nothing of Prometheus;
:func:`render_prometheus` is the one place that writes the text exposition format (version 0.0.4), and
:class:`Metrics` serves it over HTTP (``GET /metrics``) from a daemon thread, on 127.0.0.1 by default, with the
standard library only. The runtime feeds :class:`Metrics` the messages it publishes.

Series (label ``camera`` = camera id):

- ``emim_frames_total`` counter: frames the camera delivered into the ring (newest frame seq + 1, from heartbeats).
- ``emim_labels_published_total`` counter: label messages published (= windows classified).
- ``emim_dropped_frames_total`` counter: frames the pipeline never processed (ring overruns, torn reads, gaps).
- ``emim_dropped_windows_total`` counter: ready windows skipped because inference was behind.
- ``emim_frames_lost_total`` counter: frames lost upstream of the ring (source side).
- ``emim_reconnects_total`` counter: source reconnections.
- ``emim_camera_fps`` gauge: frames per second the camera delivers.
- ``emim_camera_staleness_seconds`` gauge: heartbeat time minus capture time of the newest processed frame.
- ``emim_camera_state`` gauge, labels ``camera``, ``state``: 1 for the current source state, 0 for states seen before.
- ``emim_stage_latency_seconds`` histogram, labels ``camera``, ``stage``: the stages of each label message
  (``latency.stages``, whatever they are), in seconds as Prometheus prefers, with fixed buckets
  :data:`LATENCY_BUCKETS_MS` (ms).
- ``emim_engine_info`` gauge = 1, labels ``model``, ``backend``, ``precision``, ``device``, ``checkpoint_sha256``.

Counters mirror the cumulative counts the messages carry; they never go down (a pipeline restart starts a new
process and new series, as Prometheus expects).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline.errors import PublishError
from pipeline.messages import LabelMessage, StatusMessage

__all__ = [
    "LATENCY_BUCKETS_MS",
    "Counter",
    "Gauge",
    "Histogram",
    "Metrics",
    "render_prometheus",
]

_LOG = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Upper bounds of the stage latency histogram buckets in ms (a ``+Inf`` bucket follows)."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_LABELS = ("model", "backend", "precision", "device", "checkpoint_sha256")

Labels = tuple[str, ...]


class Counter:
    """A monotonic count per label values.

    Args:
        name: metric name (``*_total`` by convention), description: one line, labelnames: label names.
    """

    kind = "counter"

    def __init__(self, name: str, description: str, labelnames: Iterable[str] = ()) -> None:
        self.name = name
        self.description = description
        self.labelnames = tuple(labelnames)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (amount {amount})")
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def raise_to(self, labels: Labels, total: float) -> None:
        """Mirror an external cumulative count: take ``total`` if it is higher (a counter never goes down)."""
        if total > self.values.get(labels, -math.inf):
            self.values[labels] = float(total)


class Gauge:
    """A value that goes up and down, per label values."""

    kind = "gauge"

    def __init__(self, name: str, description: str, labelnames: Iterable[str] = ()) -> None:
        self.name = name
        self.description = description
        self.labelnames = tuple(labelnames)
        self.values: dict[Labels, float] = {}

    def set(self, labels: Labels, value: float) -> None:
        self.values[labels] = float(value)

    def remove(self, labels: Labels) -> None:
        """Drop the series of these label values (absent = unknown)."""
        self.values.pop(labels, None)


class Histogram:
    """Counts of observations per bucket (upper bounds, ascending), their sum and count, per label values."""

    kind = "histogram"

    def __init__(self, name: str, description: str, labelnames: Iterable[str], buckets: Iterable[float]) -> None:
        self.name = name
        self.description = description
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(float(b) for b in buckets)
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"histogram {name} buckets must be strictly ascending, got {self.buckets}")
        self.series: dict[Labels, _HistogramSeries] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _HistogramSeries(len(self.buckets) + 1)
        series.counts[bisect_left(self.buckets, value)] += 1  # bucket i holds buckets[i-1] < value <= buckets[i]
        series.sum += value
        series.count += 1


class _HistogramSeries:
    """Non-cumulative counts per bucket (the last one is ``+Inf``), sum and count of one label set."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n
        self.sum = 0.0
        self.count = 0


Metric = Counter | Gauge | Histogram


def render_prometheus(metrics: Iterable[Metric]) -> str:
    """The Prometheus text exposition format (0.0.4) of ``metrics``: HELP, TYPE, then one line per sample."""
    lines: list[str] = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {_escape_help(metric.description)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        if isinstance(metric, Histogram):
            bounds = [*(_number(b) for b in metric.buckets), "+Inf"]
            for labels, series in metric.series.items():
                pairs = list(zip(metric.labelnames, labels, strict=True))
                cumulative = 0
                for bound, n in zip(bounds, series.counts, strict=True):
                    cumulative += n
                    lines.append(f"{metric.name}_bucket{_labels([*pairs, ('le', bound)])} {cumulative}")
                lines.append(f"{metric.name}_sum{_labels(pairs)} {_number(series.sum)}")
                lines.append(f"{metric.name}_count{_labels(pairs)} {series.count}")
        else:
            for labels, value in metric.values.items():
                lines.append(f"{metric.name}{_labels(zip(metric.labelnames, labels, strict=True))} {_number(value)}")
    return "\n".join(lines) + "\n"


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs)
    return f"{{{body}}}" if body else ""


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Metrics:
    """The pipeline's metrics, optionally served on ``http://host:port/metrics``.

    Thread-safe: the runtime observes while the HTTP thread renders. A context manager.

    Args:
        port: HTTP port to serve on (0: any free one, see :attr:`port`); None: collect only (see :meth:`render`).
        host: address to bind; the default keeps the endpoint on this host. Anything else exposes it.

    Raises:
        PublishError: the port cannot be bound.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self.frames = Counter("emim_frames_total", "Frames the camera delivered into the ring", ["camera"])
        self.labels = Counter(
            "emim_labels_published_total", "Label messages (classified windows) published", ["camera"]
        )
        self.dropped_frames = Counter(
            "emim_dropped_frames_total", "Frames the pipeline never processed (overruns, torn reads)", ["camera"]
        )
        self.dropped_windows = Counter(
            "emim_dropped_windows_total", "Ready windows skipped because inference was behind", ["camera"]
        )
        self.frames_lost = Counter("emim_frames_lost_total", "Frames lost upstream of the ring (source)", ["camera"])
        self.reconnects = Counter("emim_reconnects_total", "Source reconnections", ["camera"])
        self.fps = Gauge("emim_camera_fps", "Frames per second the camera delivers", ["camera"])
        self.staleness = Gauge(
            "emim_camera_staleness_seconds", "Heartbeat time minus capture time of the newest frame", ["camera"]
        )
        self.state = Gauge("emim_camera_state", "1 for the current source state of the camera", ["camera", "state"])
        self.latency = Histogram(
            "emim_stage_latency_seconds",
            "Per-window latency of each pipeline stage (CLOCK_MONOTONIC)",
            ["camera", "stage"],
            [b / 1000 for b in LATENCY_BUCKETS_MS],
        )
        self.engine = Gauge("emim_engine_info", "Identity of the inference engine (value 1)", ENGINE_LABELS)
        self._all: tuple[Metric, ...] = (
            self.frames,
            self.labels,
            self.dropped_frames,
            self.dropped_windows,
            self.frames_lost,
            self.reconnects,
            self.fps,
            self.staleness,
            self.state,
            self.latency,
            self.engine,
        )
        self._server: _MetricsServer | None = None
        self._thread: threading.Thread | None = None
        if port is not None:
            self._serve(host, port)

    def _serve(self, host: str, port: int) -> None:
        try:
            self._server = _MetricsServer((host, port), _MetricsHandler, self.render)
        except OSError as err:
            raise PublishError(
                f"cannot serve metrics on {host}:{port}: {err}; choose a free port (0 = any free one)"
            ) from err
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="emim-metrics", daemon=True
        )
        self._thread.start()
        _LOG.info("metrics on http://%s:%d/metrics", host, self.port)

    @property
    def port(self) -> int | None:
        """The bound HTTP port, or None when not serving."""
        return None if self._server is None else self._server.server_address[1]

    def observe_label(self, msg: LabelMessage) -> None:
        """Count a published label, mirror its drop counters and record its stage latencies."""
        cam = (msg.camera_id,)
        with self._lock:
            self.labels.inc(cam)
            self.dropped_frames.raise_to(cam, msg.dropped_frames)
            self.dropped_windows.raise_to(cam, msg.dropped_windows)
            for stage, ms in msg.latency_ms.items():
                self.latency.observe((msg.camera_id, stage), ms / 1000)

    def observe_status(self, msg: StatusMessage) -> None:
        """Mirror a heartbeat's counters, fps, staleness and source state."""
        cam = (msg.camera_id,)
        with self._lock:
            self.frames.raise_to(cam, msg.latest_seq + 1)
            self.dropped_frames.raise_to(cam, msg.dropped_frames)
            self.frames_lost.raise_to(cam, msg.frames_lost)
            self.reconnects.raise_to(cam, msg.reconnects)
            self.fps.set(cam, msg.fps)
            if msg.staleness_ms is None:
                self.staleness.remove(cam)
            else:
                self.staleness.set(cam, msg.staleness_ms / 1000)
            for camera_id, state in self.state.values:
                if camera_id == msg.camera_id:
                    self.state.set((camera_id, state), 0)
            self.state.set((msg.camera_id, msg.state), 1)

    def set_engine(self, info: Mapping[str, Any] | Any) -> None:
        """Set the engine identity from a mapping or dataclass (e.g. ``EngineInfo``, ``ModelInfo``).

        ``model`` is read from the key ``model``, ``model_name`` or ``name``; missing labels are empty.
        """
        fields = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
        model = fields.get("model", fields.get("model_name", fields.get("name", "")))
        values = (str(model), *(str(fields.get(key, "")) for key in ENGINE_LABELS[1:]))
        with self._lock:
            self.engine.values.clear()
            self.engine.set(values, 1)

    def render(self) -> str:
        """All metrics in the Prometheus text format."""
        with self._lock:
            return render_prometheus(self._all)

    def close(self) -> None:
        """Stop the HTTP server. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], render: Callable[[], str]
    ) -> None:
        self.render = render
        super().__init__(address, handler)


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "metrics are at /metrics")
            return
        body = self.server.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("metrics %s: %s", self.address_string(), format % args)
