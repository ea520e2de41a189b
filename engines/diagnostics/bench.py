"""Benchmarks: engines per clip (latency percentiles, clips/s, achieved MAC/s) and the EMIM op per layer.

Per-clip latency of a batch of B clips is the batch's wall time divided by B (what one clip costs
when B cameras are served together); the batch time is reported beside it. Timing uses
``time.perf_counter_ns`` around ``infer``, with a device synchronise on CUDA. Warm-up runs are not
timed (first calls allocate, autotune, compile or capture CUDA graphs).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emim_stream.engines.backends import Candidate, Engine, EngineConfig, EngineInfo, open_backend
from emim_stream.engines.backends.model_source import ModelSource, load_source
from emim_stream.engines.diagnostics.flops import count_cost
from emim_stream.engines.errors import BackendUnavailableError, KernelUnavailableError
from emim_stream.engines.layers.neighborhood import KERNELS, WINDOW, choose_kernel, emim_neighborhood

__all__ = [
    "OP_LAYERS",
    "BenchResult",
    "OpBenchResult",
    "OpLayer",
    "bench_backends",
    "bench_engine",
    "bench_op",
    "time_calls",
]

log = logging.getLogger(__name__)


def time_calls(
    fn: Callable[[], object],
    warmup: int,
    min_iters: int,
    min_time_s: float,
    sync: Callable[[], None] | None = None,
    max_iters: int = 1000,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then time it until both ``min_iters`` and ``min_time_s`` are met.

    Returns:
        Wall time of each timed call in milliseconds.
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times_ms: list[float] = []
    start = time.perf_counter()
    while len(times_ms) < max_iters and (len(times_ms) < min_iters or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter_ns()
        fn()
        if sync:
            sync()
        times_ms.append((time.perf_counter_ns() - t0) / 1e6)
    return times_ms


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One engine's timing at one batch size, or why it could not run."""

    backend: str
    precision: str
    device: str
    batch: int
    info: EngineInfo | None = None
    iters: int = 0
    clip_ms_p50: float = float("nan")
    clip_ms_p90: float = float("nan")
    batch_ms_p50: float = float("nan")
    clips_per_s: float = float("nan")
    macs_per_s: float = float("nan")
    unavailable: str = ""
    """Why the backend could not run (empty when it did)."""


def _sync_for(device: torch.device) -> Callable[[], None] | None:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def bench_engine(
    engine: Engine,
    batch: int,
    macs_per_clip: int,
    warmup: int = 2,
    min_iters: int = 5,
    min_time_s: float = 2.0,
    label: str | None = None,
) -> BenchResult:
    """Time ``engine.infer`` on a random batch of ``batch`` clips (``label``: the row's name, default the backend)."""
    spec = engine.input_spec
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(spec.shape(batch), generator=gen).to(engine.device, spec.dtype)
    times_ms = time_calls(lambda: engine.infer(clips), warmup, min_iters, min_time_s, _sync_for(engine.device))
    info = engine.describe()
    p50 = float(np.percentile(times_ms, 50))
    clips_per_s = batch * 1000 / p50
    return BenchResult(
        backend=label or info.backend,
        precision=info.precision,
        device=info.device,
        batch=batch,
        info=info,
        iters=len(times_ms),
        clip_ms_p50=p50 / batch,
        clip_ms_p90=float(np.percentile(times_ms, 90)) / batch,
        batch_ms_p50=p50,
        clips_per_s=clips_per_s,
        macs_per_s=macs_per_clip * clips_per_s,
    )


def _bench_device(cfg: EngineConfig, backend: str) -> str:
    """The device a benchmark of ``backend`` runs on: the configured one, ``auto`` resolved."""
    if cfg.device != "auto":
        return cfg.device
    if backend == "onnxruntime":
        return "auto"  # its CUDA provider if present, else the CPU
    return "cuda" if backend == "tensorrt" or torch.cuda.is_available() else "cpu"


def bench_backends(
    cfg: EngineConfig,
    backends: Sequence[str],
    batch: int,
    warmup: int = 2,
    min_iters: int = 5,
    min_time_s: float = 2.0,
) -> tuple[ModelSource, int, list[BenchResult]]:
    """Benchmark each backend in turn on the same weights and clip (no fallback: a backend that
    cannot run gets a row saying why).

    Args:
        backends: backend names, or ``torch-compile`` (the torch backend under torch.compile); an aoti
            package is built first when it is not cached.

    Returns:
        (the model source, MACs per clip, one result per backend in the order given).
    """
    source = load_source(cfg)
    clip = source.clip
    macs = count_cost(source.model, (3, clip.frames, clip.height, clip.width)).macs
    results = []
    for name in backends:
        backend = "torch" if name == "torch-compile" else name
        step = Candidate(backend, _bench_device(cfg, backend), cfg.precision)
        own = dataclasses.replace(source, model=copy.deepcopy(source.model))  # engines may move / cast it
        own_cfg = dataclasses.replace(cfg, compile=name == "torch-compile")
        try:
            engine = open_backend(own_cfg, step, own)
        except BackendUnavailableError as err:
            log.warning("bench: %s unavailable: %s", step, err.reason)
            results.append(BenchResult(name, cfg.precision, step.device, batch, unavailable=err.reason))
            continue
        with engine:
            log.info("bench: %s", engine.describe().summary())
            results.append(bench_engine(engine, batch, macs, warmup, min_iters, min_time_s, label=name))
    return source, macs, results


