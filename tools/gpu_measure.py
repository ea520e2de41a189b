"""The measurements behind ``tools/gpu-check``: one sub-command per kind, one JSON line per result.

Every line is flushed as soon as it is measured, so when gpu-check's time box ends a worker, the
rows it finished are kept. Sub-commands:

- ``table``: engines side by side (torch eager / compile / CUDA graphs / both, aoti) per EMIM
  kernel, precision and batch: per-clip p50/p90, clips/s, the ratio to the FLOP floor
  (MACs x 2 / peak), and each configuration's logit error and top-1 agreement against eager fp32
  with the reference kernel on the same clips (8 by default).
- ``op``: :func:`emim_stream.engines.diagnostics.bench.bench_op` (what ``emim-stream bench --op`` runs) per dtype.
- ``cameras``: :func:`emim_stream.pipeline.measure.capacity.camera_capacity` (what ``emim-stream bench-cameras`` runs)
  at each of the given camera counts (unlike ``bench-cameras``, it goes on after a count not sustained).
- ``decode``: N streams of a 1080p30 H.264 file decoded and scaled at once by a ``cameras[].hwaccel`` preset's
  ``ffmpeg`` command line (:func:`emim_stream.pipeline.capture.hwaccel.ffmpeg_command`): frames/s per stream and
  the CPU each stream costs, per stream count.

Run from the repository root: ``python tools/gpu_measure.py table --out rows.jsonl ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `engines` / `pipeline`

MODES = {
    "eager": ("torch", {}),
    "compile": ("torch", {"compile": True}),
    "graphs": ("torch", {"cuda_graphs": True}),
    "compile+graphs": ("torch", {"compile": True, "cuda_graphs": True}),
    "aoti": ("aoti", {}),
}
"""Table mode -> (backend, engine settings)."""

PROBED = (
    "triton",
    "numpy",
    "opencv-python-headless",
    "onnx",
    "onnxruntime",
    "pyzmq",
    "platformdirs",
    "paho-mqtt",
    "prometheus-client",
    "psutil",
    "pyyaml",
)
"""Distributions whose versions the report records."""


def emit(out: IO[str], row: dict[str, Any]) -> None:
    out.write(json.dumps(row) + "\n")
    out.flush()


def _rel_err(got, ref) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _logits(engine, clips):
    import torch

    batch = engine.input_spec.max_batch
    with torch.inference_mode():
        return torch.cat([engine.infer(c.to(engine.device)).float().cpu() for c in clips.split(batch)])


def env(args: argparse.Namespace, out: IO[str]) -> None:
    """Versions (torch, CUDA, GPU, driver, the packages the project imports) and the CLI's start-up imports."""
    import importlib.metadata
    import os
    import platform
    import subprocess

    import torch

    info: dict[str, Any] = {
        "kind": "meta",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count(),
    }
    for dist in PROBED:
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1))
        try:
            smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    from emim_stream.cli.main import build_parser

    build_parser()  # imports every command module: what the package needs at start-up
    emit(out, info)


def table(args: argparse.Namespace, out: IO[str]) -> None:
    import torch

    from emim_stream.engines.backends import BACKENDS, Candidate, EngineConfig, open_backend
    from emim_stream.engines.backends.model_source import load_source
    from emim_stream.engines.diagnostics.flops import count_cost

    base = EngineConfig(
        model=args.model,
        frames=args.frames,
        height=args.size,
        width=args.size,
        max_batch=max(args.batches),
        threads=args.threads,
        plan_cache_dir=args.cache_dir,
    )
    sources: dict[str, Any] = {}

    def source_for(kernel: str):
        if kernel not in sources:
            sources[kernel] = load_source(dataclasses.replace(base, kernel=kernel))
            if args.depths:
                sources[kernel] = _with_depths(sources[kernel], args.model, args.depths, kernel)
        return sources[kernel]

    def open_engine(mode: str, kernel: str, precision: str):
        backend, settings = MODES[mode]
        if backend not in BACKENDS:
            raise LookupError(f"backend {backend!r} is not in this tree (known: {sorted(BACKENDS)})")
        cfg = dataclasses.replace(base, kernel=kernel, precision=precision, **settings)
        src = source_for(kernel)
        own = dataclasses.replace(src, model=copy.deepcopy(src.model))
        return open_backend(cfg, Candidate(backend, args.device, precision), own)

    ref_source = source_for("reference")
    clip = ref_source.clip
    macs = count_cost(ref_source.model, (3, clip.frames, clip.height, clip.width)).macs
    floor_ms = macs * 2 / (args.peak_tflops * 1e12) * 1e3
    clips = torch.randn(
        (args.numerics_clips, 3, clip.frames, clip.height, clip.width), generator=torch.Generator().manual_seed(123)
    )
    with open_engine("eager", "reference", "fp32") as ref_engine:
        ref = _logits(ref_engine, clips)
    emit(
        out,
        {
            "kind": "meta",
            "model": args.model,
            "clip": [clip.frames, clip.height, clip.width],
            "macs": macs,
            "floor_ms": floor_ms,
            "peak_tflops": args.peak_tflops,
            "device": args.device,
            "depths": args.depths,
            "numerics_clips": args.numerics_clips,
        },
    )
    for kernel in args.kernels:
        for precision in args.precisions:
            common = {"kind": "row", "mode": args.mode, "kernel": kernel, "precision": precision}
            try:
                for row in _config_rows(
                    functools.partial(open_engine, args.mode, kernel, precision), args, clips, ref, floor_ms, macs
                ):
                    emit(out, {**common, **row})
            except Exception as err:  # a row saying why, not a lost table
                emit(out, {**common, "error": f"{type(err).__name__}: {err}".splitlines()[0][:300]})


