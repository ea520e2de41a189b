"""Soak: the pipeline run for minutes, with the memory of its process tree and the latency of its labels watched.

A run passes when the RSS of the process tree grew by at most ``max_growth_mib`` after the warm-up and the last
window's p99 latency is at most ``max_ratio`` times the first window's (:func:`verdict`). The windows are a minute
each (a third of a shorter run); the first starts at the first label, so engine loading is not counted.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psutil

from emim_stream.pipeline.comms.messages import LabelMessage
from emim_stream.pipeline.config import PipelineConfig
from emim_stream.pipeline.runtime import RunReport, run

__all__ = ["SoakRun", "soak", "verdict", "window_s"]

_FIRST_SAMPLE_S = 5.0  # the first RSS sample comes at most this soon (the warm-up baseline)


def window_s(duration_s: float) -> float:
    """Length of the first and the last window of a run of ``duration_s``: a minute, or a third of a shorter run."""
    return min(60.0, duration_s / 3)


@dataclass(frozen=True)
class SoakRun:
    """What a soak run measured."""

    report: RunReport
    window_s: float
    samples: list[tuple[float, float]]
    """``(seconds since the start, RSS MiB)`` of the process tree."""
    labels: int
    first_ms: list[float]
    """Total latencies of the labels of the first window."""
    last_ms: list[float]
    settled: list[float]
    """RSS samples (MiB) after the warm-up (the end of the first window)."""

    @property
    def growth_mib(self) -> float | None:
        """RSS growth after the warm-up; None with fewer than two samples after it."""
        return self.settled[-1] - self.settled[0] if len(self.settled) >= 2 else None


def soak(
    cfg: PipelineConfig,
    duration_s: float,
    sample_s: float,
    stop: threading.Event,
    on_sample: Callable[[float, float, int], None],
) -> SoakRun:
    """Run the pipeline for ``duration_s`` (or until ``stop``), sampling RSS every ``sample_s``.

    Args:
        on_sample: called with ``(seconds since the start, RSS MiB, labels so far)`` after each sample.
    """
    window = window_s(duration_s)
    samples: list[tuple[float, float]] = []
    latencies: list[tuple[float, float]] = []
    start = time.monotonic()

    def sampler() -> None:
        while not stop.wait(sample_s if samples else min(sample_s, _FIRST_SAMPLE_S)):
            samples.append((time.monotonic() - start, _tree_rss_mib()))
            on_sample(*samples[-1], len(latencies))

    def on_label(msg: LabelMessage) -> None:
        latencies.append((time.monotonic() - start, msg.latency_ms["total"]))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    report = run(cfg, duration_s, stop, on_label)
    stop.set()
    thread.join(1)
    end = time.monotonic() - start
    warm = (latencies[0][0] if latencies else end) + window  # the first window starts at the first label
    return SoakRun(
        report=report,
        window_s=window,
        samples=samples,
        labels=len(latencies),
        first_ms=[ms for t, ms in latencies if t <= warm],
        last_ms=[ms for t, ms in latencies if t >= end - window],
        settled=[rss for t, rss in samples if t >= warm],
    )


def _tree_rss_mib() -> float:
    """RSS of this process and its direct children (the camera processes) in MiB; a child that is gone counts 0."""
    me = psutil.Process()
    rss = 0
    for proc in (me, *me.children()):
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
    return rss / 2**20


def verdict(
    growth_mib: float | None, first_ms: list[float], last_ms: list[float], max_growth_mib: float, max_ratio: float
) -> list[tuple[bool, str]]:
    """``(passed, description)`` of the RSS-growth and p99-drift checks."""
    checks = []
    if growth_mib is None:
        checks.append((True, "RSS growth: too few samples after the warm-up (run longer, or a smaller --sample-s)"))
    else:
        text = f"RSS growth after warm-up {growth_mib:+.1f} MiB <= {max_growth_mib:g}"
        checks.append((growth_mib <= max_growth_mib, text))
    if not first_ms or not last_ms:
        checks.append((False, "p99 drift: no label in the first or the last window"))
    else:
        p99_first, p99_last = np.percentile(first_ms, 99), np.percentile(last_ms, 99)
        ratio = float(p99_last / max(p99_first, 1e-9))
        checks.append(
            (ratio <= max_ratio, f"p99 last/first {ratio:.2f} <= {max_ratio:g} ({p99_first:.1f} -> {p99_last:.1f} ms)")
        )
    return checks
