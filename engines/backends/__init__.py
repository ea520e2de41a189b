"""Inference backends behind one :class:`~engines.backends.base.Engine` interface, and the fallback chain.

:func:`load_engine` tries the configured backend and, when it cannot run here, falls back in a
fixed order, logging one line per decision with the reason:

- ``auto`` / ``tensorrt``: tensorrt on CUDA -> aoti on CUDA -> torch on CUDA -> torch on the CPU
  (``auto`` with ``device: cpu``: torch on the CPU)
- ``aoti``: aoti on CUDA -> torch on CUDA -> aoti on the CPU -> torch on the CPU (``device: cpu``:
  aoti -> torch on the CPU; ``device: cuda``: aoti -> torch on CUDA -> torch on the CPU)
- ``torch``: torch on CUDA -> torch on the CPU (``device: cpu``: the CPU only)
- ``onnxruntime``: onnxruntime -> torch on CUDA -> torch on the CPU

Only :class:`~engines.errors.BackendUnavailableError` moves the chain on (not installed, no GPU,
an op TensorRT's parser lacks, a failed build); any other error is a real one and propagates.
Precision follows each step: torch and aoti have no int8/fp8 path (they run fp16 on CUDA, fp32 on
the CPU), and a CPU fallback runs fp32 unless bf16 was asked for.

:func:`start_engine` is :func:`load_engine` for a live pipeline (DESIGN "Warm-up"): an aoti
package that is not cached yet is built in a background process while the next candidate serves.

The package imports nothing heavy; backends are imported when chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engines.backends.base import Backend, Engine, EngineConfig, EngineInfo, InputSpec, Precision
from engines.errors import BackendUnavailableError, ExportError

if TYPE_CHECKING:
    from engines.backends.aoti_engine import BackgroundBuild
    from engines.backends.source import ModelSource

__all__ = [
    "BACKENDS",
    "Backend",
    "Candidate",
    "Engine",
    "EngineConfig",
    "EngineInfo",
    "InputSpec",
    "Precision",
    "cache_dir",
    "fallback_chain",
    "load_engine",
    "open_backend",
    "start_engine",
]

log = logging.getLogger(__name__)

_FP = (Precision.FP32, Precision.FP16, Precision.BF16)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One step of the fallback chain: a backend on a device at a precision, and why that precision."""

    backend: str
    device: str
    """'cpu', 'cuda', 'cuda:N' or 'auto' (onnxruntime: its CUDA provider if present, else the CPU)."""
    precision: str
    note: str = ""
    """Why the precision differs from the configured one (empty when it does not)."""

    def __str__(self) -> str:
        return f"{self.backend!r} on {self.device} ({self.precision})"


def _torch_step(cfg: EngineConfig, device: str, first: bool, backend: str = "torch") -> Candidate:
    """A torch or aoti step: fp32 / fp16 / bf16 only, fp16 on the CPU only when asked for first."""
    p = Precision(cfg.precision)
    if p not in _FP:
        target = Precision.FP32 if device == "cpu" else Precision.FP16
        return Candidate(backend, device, target.value, f"{backend} has no {p.value} path")
    if device == "cpu" and p == Precision.FP16 and not first:
        return Candidate(backend, device, Precision.FP32.value, "fp16 on the CPU is slow")
    return Candidate(backend, device, p.value)


def _ort_step(cfg: EngineConfig) -> Candidate:
    p = Precision(cfg.precision)
    if cfg.onnx is None and p == Precision.BF16:
        return Candidate("onnxruntime", cfg.device, Precision.FP32.value, "the exporter writes fp32 or fp16 graphs")
    return Candidate("onnxruntime", cfg.device, p.value)


