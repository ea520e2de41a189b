"""``emim-stream soak``: run the pipeline for minutes and report memory growth and latency drift.

Ends with :func:`emim_stream.pipeline.measure.soak.verdict`'s checks at ``--max-rss-growth`` and ``--max-p99-ratio``;
exit 1 when one fails (or when no label came in the first or the last window).
"""

from __future__ import annotations

import argparse
import signal
import threading

import numpy as np

from emim_stream.cli.commands.common import add_config_argument, add_overrides_argument, config_label, config_path

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


def main(args: argparse.Namespace) -> int:
    from emim_stream.pipeline.config import load_config
    from emim_stream.pipeline.measure.soak import soak, verdict, window_s

    cfg = load_config(config_path(args), args.overrides)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    duration_s = args.minutes * 60

    def on_sample(t: float, rss_mib: float, labels: int) -> None:
        print(f"  t={t:6.0f} s  RSS {rss_mib:7.1f} MiB  labels {labels}", flush=True)

    window = window_s(duration_s)
    print(f"soak: {args.minutes:g} min on {config_label(args)}; first/last window {window:.0f} s", flush=True)
    result = soak(cfg, duration_s, args.sample_s, stop, on_sample)
    report, samples, growth = result.report, result.samples, result.growth_mib
    print(f"\nengine: {report.engine}\nended: {report.reason}, {result.labels} labels")
    if samples:
        print(f"RSS: start {samples[0][1]:.1f} MiB, end {samples[-1][1]:.1f} MiB", end="")
        if growth is not None:
            print(f", after warm-up {result.settled[0]:.1f} MiB, growth after warm-up {growth:+.1f} MiB", end="")
        print()
    for name, values in (("first", result.first_ms), ("last", result.last_ms)):
        if values:
            print(
                f"{name} {window:.0f} s: {len(values)} labels, p50 {np.percentile(values, 50):.1f} ms, "
                f"p99 {np.percentile(values, 99):.1f} ms"
            )
    dropped = sum(report.dropped_frames.values())
    print(f"dropped frames {dropped}, skipped windows {sum(report.dropped_windows.values())}")
    checks = verdict(growth, result.first_ms, result.last_ms, args.max_rss_growth, args.max_p99_ratio)
    passed = all(ok for ok, _ in checks)
    print(f"verdict: {'PASS' if passed else 'FAIL'}")
    for ok, text in checks:
        print(f"  {'ok    ' if ok else 'FAILED'}  {text}")
    return 0 if passed else 1
