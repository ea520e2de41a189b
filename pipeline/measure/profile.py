"""Per-frame latency profile of a running pipeline, from its label, status and event messages.

:func:`profile` subscribes to a publisher (or a relay) for a while and feeds every message to a
:class:`Profiler`, which reports per camera and per stage the latency percentiles, the windows per second, the
increase of the drop counters over the profiling period and the messages lost (``msg_seq`` gaps). It reports the
stages each label message carries (``latency.stages``, see :mod:`emim_stream.pipeline.comms.messages`), whatever they
are, plus
``receive``: subscriber receipt minus capture of the window's newest frame (CLOCK_MONOTONIC), measured only for
messages whose ``clock_domain`` is this host's (other messages are counted in ``receive_skipped``). From the event
messages it reports the alert delay: publish time of each event's ``start`` minus the capture time of the event's
first frame (the oldest frame of its first window), both the pipeline's own CLOCK_MONOTONIC stamps.

The report (:meth:`Profiler.report`, written by ``emim-stream profile --json``) is one JSON object:

- ``report`` str: ``"emim-stream profile"``; ``version`` int: 1 (this structure).
- ``endpoint`` str, ``topics`` list of str: what was subscribed to.
- ``started_wall_ns`` int: start of the profiling period (CLOCK_REALTIME); ``duration_s`` float: its length.
- ``clock_domain`` str: this host's boot id; ``unit`` = ``"ms"``, ``clock`` = ``"CLOCK_MONOTONIC"``.
- ``percentiles`` list of int: ``[50, 90, 99]``; ``samples_per_series`` int: the most recent samples kept per
  camera and stage (older ones fall out of the percentiles; ``count`` < ``total`` says so).
- ``messages`` object (int): ``received`` (valid messages), ``labels``, ``statuses``, ``events``, ``stats``,
  ``lost`` (``msg_seq`` gaps,
  all topics), ``restarts`` (``msg_seq`` went back: a publisher restarted), ``malformed`` (not a message, or one
  this version cannot parse, e.g. another schema or a NaN score), ``unreadable`` (of a camera named ``all``),
  ``receive_skipped``, ``handshake_failures`` (connections refused in the handshake: CURVE keys, see
  :mod:`emim_stream.pipeline.comms.subscribe`).
- ``cameras`` object: camera id -> object, cameras in order of first message:

  - ``labels`` int: label messages received; ``windows_per_s`` float: ``labels / duration_s``.
  - ``dropped_frames``, ``dropped_windows`` int: increase of the label messages' cumulative counters over the
    period (a counter that goes back, after a pipeline restart, counts from zero again).
  - ``lost`` object: ``labels``, ``status`` int: messages missing from the camera's two topics.
  - ``model`` object or null: ``name``, ``backend``, ``precision``, ``device`` of its last label.
  - ``status`` object or null (no heartbeat received): ``heartbeats`` int, ``state`` str and ``fps`` float of the
    last one, ``reconnects`` and ``frames_lost`` int (increase over the period, as above).
  - ``stages`` object: stage -> ``{"count", "total", "p50", "p90", "p99", "max"}`` (ms; ``count`` = samples the
    figures cover, ``total`` = samples seen), stages in the order the messages carry them, ``receive`` last.
  - ``events`` object: ``start``, ``update``, ``end`` int (event messages received) and ``start_delay_ms``: the
    alert delay of the events that started, as a stage above, or null when none started.

- ``all`` object: ``labels`` int, ``windows_per_s`` float, ``stages`` as above, over every camera together.

:func:`plot_profile` draws the latency distribution per stage and a timeline of total latency per camera into a
PNG; it needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from emim_stream.pipeline.comms.curve import CurveClient
from emim_stream.pipeline.comms.messages import (
    LATENCY_CLOCK,
    LATENCY_UNIT,
    EventMessage,
    LabelMessage,
    MessageError,
    StatsMessage,
    StatusMessage,
    local_clock_domain,
    parse_payload,
)
from emim_stream.pipeline.comms.subscribe import Received, Subscriber
from emim_stream.pipeline.errors import PipelineError
from emim_stream.pipeline.inference.latency import ALL_CAMERAS, PERCENTILES, LatencyRecorder, format_table

__all__ = [
    "DEFAULT_TOPICS",
    "RECEIVE_STAGE",
    "REPORT_VERSION",
    "Profiler",
    "format_report",
    "plot_profile",
    "profile",
    "require_matplotlib",
]

_LOG = logging.getLogger(__name__)

REPORT_VERSION = 1
DEFAULT_TOPICS = ("labels/", "status/", "events/")
RECEIVE_STAGE = "receive"
START_DELAY = "start_delay"
_POLL_S = 0.2  # longest wait between checks of the stop event and the deadline


class _Increase:
    """Increase of a cumulative counter over the observations; a decrease means it restarted from zero."""

    __slots__ = ("last", "total")

    def __init__(self) -> None:
        self.last: int | None = None
        self.total = 0

    def update(self, value: int) -> None:
        if self.last is not None:
            self.total += value - self.last if value >= self.last else value
        self.last = value


class _CameraProfile:
    """What the profiler knows of one camera."""

    def __init__(self, trace_len: int) -> None:
        self.labels = 0
        self.dropped_frames = _Increase()
        self.dropped_windows = _Increase()
        self.model: dict[str, str] | None = None
        self.heartbeats = 0
        self.state = ""
        self.fps = 0.0
        self.events = dict.fromkeys(("start", "update", "end"), 0)
        self.reconnects = _Increase()
        self.frames_lost = _Increase()
        self.trace: deque[tuple[int, Mapping[str, float]]] = deque(maxlen=trace_len)
        """(receipt CLOCK_MONOTONIC ns, stages in ms) of the most recent labels, for the plot."""


class Profiler:
    """Accumulates received label/status messages into a latency profile.

    Args:
        capacity: latency samples kept per camera and stage (and labels kept per camera for the plot).
        clock_domain: this host's CLOCK_MONOTONIC domain (default :func:`local_clock_domain`); the ``receive``
            stage is measured only for messages from the same domain.
    """

    def __init__(self, capacity: int = 10_000, clock_domain: str | None = None) -> None:
        self.capacity = capacity
        self.clock_domain = local_clock_domain() if clock_domain is None else clock_domain
        self.started_mono_ns = time.monotonic_ns()
        self.started_wall_ns = time.time_ns()
        self.recorder = LatencyRecorder(capacity)
        self.start_delays = LatencyRecorder(capacity)
        self.cameras: dict[str, _CameraProfile] = {}
        self.labels = 0
        self.statuses = 0
        self.events = 0
        self.stats = 0
        self.unreadable = 0
        self.receive_skipped = 0

    def add(self, received: Received) -> None:
        """Take one received message; one that cannot be parsed is counted in ``unreadable``."""
        try:
            msg = parse_payload(received.payload)
        except MessageError as err:
            self.unreadable += 1
            _LOG.debug("%s #%d unreadable: %s", received.topic, received.msg_seq, err)
            return
        if isinstance(msg, StatsMessage):  # the box's own summary: counted, not profiled
            self.stats += 1
            return
        if msg.camera_id == ALL_CAMERAS:  # the name of the all-camera summary
            self.unreadable += 1
            _LOG.warning("skipped a message of camera %r: that id is reserved for the summary", ALL_CAMERAS)
            return
        camera = self._camera(msg.camera_id)
        if isinstance(msg, LabelMessage):
            self._add_label(camera, msg, received.recv_mono_ns)
        elif isinstance(msg, EventMessage):
            self._add_event(camera, msg)
        elif isinstance(msg, StatusMessage):  # previews carry no latency
            self._add_status(camera, msg)

    def _camera(self, camera_id: str) -> _CameraProfile:
        camera = self.cameras.get(camera_id)
        if camera is None:
            camera = self.cameras[camera_id] = _CameraProfile(self.capacity)
        return camera

    def _add_label(self, camera: _CameraProfile, msg: LabelMessage, recv_mono_ns: int) -> None:
        self.labels += 1
        camera.labels += 1
        camera.dropped_frames.update(msg.dropped_frames)
        camera.dropped_windows.update(msg.dropped_windows)
        camera.model = {
            "name": msg.model.name,
            "backend": msg.model.backend,
            "precision": msg.model.precision,
            "device": msg.model.device,
        }
        stages = dict(msg.latency_ms)
        if msg.clock_domain == self.clock_domain:
            stages[RECEIVE_STAGE] = (recv_mono_ns - msg.capture_mono_ns) / 1e6
        else:
            self.receive_skipped += 1
        self.recorder.add(msg.camera_id, stages)
        camera.trace.append((recv_mono_ns, stages))

    def _add_event(self, camera: _CameraProfile, msg: EventMessage) -> None:
        self.events += 1
        camera.events[msg.phase] += 1
        if msg.phase == "start":
            self.start_delays.add(msg.camera_id, {START_DELAY: (msg.publish_mono_ns - msg.start_mono_ns) / 1e6})

    def _add_status(self, camera: _CameraProfile, msg: StatusMessage) -> None:
        self.statuses += 1
        camera.heartbeats += 1
        camera.state = msg.state
        camera.fps = msg.fps
        camera.reconnects.update(msg.reconnects)
        camera.frames_lost.update(msg.frames_lost)

    def report(
        self,
        subscriber: Subscriber,
        ended_mono_ns: int | None = None,
        endpoint: str = "",
        topics: Iterable[str] = (),
    ) -> dict[str, Any]:
        """The profile as the JSON-ready object of the module docstring.

        Args:
            subscriber: the subscriber that received the messages (its loss and malformed counters).
            ended_mono_ns: end of the profiling period (default now).
            endpoint, topics: what was subscribed to, for the record.
        """
        ended_mono_ns = time.monotonic_ns() if ended_mono_ns is None else ended_mono_ns
        duration_s = max((ended_mono_ns - self.started_mono_ns) / 1e9, 1e-9)
        summary = self.recorder.summary()
        delays = self.start_delays.summary()
        lost = _lost_per_camera(subscriber.lost)
        cameras = {}
        for camera_id, cam in self.cameras.items():
            cameras[camera_id] = {
                "labels": cam.labels,
                "windows_per_s": cam.labels / duration_s,
                "dropped_frames": cam.dropped_frames.total,
                "dropped_windows": cam.dropped_windows.total,
                "lost": lost.get(camera_id, {"labels": 0, "status": 0}),
                "model": cam.model,
                "status": None
                if not cam.heartbeats
                else {
                    "heartbeats": cam.heartbeats,
                    "state": cam.state,
                    "fps": cam.fps,
                    "reconnects": cam.reconnects.total,
                    "frames_lost": cam.frames_lost.total,
                },
                "stages": summary.get(camera_id, {}),
                "events": {**cam.events, "start_delay_ms": delays.get(camera_id, {}).get(START_DELAY)},
            }
        return {
            "report": "emim-stream profile",
            "version": REPORT_VERSION,
            "endpoint": endpoint,
            "topics": list(topics),
            "started_wall_ns": self.started_wall_ns,
            "duration_s": duration_s,
            "clock_domain": self.clock_domain,
            "unit": LATENCY_UNIT,
            "clock": LATENCY_CLOCK,
            "percentiles": list(PERCENTILES),
            "samples_per_series": self.capacity,
            "messages": {
                "received": subscriber.received,
                "labels": self.labels,
                "statuses": self.statuses,
                "events": self.events,
                "stats": self.stats,
                "lost": subscriber.total_lost,
                "restarts": sum(subscriber.restarts.values()),
                "malformed": subscriber.malformed,
                "unreadable": self.unreadable,
                "receive_skipped": self.receive_skipped,
                "handshake_failures": subscriber.handshake_failures,
            },
            "cameras": cameras,
            "all": {
                "labels": self.labels,
                "windows_per_s": self.labels / duration_s,
                "stages": summary.get(ALL_CAMERAS, {}),
            },
        }


def _lost_per_camera(lost: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """``{"labels/cam1/": 2, "status/cam1/": 0}`` -> ``{"cam1": {"labels": 2, "status": 0}}``."""
    out: dict[str, dict[str, int]] = {}
    for topic, n in lost.items():
        kind, _, rest = topic.partition("/")
        camera_id = rest.rstrip("/")
        if kind in ("labels", "status") and camera_id:
            out.setdefault(camera_id, {"labels": 0, "status": 0})[kind] += n
    return out


def profile(
    endpoint: str,
    duration_s: float | None = None,
    topics: Iterable[str] = DEFAULT_TOPICS,
    *,
    stop: threading.Event | None = None,
    capacity: int = 10_000,
    max_msg_bytes: int = 1 << 20,
    curve: CurveClient | None = None,
) -> tuple[Profiler, dict[str, Any]]:
    """Subscribe to ``endpoint`` and profile until ``duration_s`` passes or ``stop`` is set.

    Args:
        endpoint: a publisher's (or relay's) endpoint, e.g. ``tcp://127.0.0.1:5556``.
        duration_s: length of the profiling period (None: until ``stop`` is set).
        topics: topic prefixes; status messages add heartbeat counters to the report.
        stop: set it (e.g. from a signal handler) to end the period early.
        capacity: see :class:`Profiler`.
        max_msg_bytes: largest message accepted.
        curve: this subscriber's CURVE keys, for a CURVE publisher.

    Returns:
        The profiler (for :func:`plot_profile`) and its report (module docstring).

    Raises:
        PublishError: the endpoint cannot be connected.
    """
    topics = list(topics)
    stop = threading.Event() if stop is None else stop
    profiler = Profiler(capacity)
    deadline_ns = None if duration_s is None else profiler.started_mono_ns + round(duration_s * 1e9)
    with Subscriber(endpoint, topics, timeout_s=_POLL_S, max_msg_bytes=max_msg_bytes, curve=curve) as sub:
        while not stop.is_set():
            now_ns = time.monotonic_ns()
            if deadline_ns is not None and now_ns >= deadline_ns:
                break
            wait_s = _POLL_S if deadline_ns is None else min(_POLL_S, (deadline_ns - now_ns) / 1e9)
            received = sub.recv(wait_s)
            if received is not None:
                profiler.add(received)
        ended_mono_ns = time.monotonic_ns()
        if deadline_ns is not None and not stop.is_set():
            ended_mono_ns = min(ended_mono_ns, deadline_ns)
        return profiler, profiler.report(sub, ended_mono_ns, endpoint, topics)


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text: a totals line, one line per camera, and the latency table (ms)."""
    msgs = report["messages"]
    lines = [
        f"profiled {report['endpoint']} for {report['duration_s']:.1f} s: {msgs['received']} messages "
        f"({msgs['labels']} labels, {msgs['statuses']} status, {msgs['events']} events), {msgs['lost']} lost, "
        f"{msgs['malformed']} malformed, {msgs['unreadable']} unreadable"
    ]
    if not report["cameras"]:
        lines.append("no label or status message arrived")
        return "\n".join(lines)
    header = ("camera", "labels", "windows/s", "dropped frames", "dropped windows", "lost", "reconnects", "state")
    rows = [header]
    for camera_id, cam in report["cameras"].items():
        status = cam["status"]
        rows.append(
            (
                camera_id,
                str(cam["labels"]),
                f"{cam['windows_per_s']:.2f}",
                str(cam["dropped_frames"]),
                str(cam["dropped_windows"]),
                str(cam["lost"]["labels"] + cam["lost"]["status"]),
                "-" if status is None else str(status["reconnects"]),
                "-" if status is None else status["state"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["", *("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)]
    table = {camera_id: cam["stages"] for camera_id, cam in report["cameras"].items() if cam["stages"]}
    if table:
        table[ALL_CAMERAS] = report["all"]["stages"]
        lines += [
            "",
            f"latency per window ({report['unit']}, {report['clock']}; total = publish - capture of the newest "
            f"frame, {RECEIVE_STAGE} = receipt here - capture):",
        ]
        lines.append(format_table(table))
    delays = {camera_id: cam["events"] for camera_id, cam in report["cameras"].items() if cam["events"]["start"]}
    if delays:
        lines += ["", "alert delay (ms; event start published - capture of the event's first frame):"]
        lines.append(format_table({c: {START_DELAY: e["start_delay_ms"]} for c, e in delays.items()}))
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Raise PipelineError with the fix when matplotlib (the ``plot`` extra) is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise PipelineError(
            f"plotting needs matplotlib ({err}); install it with: pip install 'emim-stream[plot]'"
        ) from err


def plot_profile(profiler: Profiler, path: str | Path, title: str = "") -> Path:
    """Save a PNG: latency distribution per stage (all cameras) above a timeline of total latency per camera.

    The boxes span p25-p75 with the median marked and whiskers at p1 and p99; the timeline's x axis is the
    receipt time in seconds since the profile started. Both cover the most recent ``capacity`` labels per camera.

    Raises:
        PipelineError: matplotlib is missing, or the file cannot be written.
    """
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, ScalarFormatter

    stages: dict[str, list[float]] = {}
    for cam in profiler.cameras.values():
        for _, sample in cam.trace:
            for stage, ms in sample.items():
                stages.setdefault(stage, []).append(ms)
    fig = Figure(figsize=(10, 8), layout="constrained")
    dist, timeline = fig.subplots(2, 1)
    if title:
        fig.suptitle(title)
    if stages:
        dist.boxplot(list(stages.values()), whis=(1, 99), showfliers=False)
        dist.set_xticks(range(1, len(stages) + 1), list(stages))
        if min(min(v) for v in stages.values()) > 0:
            dist.set_yscale("log")
            dist.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            dist.yaxis.set_major_formatter(ScalarFormatter())
    else:
        dist.text(0.5, 0.5, "no label messages", ha="center", va="center", transform=dist.transAxes)
    dist.set_ylabel(f"latency ({LATENCY_UNIT})")
    dist.set_title("latency per stage, all cameras (box p25-p75, median, whiskers p1-p99)")
    dist.grid(True, axis="y", alpha=0.3)
    for camera_id, cam in profiler.cameras.items():
        points = [(t, s["total"]) for t, s in cam.trace if "total" in s]
        if points:
            xs = [(t - profiler.started_mono_ns) / 1e9 for t, _ in points]
            timeline.plot(xs, [ms for _, ms in points], ".-", markersize=3, linewidth=0.8, label=camera_id)
    if timeline.lines:
        timeline.legend(loc="upper right", fontsize="small")
    timeline.set_xlabel("receipt time since profile start (s)")
    timeline.set_ylabel(f"total latency ({LATENCY_UNIT})")
    timeline.set_title("total latency (capture -> publish) per camera")
    timeline.grid(True, alpha=0.3)
    path = Path(path)
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise PipelineError(f"cannot write the plot {str(path)!r}: {err}") from err
    return path
