"""``emim-stream bench-pipeline``: per-frame streaming overhead without the model, ring throughput, and with
``--camera`` what clip sampling in the camera process saves per camera."""

from __future__ import annotations

import argparse

HELP = "benchmark the streaming path without the model: per-frame overhead and ring throughput"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=224, help="frame size (square), default %(default)s")
    parser.add_argument("--frames", type=int, default=2000, help="frames per measurement, default %(default)s")
    parser.add_argument(
        "--clip-frames",
        type=int,
        nargs="+",
        default=[8, 16, 32],
        metavar="T",
        help="clip lengths to compare, default %(default)s",
    )
    parser.add_argument("--slots", type=int, default=64, help="ring slots, default %(default)s")
    parser.add_argument(
        "--camera", metavar="SOURCE", default=None,
        help="also measure a real camera process on SOURCE (a file loops at its frame rate) at each --intervals",
    )
    parser.add_argument(
        "--intervals", type=int, nargs="+", default=[1, 4], metavar="N",
        help="frame intervals to compare side by side (1: every frame; 4: 16x4 on a 30 fps camera), "
        "default %(default)s",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per interval, default 10")


def main(args: argparse.Namespace) -> int:
    from emim_stream.pipeline.capture.ordering import MemoryOrdering, strongly_ordered
    from emim_stream.pipeline.measure.benchmarks import frame_overhead, ring_throughput

    if args.camera is not None:
        _camera_costs(args)
        return 0

    print(f"per-frame overhead at {args.size}x{args.size}, median of {args.frames} frames, 1 thread (us):")
    print(f"{'T':>4} {'write':>8} {'read':>8} {'vmp':>8} {'window':>8} {'total':>8}")
    for T in args.clip_frames:
        r = frame_overhead(args.frames, args.size, T, slots=args.slots)
        print(
            f"{T:>4} {r['write_us']:>8.1f} {r['read_us']:>8.1f} {r['vmp_us']:>8.1f} {r['window_us']:>8.1f} "
            f"{r['total_us']:>8.1f}"
        )
    orderings = [MemoryOrdering.FENCED]
    if strongly_ordered():  # the plain ring of earlier releases, correct only here: what the fences cost
        orderings.append(MemoryOrdering.PLAIN)
    print(
        f"\nring throughput between two processes at {args.size}x{args.size}, {args.frames * 5} frames; "
        "time per frame (us):"
    )
    print(
        f"{'memory ordering':<16} {'frames/s':>9} {'MB/s':>7} {'write p50':>10} {'write p99':>10} "
        f"{'read p50':>9} {'read p99':>9} {'dropped':>8} {'torn':>5} {'corrupt':>8}"
    )
    for ordering in orderings:
        t = ring_throughput(args.frames * 5, args.size, args.size, args.slots, ordering=ordering)
        print(
            f"{ordering.value:<16} {t['fps']:>9.0f} {t['mb_per_s']:>7.0f} {t['write_p50_us']:>10.1f} "
            f"{t['write_p99_us']:>10.1f} {t['read_p50_us']:>9.1f} {t['read_p99_us']:>9.1f} {t['dropped']:>8} "
            f"{t['torn']:>5} {t['corrupt']:>8}"
        )
    return 0


def _camera_costs(args: argparse.Namespace) -> None:
    """One row per interval, then the largest interval with every frame written (the recorder's mode)."""
    from emim_stream.engines.sampling import SamplingRequest
    from emim_stream.engines.uris import redact_uri
    from emim_stream.pipeline.measure.benchmarks import camera_cost

    print(
        f"one camera on {redact_uri(args.camera)}, model input {args.size}x{args.size}, {args.seconds:g} s per row; "
        "CPU in % of one core and in ms per decoded camera frame:"
    )
    print(
        f"{'frames the model sees':<42} {'decoded/s':>9} {'ring writes/s':>13} {'camera CPU':>17} "
        f"{'read+VMP CPU':>17}"
    )
    rows = [(n, False) for n in args.intervals] + [(max(args.intervals), True)]
    for interval, all_frames in rows:
        request = SamplingRequest(None, frames=16, stride=4, frame_interval=interval)
        r = camera_cost(args.camera, args.size, request, args.seconds, all_frames, args.slots)
        name = "every frame" if interval == 1 else f"one frame in {interval}"
        name += ", recorder on (all written)" if all_frames else ""
        per_frame = 1000 / max(r["frames_per_s"], 1e-9)  # CPU seconds per second -> ms per decoded frame
        print(
            f"{name:<42} {r['frames_per_s']:>9.1f} {r['writes_per_s']:>13.1f} "
            f"{100 * r['camera_cpu']:>6.1f}% {r['camera_cpu'] * per_frame:>5.2f} ms "
            f"{100 * r['drain_cpu']:>6.1f}% {r['drain_cpu'] * per_frame:>5.2f} ms"
        )
