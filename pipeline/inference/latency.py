"""Per-camera, per-stage latency records and their percentiles.

:class:`LatencyRecorder` keeps the most recent ``capacity`` samples (ms) of every (camera, stage) pair in a
fixed-size ring, plus the same for all cameras together under the camera name ``"all"``, so memory stays
bounded however long the pipeline runs. Percentiles use numpy's default ``linear`` method (type 7 of Hyndman &
Fan: linear interpolation between the two closest ranks) over the samples held.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["ALL_CAMERAS", "PERCENTILES", "LatencyRecorder", "format_table"]

ALL_CAMERAS = "all"
PERCENTILES = (50, 90, 99)


class _Samples:
    """The last ``capacity`` float64 values of one series, and how many were ever added."""

    __slots__ = ("_values", "next", "total")

    def __init__(self, capacity: int) -> None:
        self._values = np.empty(capacity, dtype=np.float64)
        self.next = 0
        self.total = 0

    def add(self, value: float) -> None:
        self._values[self.next] = value
        self.next = (self.next + 1) % len(self._values)
        self.total += 1

    def held(self) -> np.ndarray:
        return self._values[: min(self.total, len(self._values))]


class LatencyRecorder:
    """Bounded latency samples per camera and stage.

    Args:
        capacity: samples kept per (camera, stage) and per stage for ``"all"``; older ones are forgotten.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._series: dict[str, dict[str, _Samples]] = {ALL_CAMERAS: {}}

    def add(self, camera_id: str, stages_ms: Mapping[str, float]) -> None:
        """Record one window's stage latencies.

        Args:
            camera_id: the camera (``"all"`` is reserved for the aggregate).
            stages_ms: stage -> latency in ms, e.g. ``LabelMessage.latency_ms``.
        """
        if camera_id == ALL_CAMERAS:
            raise ValueError(f"camera id {ALL_CAMERAS!r} is reserved for the all-camera summary")
        camera = self._series.setdefault(camera_id, {})
        everyone = self._series[ALL_CAMERAS]
        for stage, ms in stages_ms.items():
            for series in (camera, everyone):
                samples = series.get(stage)
                if samples is None:
                    samples = series[stage] = _Samples(self.capacity)
                samples.add(ms)

    def summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """Percentiles of the samples held.

        Returns:
            ``{camera: {stage: {"count", "total", "p50", "p90", "p99", "max"}}}`` in ms, cameras in order of
            first appearance and ``"all"`` last; ``count`` = samples the figures cover, ``total`` = samples
            ever added. Cameras/stages without samples are absent.
        """
        out: dict[str, dict[str, dict[str, float | int]]] = {}
        cameras = [c for c in self._series if c != ALL_CAMERAS] + [ALL_CAMERAS]
        for camera in cameras:
            stages = {}
            for stage, samples in self._series[camera].items():
                values = samples.held()
                p50, p90, p99 = np.percentile(values, PERCENTILES, method="linear")
                stages[stage] = {
                    "count": int(values.size),
                    "total": samples.total,
                    "p50": float(p50),
                    "p90": float(p90),
                    "p99": float(p99),
                    "max": float(values.max()),
                }
            if stages:
                out[camera] = stages
        return out

    def reset(self) -> None:
        """Forget every sample."""
        self._series = {ALL_CAMERAS: {}}


def format_table(summary: Mapping[str, Mapping[str, Mapping[str, float | int]]]) -> str:
    """A fixed-width text table of :meth:`LatencyRecorder.summary` (one row per camera and stage, ms)."""
    header = ("camera", "stage", "count", "p50 ms", "p90 ms", "p99 ms", "max ms")
    rows: list[tuple[str, ...]] = [header]
    for camera, stages in summary.items():
        for stage, s in stages.items():
            rows.append(
                (camera, stage, str(s["count"]), *(f"{s[k]:.2f}" for k in ("p50", "p90", "p99", "max")))
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # camera and stage left-aligned, numbers right-aligned
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells))
    return "\n".join(lines)