def fallback_chain(cfg: EngineConfig) -> list[Candidate]:
    """The candidates :func:`load_engine` tries for ``cfg``, in order (just the first without ``fallback``)."""
    gpu = cfg.device if cfg.device.startswith("cuda") else "cuda"
    torch_gpu_cpu = [_torch_step(cfg, gpu, False), _torch_step(cfg, "cpu", False)]
    if cfg.backend == Backend.ONNXRUNTIME:
        rest = [_torch_step(cfg, "cpu", False)] if cfg.device == "cpu" else torch_gpu_cpu
        chain = [_ort_step(cfg), *rest]
    elif cfg.backend == Backend.AOTI:
        aoti_gpu = _torch_step(cfg, gpu, True, "aoti")
        if cfg.device == "cpu":
            chain = [_torch_step(cfg, "cpu", True, "aoti"), _torch_step(cfg, "cpu", True)]
        elif cfg.device == "auto":
            cpu = [_torch_step(cfg, "cpu", False, "aoti"), _torch_step(cfg, "cpu", False)]
            chain = [aoti_gpu, _torch_step(cfg, gpu, False), *cpu]
        else:
            chain = [aoti_gpu, *torch_gpu_cpu]
    elif cfg.device == "cpu":
        chain = [_torch_step(cfg, "cpu", True)]
    elif cfg.backend == Backend.TORCH:
        chain = [_torch_step(cfg, gpu, True), _torch_step(cfg, "cpu", False)]
    else:  # auto, tensorrt
        chain = [Candidate("tensorrt", gpu, cfg.precision), _torch_step(cfg, gpu, False, "aoti"), *torch_gpu_cpu]
    return chain if cfg.fallback else chain[:1]


def cache_dir(cfg: EngineConfig) -> Path:
    """The plan cache directory of ``cfg`` (``engine.plan_cache_dir`` or the default)."""
    from engines.backends.plan_cache import default_cache_dir

    return Path(cfg.plan_cache_dir).expanduser() if cfg.plan_cache_dir else default_cache_dir()


