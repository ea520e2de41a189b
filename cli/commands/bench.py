"""``emim-stream bench``: per-clip latency, clips/s and MAC/s of backends side by side; or the EMIM op per layer."""

from __future__ import annotations

import argparse
import math

from emim_stream.cli.commands.engine_options import add_engine_arguments, engine_config_from_args
from emim_stream.engines.backends.base import Backend, Precision

HELP = "benchmark backends (median / p90 per-clip latency, clips/s, MAC/s) or, with --op, the EMIM op kernels"


_ROWS = (
    Backend.TORCH.value,
    "torch-compile",
    *(b.value for b in Backend if b not in (Backend.AUTO, Backend.TORCH)),
)
"""``--backend all``: every backend, and torch under torch.compile (``torch-compile``) after torch."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser, backend=False)
    parser.add_argument(
        "--backend",
        choices=(*_ROWS, "all"),
        default="torch",
        help="one backend (torch-compile: torch under torch.compile), or all side by side (default torch)",
    )
    parser.add_argument("--batch", type=int, default=1, help="clips per inference call (default 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    parser.add_argument("--iters", type=int, default=5, help="at least this many timed calls (default 5)")
    parser.add_argument("--min-time", type=float, default=2.0, help="and at least this many seconds (default 2)")
    parser.add_argument(
        "--op", action="store_true", help="benchmark the EMIM op kernels at stage-3 and stage-4 sizes instead"
    )


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _main_op(args: argparse.Namespace) -> int:
    import torch

    from emim_stream.engines.backends.torch_engine import DTYPES
    from emim_stream.engines.diagnostics.bench import bench_op

    if args.device in (None, "auto"):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype = DTYPES.get(Precision(args.precision or Precision.FP32), torch.float32)  # int8 / fp8: the op in fp32
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels = [args.kernel] if args.kernel and args.kernel != "auto" else None
    results = bench_op(
        kernels=kernels,
        device=device,
        dtype=dtype,
        batch=args.batch,
        compile=bool(args.compile),
        warmup=args.warmup,
        min_iters=max(args.iters, 10),
        min_time_s=args.min_time,
    )
    print(
        f"EMIM op (logits + context, all T slots), batch {args.batch}, {dtype}, {device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'layer':<42} {'kernel':<30} {'p50 ms':>9} {'p90 ms':>9} {'GMAC/s':>8}  note")
    for r in results:
        print(
            f"{r.layer!s:<42} {r.kernel:<30} {r.ms_p50:>9.2f} {r.ms_p90:>9.2f} "
            f"{_fmt(r.macs_per_s / 1e9, '.2f'):>8}  {r.note}"
        )
    return 0


def main(args: argparse.Namespace) -> int:
    if args.op:
        return _main_op(args)
    from emim_stream.engines.diagnostics.bench import bench_backends
    from emim_stream.engines.errors import ConfigError

    if not (args.model or args.checkpoint or args.config):
        raise ConfigError("bench needs --model NAME, --checkpoint FILE or --config FILE (or --op)")
    # each backend is opened on its own (no fallback): the config's backend field plays no part
    cfg = engine_config_from_args(args, backend="auto", max_batch=max(args.batch, args.max_batch or 1))
    backends = _ROWS if args.backend == "all" else (args.backend,)
    source, macs, results = bench_backends(cfg, backends, args.batch, args.warmup, args.iters, args.min_time)
    clip = source.clip
    import torch

    print(
        f"model {source.model_name} ({source.weights}), clip 3x{clip.frames}x{clip.height}x{clip.width}, "
        f"batch {args.batch}, {macs / 1e9:.2f} GMAC per clip, torch threads {torch.get_num_threads()}"
    )
    base = next((r for r in results if not r.unavailable), None)
    print(
        f"{'backend':<13} {'precision':<9} {'device':<7} {'clip p50 ms':>11} {'clip p90 ms':>11} "
        f"{'batch ms':>9} {'clips/s':>8} {'GMAC/s':>7} {'speed':>7}  iters"
    )
    for r in results:
        if r.unavailable:
            print(f"{r.backend:<13} {r.precision:<9} {r.device:<7} unavailable: {r.unavailable}")
            continue
        assert base is not None  # r itself is available
        ratio = base.clip_ms_p50 / r.clip_ms_p50
        print(
            f"{r.backend:<13} {r.precision:<9} {r.device:<7} {r.clip_ms_p50:>11.1f} {r.clip_ms_p90:>11.1f} "
            f"{r.batch_ms_p50:>9.1f} {r.clips_per_s:>8.2f} {r.macs_per_s / 1e9:>7.1f} {ratio:>6.2f}x  {r.iters}"
        )
    if base is not None and len(results) > 1:
        print(f"speed = {base.backend}'s clip p50 / this backend's clip p50 (above 1: faster than {base.backend})")
    for r in results:
        if r.info is not None:
            print(f"  {r.backend}: {r.info.detail}")
    return 0