def _with_depths(source, name: str, depths: list[int], kernel: str):
    """``source`` with a seeded untrained ``name`` of other depths (a smaller graph: faster compiles)."""
    import torch

    from emim_stream.engines.checkpoints.io import weights_sha256
    from emim_stream.engines.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(name, kernel=kernel, depths=tuple(depths)).eval().float()
    weights = f"untrained {name} depths {tuple(depths)} (seed 0)"
    return dataclasses.replace(source, model=model, weights_sha256=weights_sha256(model.state_dict()), weights=weights)


def _config_rows(opening, args: argparse.Namespace, clips, ref, floor_ms: float, macs: int):
    """Rows of one engine configuration: numerics on ``clips`` against ``ref``, then timing per batch.

    Args:
        opening: a call that opens the engine (timed: an aoti build happens there).
    """
    from emim_stream.engines.diagnostics.bench import bench_engine

    t0 = time.perf_counter()
    with opening() as engine:
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = _logits(engine, clips)  # also the first calls: compiles and captures happen here
        numerics = {
            "open_s": round(open_s, 2),
            "first_calls_s": round(time.perf_counter() - t0, 2),
            "rel_err": _rel_err(got, ref),
            "top1_agree": float((got.argmax(1) == ref.argmax(1)).float().mean()),
            "engine": engine.describe().summary(),
        }
        for batch in args.batches:
            r = bench_engine(engine, batch, macs, args.warmup, args.min_iters, args.min_time)
            yield {
                **numerics,
                "batch": batch,
                "iters": r.iters,
                "clip_ms_p50": r.clip_ms_p50,
                "clip_ms_p90": r.clip_ms_p90,
                "batch_ms_p50": r.batch_ms_p50,
                "clips_per_s": r.clips_per_s,
                "floor_ratio": r.clip_ms_p50 / floor_ms,
            }


def op(args: argparse.Namespace, out: IO[str]) -> None:
    import torch

    from emim_stream.engines.diagnostics.bench import OP_LAYERS, OpLayer, bench_op

    layers = (OpLayer("tiny", 2, 4, 5, 5, 16),) if args.tiny else OP_LAYERS
    device = torch.device(args.device)
    for name in args.precisions:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
        for r in bench_op(
            layers,
            device=device,
            dtype=dtype,
            batch=args.batch,
            natten=args.natten,
            warmup=args.warmup,
            min_iters=args.min_iters,
            min_time_s=args.min_time,
        ):
            emit(
                out,
                {
                    "kind": "row",
                    "layer": str(r.layer),
                    "kernel": r.kernel,
                    "precision": name,
                    "batch": r.batch,
                    "ms_p50": r.ms_p50,
                    "ms_p90": r.ms_p90,
                    "gmac_per_s": r.macs_per_s / 1e9,
                    "note": r.note,
                },
            )


def cameras(args: argparse.Namespace, out: IO[str]) -> None:
    import yaml

    from emim_stream.pipeline.config import load_config
    from emim_stream.pipeline.measure.capacity import camera_capacity

    engine = {
        "backend": "torch",
        "device": args.device,
        "model": args.model,
        "frames": args.frames,
        "height": args.size,
        "width": args.size,
        "max_batch": args.max_batch,
        "threads": args.threads,
        "precision": args.precision,
    }
    config = {
        "cameras": [{"id": "cam1", "source": f"synthetic://?seed=1&fps={args.fps:g}&size=320x240"}],
        "engine": engine,
        "window": {"stride": args.stride},
    }
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(config, f)
        f.flush()
        cfg = load_config(f.name, args.set)
    emit(
        out,
        {
            "kind": "meta",
            "engine": dataclasses.asdict(cfg.engine),
            "fps": args.fps,
            "stride": args.stride,
            "seconds": args.seconds,
            "source": cfg.cameras[0].source,
        },
    )

    def on_step(s) -> None:
        emit(
            out,
            {
                "kind": "row",
                "cameras": s.cameras,
                "labels_per_s": s.windows_per_s,
                "served": s.served,
                "p50_middle_ms": s.p50_middle_ms,
                "p50_last_ms": s.p50_last_ms,
                "drift": s.drift,
                "p99_ms": s.p99_ms,
                "sustained": s.sustained,
            },
        )

    for count in args.counts:  # every count is measured: one cut short by a slow first start does not end the list
        camera_capacity(cfg, [count], args.seconds, stop=stop, on_step=on_step)