@dataclass(frozen=True, slots=True)
class OpLayer:
    """One EMIM layer's op size: heads, token grid T x H x W, head width d."""

    name: str
    heads: int
    frames: int
    height: int
    width: int
    head_dim: int = 64

    @property
    def macs(self) -> int:
        """Window MACs for one clip: q.k and weights.v over 49 offsets for the T-1 distinct slots."""
        return 2 * WINDOW * WINDOW * self.heads * self.head_dim * (self.frames - 1) * self.height * self.width

    def __str__(self) -> str:
        return f"{self.name} ({self.heads} heads, {self.frames}x{self.height}x{self.width}, d={self.head_dim})"


OP_LAYERS = (OpLayer("stage 3", 5, 16, 14, 14), OpLayer("stage 4", 8, 16, 7, 7))
"""EMIM-S's EMIM layer sizes at 16x224x224 (temporal stride 1)."""


@dataclass(frozen=True, slots=True)
class OpBenchResult:
    """One kernel on one layer size."""

    layer: OpLayer
    kernel: str
    batch: int
    ms_p50: float
    ms_p90: float
    macs_per_s: float
    note: str = ""


def _natten_context(layer: OpLayer, batch: int, device: torch.device, dtype: torch.dtype) -> Callable[[], object]:
    """NATTEN's fused na2d on the padded maps (the context branch of a model with rpb = 0)."""
    from natten.functional import na2d

    n = batch * (layer.frames - 1)
    shape = (n, layer.height + 2 * (WINDOW // 2), layer.width + 2 * (WINDOW // 2), layer.heads, layer.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    return lambda: na2d(q, k, v, kernel_size=WINDOW)


def _op_runs(
    layer: OpLayer, kernels: Sequence[str], device: torch.device, dtype: torch.dtype, batch: int, compile: bool
) -> list[tuple[str, Callable[[], object], str]]:
    """(label, call, note) for each kernel (and its compiled form) on random inputs of ``layer``'s size."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, layer.heads, layer.frames, layer.height, layer.width, layer.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    rpb = (torch.randn(layer.heads, WINDOW, WINDOW, generator=gen) * 0.02).to(device, dtype)
    runs: list[tuple[str, Callable[[], object], str]] = []
    for name in kernels:
        try:
            choose_kernel(name, device)
        except KernelUnavailableError as err:
            log.info("bench --op: skipping %s: %s", name, err)
            continue
        note = "Triton interpreter: not a speed figure" if name == "triton" and device.type == "cpu" else ""
        runs.append((name, functools.partial(emim_neighborhood, q, k, v, rpb, kernel=name), note))
        if compile:
            compiled = torch.compile(emim_neighborhood)
            runs.append((f"{name} + torch.compile", functools.partial(compiled, q, k, v, rpb, kernel=name), ""))
    return runs


def bench_op(
    layers: Sequence[OpLayer] = OP_LAYERS,
    kernels: Sequence[str] | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    batch: int = 1,
    compile: bool = False,
    natten: bool = True,
    warmup: int = 3,
    min_iters: int = 10,
    min_time_s: float = 1.0,
) -> list[OpBenchResult]:
    """Time each EMIM kernel (logits and context, all T slots) at each layer size.

    Args:
        kernels: names from the kernel table (default: all of them; ``triton`` only where it runs:
            CUDA, or the CPU under Triton's interpreter, whose timings are not speed figures).
        compile: also time ``torch.compile`` of the op with each kernel.
        natten: also time NATTEN's fused ``na2d`` where installed; it computes only the context
            branch with rpb = 0 (no logits), so it is a reference point, not an EMIM kernel.
    """
    device = device or torch.device("cpu")
    for name in kernels or ():
        choose_kernel(name, device)  # a kernel asked for by name must run here
    sync = _sync_for(device)
    results = []
    for layer in layers:
        runs = _op_runs(layer, kernels or sorted(KERNELS), device, dtype, batch, compile)
        if natten:
            try:
                runs.append(("natten.na2d", _natten_context(layer, batch, device, dtype), "context only, rpb=0"))
            except ImportError:
                log.info("bench --op: natten is not installed; skipping its row")
        for name, fn, note in runs:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # natten on the CPU warns that flex attention runs uncompiled
                times_ms = time_calls(fn, warmup, min_iters, min_time_s, sync)
            p50 = float(np.percentile(times_ms, 50))
            other_work = name == "natten.na2d"  # context only: its MAC/s would not compare
            macs_per_s = float("nan") if other_work else layer.macs * batch * 1000 / p50
            results.append(OpBenchResult(layer, name, batch, p50, float(np.percentile(times_ms, 90)), macs_per_s, note))
    return results
