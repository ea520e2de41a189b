"""How many cameras one engine sustains: the pipeline run for a while at 1, 2, ... cameras.

A camera count is *sustained* when every camera gets (nearly) every window its stride asks for
(``served >= min_served``) and latency does not drift: the median total latency of the run's last
third is at most ``max_drift`` times that of its middle third (the first third is warm-up). The thirds
are of the time from the first label to the end of the run, so engine loading is not counted.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import numpy as np

from emim_stream.pipeline.comms.messages import LabelMessage
from emim_stream.pipeline.config import PipelineConfig
from emim_stream.pipeline.runtime import run

__all__ = ["CapacityStep", "camera_capacity", "with_cameras"]


@dataclass(frozen=True)
class CapacityStep:
    """One camera count's run."""

    cameras: int
    labels: int
    windows_per_s: float
    served: float
    """Share of the windows the strides asked for that were labelled (the worst camera's)."""
    p50_middle_ms: float
    p50_last_ms: float
    p99_ms: float
    sustained: bool

    @property
    def drift(self) -> float:
        """Median latency of the last third over that of the middle third."""
        return self.p50_last_ms / self.p50_middle_ms if self.p50_middle_ms else float("inf")


def with_cameras(cfg: PipelineConfig, count: int) -> PipelineConfig:
    """``cfg`` with ``count`` copies of its first camera (ids ``cam1``.., synthetic seeds 1..)."""
    first = cfg.cameras[0]
    cameras = []
    for i in range(count):
        source = first.source
        if source.startswith("synthetic://"):
            base, _, query = source.partition("?")
            source = f"{base}?{urlencode({**dict(parse_qsl(query)), 'seed': str(i + 1)})}"
        cameras.append(dataclasses.replace(first, id=f"cam{i + 1}", source=source))
    return dataclasses.replace(cfg, cameras=tuple(cameras))


def camera_capacity(
    cfg: PipelineConfig,
    counts: list[int],
    seconds: float,
    min_served: float = 0.95,
    max_drift: float = 1.25,
    stop: threading.Event | None = None,
    on_step: Callable[[CapacityStep], None] | None = None,
) -> list[CapacityStep]:
    """Run the pipeline for ``seconds`` at each camera count in ``counts``; stops after the first unsustained one."""
    steps: list[CapacityStep] = []
    for count in counts:
        if stop is not None and stop.is_set():
            break
        step = _measure(with_cameras(cfg, count), seconds, min_served, max_drift, stop)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if not step.sustained:
            break
    return steps


def _on_a_free_port(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` publishing on a free loopback port: labels are counted in-process, and a pipeline already serving on
    the configured endpoint of this box keeps it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    publish = dataclasses.replace(cfg.publish, endpoint=f"tcp://127.0.0.1:{port}", allow_remote=False)
    return dataclasses.replace(cfg, publish=publish)


def _measure(
    cfg: PipelineConfig, seconds: float, min_served: float, max_drift: float, stop: threading.Event | None
) -> CapacityStep:
    labelled: list[tuple[float, float]] = []

    def on_label(msg: LabelMessage) -> None:
        labelled.append((time.monotonic(), msg.latency_ms["total"]))

    report = run(_on_a_free_port(cfg), seconds, stop, on_label)
    first = labelled[0][0] if labelled else time.monotonic()
    span = max(time.monotonic() - first, 1e-9)
    stamps = [(t - first, ms) for t, ms in labelled]
    served = min(
        (report.labels.get(c.id, 0) / max(1, report.labels.get(c.id, 0) + report.dropped_windows.get(c.id, 0)))
        for c in cfg.cameras
    )
    if report.failed or report.misconfigured:
        served = 0.0
    middle = [ms for t, ms in stamps if span / 3 <= t < 2 * span / 3]
    last = [ms for t, ms in stamps if t >= 2 * span / 3]
    p50_middle = float(np.median(middle)) if middle else float("nan")
    p50_last = float(np.median(last)) if last else float("nan")
    all_ms = [ms for _, ms in stamps]
    p99 = float(np.percentile(all_ms, 99)) if all_ms else float("nan")
    steady = bool(middle and last and p50_last <= max_drift * p50_middle)
    return CapacityStep(
        cameras=len(cfg.cameras),
        labels=len(stamps),
        windows_per_s=len(stamps) / span,
        served=served,
        p50_middle_ms=p50_middle,
        p50_last_ms=p50_last,
        p99_ms=p99,
        sustained=steady and served >= min_served,
    )
