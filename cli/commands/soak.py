"""``emim-stream soak``: run the pipeline for minutes and report memory growth and latency drift.

Ends with a verdict: it passes when the RSS of the process tree grew by at most ``--max-rss-growth`` MiB after
the warm-up and the last minute's p99 latency is at most ``--max-p99-ratio`` times the first minute's; exit 1
otherwise (or when no label came in either minute).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import psutil

from emim_stream.cli.commands.common import add_config_argument, add_overrides_argument, config_label, config_path

if TYPE_CHECKING:
    from emim_stream.pipeline.comms.messages import LabelMessage

HELP = (
    "run the pipeline for M minutes; report RSS growth and p99 latency of the first and last minute "
    "(exit 1 when they exceed the thresholds)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--minutes", type=float, required=True, help="how long to run (fractions allowed)")
    add_overrides_argument(parser)
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period, default %(default)s")
    parser.add_argument(
        "--max-rss-growth", type=float, default=50.0, metavar="MIB",
        help="largest RSS growth after the warm-up that passes, MiB (default %(default)s)",
    )
    parser.add_argument(
        "--max-p99-ratio", type=float, default=1.5, metavar="R",
        help="largest last-minute / first-minute p99 latency ratio that passes (default %(default)s)",
    )


def _tree_rss_mib() -> float:
    """RSS of this process and its direct children (the camera processes) in MiB; a child that is gone counts 0."""
    me = psutil.Process()
    rss = 0
    for proc in (me, *me.children()):
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
    return rss / 2**20


def main(args: argparse.Namespace) -> int:
    from emim_stream.pipeline.config import load_config
    from emim_stream.pipeline.runtime import run

    cfg = load_config(config_path(args), args.overrides)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    duration_s = args.minutes * 60
    window_s = min(60.0, duration_s / 3)
    samples: list[tuple[float, float]] = []
    latencies: list[tuple[float, float]] = []
    start = time.monotonic()

    def sampler() -> None:
        while not stop.wait(args.sample_s if samples else min(args.sample_s, 5.0)):
            samples.append((time.monotonic() - start, _tree_rss_mib()))
            print(f"  t={samples[-1][0]:6.0f} s  RSS {samples[-1][1]:7.1f} MiB  labels {len(latencies)}", flush=True)

    def on_label(msg: LabelMessage) -> None:
        latencies.append((time.monotonic() - start, msg.latency_ms["total"]))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    print(f"soak: {args.minutes:g} min on {config_label(args)}; first/last window {window_s:.0f} s", flush=True)
    report = run(cfg, duration_s, stop, on_label)
    stop.set()
    thread.join(1)
    end = time.monotonic() - start
    warm = (latencies[0][0] if latencies else end) + window_s  # the first window starts at the first label
    first = [ms for t, ms in latencies if t <= warm]
    last = [ms for t, ms in latencies if t >= end - window_s]
    settled = [rss for t, rss in samples if t >= warm]
    print(f"\nengine: {report.engine}\nended: {report.reason}, {len(latencies)} labels")
    growth = None
    if samples:
        print(f"RSS: start {samples[0][1]:.1f} MiB, end {samples[-1][1]:.1f} MiB", end="")
        if len(settled) >= 2:
            growth = settled[-1] - settled[0]
            print(f", after warm-up {settled[0]:.1f} MiB, growth after warm-up {growth:+.1f} MiB", end="")
        print()
    for name, values in (("first", first), ("last", last)):
        if values:
            print(
                f"{name} {window_s:.0f} s: {len(values)} labels, p50 {np.percentile(values, 50):.1f} ms, "
                f"p99 {np.percentile(values, 99):.1f} ms"
            )
    dropped = sum(report.dropped_frames.values())
    print(f"dropped frames {dropped}, skipped windows {sum(report.dropped_windows.values())}")
    checks = verdict(growth, first, last, args.max_rss_growth, args.max_p99_ratio)
    passed = all(ok for ok, _ in checks)
    print(f"verdict: {'PASS' if passed else 'FAIL'}")
    for ok, text in checks:
        print(f"  {'ok    ' if ok else 'FAILED'}  {text}")
    return 0 if passed else 1


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