def _open_torch(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    import torch

    from engines.backends.torch_engine import TorchEngine, cuda_device

    device = torch.device("cpu") if step.device == "cpu" else cuda_device(step.device, "torch")
    return TorchEngine(
        source, device, step.precision, cfg.max_batch, cfg.compile, cfg.cuda_graphs, cfg.threads, cfg.kernel
    )


def _open_aoti(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from engines.backends.aoti_engine import open_aoti

    return open_aoti(source, cfg, step)


def _onnx_for(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Path:
    from engines.backends.ort_engine import cached_onnx

    if cfg.onnx is not None:
        from calibration.report import check_deployable

        # a calibration artifact must be for these weights, unchanged, and past its gate (or forced)
        check_deployable(cfg.onnx, source.weights_sha256, force=cfg.force_undeployable)
        return Path(cfg.onnx)
    try:
        return cached_onnx(source, cache_dir(cfg), half=step.precision == Precision.FP16)
    except ExportError as err:
        raise BackendUnavailableError(step.backend, f"ONNX export failed: {err}") from None


def _open_onnxruntime(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    import torch

    from engines.backends.ort_engine import OrtEngine, cuda_provider_present
    from engines.backends.torch_engine import cuda_device

    if step.device == "auto":
        use_gpu = torch.cuda.is_available() and cuda_provider_present()
        device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    else:
        device = torch.device("cpu") if step.device == "cpu" else cuda_device(step.device, "onnxruntime")
    precision = step.precision if cfg.onnx is not None else None  # an exported graph says its own
    return OrtEngine(source, _onnx_for(source, cfg, step), device, cfg.max_batch, cfg.threads, precision)


def _open_tensorrt(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from engines.backends.plan_cache import PlanCache
    from engines.backends.torch_engine import cuda_device
    from engines.backends.trt_engine import TrtEngine, import_tensorrt

    import_tensorrt()  # fail fast, before a GPU check or an export
    device = cuda_device(step.device, "tensorrt")
    if step.precision == Precision.BF16 and cfg.onnx is None:
        raise BackendUnavailableError(
            "tensorrt", "bf16 needs a bf16 graph in engine.onnx (e.g. ModelOpt AutoCast); the exporter writes fp32/fp16"
        )
    onnx = _onnx_for(source, cfg, step)
    cache = PlanCache(cache_dir(cfg))
    return TrtEngine(source, onnx, device, step.precision, cfg.max_batch, cache, cfg.cuda_graphs, cfg.workspace_gib)


Opener = Callable[["ModelSource", EngineConfig, Candidate], Engine]

BACKENDS: dict[str, Opener] = {
    "torch": _open_torch,
    "aoti": _open_aoti,
    "onnxruntime": _open_onnxruntime,
    "tensorrt": _open_tensorrt,
}
"""Backend name -> opener ``(source, cfg, step) -> Engine`` raising BackendUnavailableError."""


def open_backend(cfg: EngineConfig, step: Candidate, source: ModelSource | None = None) -> Engine:
    """Open exactly one backend (no fallback), e.g. for a benchmark of that backend.

    Raises:
        BackendUnavailableError: it cannot run here.
    """
    from engines.backends.source import load_source

    return BACKENDS[step.backend](source or load_source(cfg), cfg, step)


def load_engine(
    cfg: EngineConfig, source: ModelSource | None = None, openers: Mapping[str, Opener] = BACKENDS
) -> Engine:
    """The first engine of :func:`fallback_chain` that runs here, logging each decision and why.

    Args:
        cfg: the engine config.
        source: an already loaded model (default: load what ``cfg`` names).
        openers: backend name -> opener (tests substitute fakes).

    Raises:
        BackendUnavailableError: no candidate can run (the message lists each reason).
        ConfigError, CheckpointError, KernelUnavailableError: the config or checkpoint is wrong.
    """
    from engines.backends.source import load_source

    source = source or load_source(cfg)
    chain = fallback_chain(cfg)
    reasons = []
    for i, step in enumerate(chain):
        try:
            engine = openers[step.backend](source, cfg, step)
        except BackendUnavailableError as err:
            reasons.append(f"{step}: {err.reason}")
            if i + 1 < len(chain):
                log.warning("backend %s unavailable (%s); trying %s", step, err.reason, chain[i + 1])
            else:
                log.warning("backend %s unavailable (%s)", step, err.reason)
            continue
        why = f" (asked {cfg.precision}: {step.note})" if step.note else ""
        log.info("using backend %s%s: %s", step, why, engine.describe().summary())
        return engine
    raise BackendUnavailableError(cfg.backend, "no backend can run here: " + "; ".join(reasons))


def start_engine(cfg: EngineConfig, source: ModelSource | None = None) -> tuple[Engine, BackgroundBuild | None]:
    """:func:`load_engine` that never waits for a compile (DESIGN "Warm-up").

    An aoti step whose package is not cached yet (and that is not the chain's last step) starts
    building it in a background process and moves the chain on, so the next candidate serves
    until the build is done; a cached package loads at once.

    Returns:
        (the serving engine, the background build or None). Swap to ``build.engine()`` once
        ``build.done()``; ``build.close()`` ends it early.

    Raises:
        As :func:`load_engine` (a background build already started is ended first).
    """
    from engines.backends.aoti_engine import BackgroundBuild, NotBuiltError, cpp_compiler, open_aoti
    from engines.backends.source import load_source

    source = source or load_source(cfg)
    last = fallback_chain(cfg)[-1]
    builds: list[BackgroundBuild] = []

    def open_or_defer(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
        if builds or step == last:
            return open_aoti(source, cfg, step)
        try:
            return open_aoti(source, cfg, step, build=False)
        except NotBuiltError as err:
            cpp_compiler()  # no compiler: the chain moves on with that reason, no build is started
            builds.append(BackgroundBuild(cfg, step, source))
            raise BackendUnavailableError(
                "aoti", f"{err.reason}; building it in a background process (pid {builds[0].pid})"
            ) from None

    try:
        engine = load_engine(cfg, source, {**BACKENDS, "aoti": open_or_defer})
    except BaseException:
        for build in builds:
            build.close()
        raise
    return engine, (builds[0] if builds else None)
