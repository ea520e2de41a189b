"""``emim-stream bench-pipeline``: per-frame streaming overhead without the model, and ring throughput."""

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


def main(args: argparse.Namespace) -> int:
    from emim_stream.pipeline.measure.benchmarks import frame_overhead, ring_throughput

    print(f"per-frame overhead at {args.size}x{args.size}, median of {args.frames} frames, 1 thread (us):")
    print(f"{'T':>4} {'write':>8} {'read':>8} {'vmp':>8} {'window':>8} {'total':>8}")
    for T in args.clip_frames:
        r = frame_overhead(args.frames, args.size, T, slots=args.slots)
        print(
            f"{T:>4} {r['write_us']:>8.1f} {r['read_us']:>8.1f} {r['vmp_us']:>8.1f} {r['window_us']:>8.1f} "
            f"{r['total_us']:>8.1f}"
        )
    t = ring_throughput(args.frames * 5, args.size, args.size, args.slots)
    print(
        f"\nring throughput between two processes at {args.size}x{args.size}: {t['fps']:.0f} frames/s "
        f"({t['mb_per_s']:.0f} MB/s), {t['delivered']} delivered, {t['dropped']} dropped, {t['torn']} torn, "
        f"{t['corrupt']} corrupt"
    )
    return 0