def _drain(proc: subprocess.Popen[bytes], frame_bytes: int, frames: list[int], cpu: list[float], i: int) -> None:
    """Count one stream's frames (ffmpeg blocks on a full pipe: none is lost) and keep its CPU seconds so far."""
    import psutil

    watched = psutil.Process(proc.pid)
    assert proc.stdout is not None
    while chunk := proc.stdout.read(frame_bytes * 16):
        frames[i] += len(chunk) // frame_bytes
        with contextlib.suppress(psutil.NoSuchProcess):
            cpu[i] = sum(watched.cpu_times()[:4])


def decode(args: argparse.Namespace, out: IO[str]) -> None:

    from emim_stream.pipeline.capture.hwaccel import ffmpeg_command
    from emim_stream.pipeline.measure.decode import make_test_video

    width, height = args.source_size
    with tempfile.TemporaryDirectory(prefix="gpu-decode-") as tmp:
        video = make_test_video(Path(tmp) / "in.mp4", width, height, 30, args.video_s, args.bitrate)
        cmd = ffmpeg_command(args.preset, str(video), (width, height), args.size, args.size)
        emit(out, {"kind": "meta", "preset": args.preset, "command": cmd, "source": f"{width}x{height}@30"})
        frame_bytes = args.size * args.size * 3
        for count in args.counts:
            t0 = time.monotonic()
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(count)]
            frames, cpu = [0] * count, [0.0] * count

            threads = [
                threading.Thread(target=_drain, args=(p, frame_bytes, frames, cpu, i)) for i, p in enumerate(procs)
            ]
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
            wall = time.monotonic() - t0
            total = sum(frames)
            emit(
                out,
                {
                    "kind": "row",
                    "preset": args.preset,
                    "streams": count,
                    "fps_per_stream": total / count / wall,
                    "cpu_ms_per_frame": 1000 * sum(cpu) / max(total, 1),
                    "ok": all(p.returncode == 0 for p in procs) and total == count * round(30 * args.video_s),
                },
            )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    e, t, o, c, d = (sub.add_parser(name) for name in ("env", "table", "op", "cameras", "decode"))
    for p in (e, t, o, c, d):
        p.add_argument("--out", required=True, help="JSON lines file to append to")
        p.add_argument("--device", default="cuda")
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    for p in (t, o):
        p.add_argument("--precisions", nargs="+", default=["bf16", "fp16", "fp32"])
        p.add_argument("--min-time", type=float, default=0.5, help="seconds timed per row, at least")
        p.add_argument("--min-iters", type=int, default=5, help="timed calls per row, at least")
        p.add_argument("--warmup", type=int, default=2, help="untimed calls before each row (default 2)")
    for p in (t, c):
        p.add_argument("--model", default="emim_s")
        p.add_argument("--frames", type=int, default=16)
        p.add_argument("--size", type=int, default=224, help="clip height and width")
    t.add_argument("--mode", choices=list(MODES), default="eager")
    t.add_argument("--kernels", nargs="+", default=["reference"])
    t.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    t.add_argument("--peak-tflops", type=float, default=790.0, help="the FLOP floor's peak (H200 bf16 dense: 790)")
    t.add_argument("--cache-dir", default=None, help="plan cache for aoti packages")
    t.add_argument(
        "--depths", type=int, nargs=4, help="other stage depths than the model's (rehearsal: faster compiles)"
    )
    t.add_argument("--numerics-clips", type=int, default=8, help="clips compared with eager fp32 (reference kernel)")
    o.add_argument("--batch", type=int, default=1)
    o.add_argument(
        "--no-natten", dest="natten", action="store_false", help="leave out NATTEN's na2d row (where installed)"
    )
    o.add_argument("--tiny", action="store_true", help="one tiny layer instead of EMIM-S's stage-3/4 sizes")
    c.add_argument("--precision", default="bf16")
    c.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    c.add_argument("--seconds", type=float, default=8.0, help="run length per camera count")
    c.add_argument("--fps", type=float, default=30.0)
    c.add_argument("--stride", type=int, default=4)
    c.add_argument("--max-batch", type=int, default=32)
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    d.add_argument("--preset", default="nvidia", help="a cameras[].hwaccel preset")
    d.add_argument("--counts", type=int, nargs="+", default=[1, 4, 8])
    d.add_argument("--source-size", type=int, nargs=2, default=[1920, 1080], metavar=("W", "H"))
    d.add_argument("--size", type=int, default=224, help="output height and width")
    d.add_argument("--video-s", type=float, default=10.0, help="length of the test video (each stream decodes it)")
    d.add_argument("--bitrate", default="6M")
    return parser


def main() -> int:
    args = _parser().parse_args()
    with open(args.out, "a") as out:
        try:
            {"env": env, "table": table, "op": op, "cameras": cameras, "decode": decode}[args.what](args, out)
        except KeyboardInterrupt:  # gpu-check's time box: the rows so far are written
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
