"""How each backend opens, and the checks it makes before it loads anything.

:data:`BACKENDS` maps a backend name to its opener ``(source, cfg, step) -> Engine``. Every opener
starts with :func:`check_backend` (library importable, device present, precision possible here),
which ``doctor`` calls too, so its report says what opening would. An opener raises
:class:`~engines.errors.BackendUnavailableError` when its backend cannot run here; the selection
policy (:mod:`engines.backends.select`) moves on only on that error.

The module imports nothing heavy; a backend is imported when it is checked or opened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engines.backends.base import Backend, Engine, EngineConfig, Precision
from engines.errors import BackendUnavailableError, ExportError

if TYPE_CHECKING:
    import torch

    from engines.backends.source import ModelSource

__all__ = ["BACKENDS", "ONNX_BACKENDS", "Candidate", "Opener", "cache_dir", "check_backend", "open_backend"]

ONNX_BACKENDS = frozenset({Backend.ONNXRUNTIME.value, Backend.TENSORRT.value})
"""Backends that run an ONNX graph: ``engine.onnx``, or the model exported into the cache."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A backend on a device at a precision (one step of the fallback chain), and why that precision."""

    backend: str
    device: str
    """'cpu', 'cuda', 'cuda:N' or 'auto' (onnxruntime: its CUDA provider if present, else the CPU)."""
    precision: str
    note: str = ""
    """Why the precision differs from the configured one (empty when it does not)."""

    def __str__(self) -> str:
        return f"{self.backend!r} on {self.device} ({self.precision})"


def check_backend(cfg: EngineConfig, step: Candidate) -> torch.device:
    """The device ``step`` runs on, after the checks its backend makes before loading a model.

    The aoti backend also needs a C++ compiler to build a package that is not cached
    (:func:`engines.backends.aoti_engine.cpp_compiler`); that is checked when a build is due.

    Raises:
        BackendUnavailableError: the backend's library is missing or too old, the CUDA device does not
            exist, ONNX Runtime lacks the CUDA provider for a CUDA device, or tensorrt is asked for bf16
            without a bf16 graph.
    """
    import torch

    from engines.backends.torch_engine import cuda_device

    if step.backend == Backend.TENSORRT:
        from engines.backends.trt_engine import import_tensorrt

        import_tensorrt()  # fail fast, before a GPU check or an export
        device = cuda_device(step.device, step.backend)
        if step.precision == Precision.BF16 and cfg.onnx is None:
            raise BackendUnavailableError(
                step.backend,
                "bf16 needs a bf16 graph in engine.onnx (e.g. ModelOpt AutoCast); the exporter writes fp32/fp16",
            )
        return device
    if step.backend == Backend.ONNXRUNTIME:
        from engines.backends.ort_engine import cuda_provider_present, providers_for

        if step.device == "auto":
            use_gpu = torch.cuda.is_available() and cuda_provider_present()
            device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        else:
            device = torch.device("cpu") if step.device == "cpu" else cuda_device(step.device, step.backend)
        providers_for(device)
        return device
    return torch.device("cpu") if step.device == "cpu" else cuda_device(step.device, step.backend)


def cache_dir(cfg: EngineConfig) -> Path:
    """The plan cache directory of ``cfg`` (``engine.plan_cache_dir`` or the default)."""
    from engines.backends.plan_cache import default_cache_dir

    return Path(cfg.plan_cache_dir).expanduser() if cfg.plan_cache_dir else default_cache_dir()


def _open_torch(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from engines.backends.torch_engine import TorchEngine

    device = check_backend(cfg, step)
    return TorchEngine(
        source, device, step.precision, cfg.max_batch, cfg.compile, cfg.cuda_graphs, cfg.threads, cfg.kernel
    )


def _open_aoti(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from engines.backends.aoti_engine import open_aoti

    return open_aoti(source, cfg, step)


def _onnx_for(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Path:
    from engines.backends.ort_engine import cached_onnx

    if cfg.onnx is not None:
        from engines.deployability import check_deployable

        # a calibration artifact must be for these weights, unchanged, and past its gate (or forced)
        check_deployable(cfg.onnx, source.weights_sha256, force=cfg.force_undeployable)
        return Path(cfg.onnx)
    try:
        return cached_onnx(source, cache_dir(cfg), half=step.precision == Precision.FP16)
    except ExportError as err:
        raise BackendUnavailableError(step.backend, f"ONNX export failed: {err}") from None


def _open_onnxruntime(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from engines.backends.ort_engine import OrtEngine

    device = check_backend(cfg, step)
    precision = step.precision if cfg.onnx is not None else None  # an exported graph says its own
    return OrtEngine(source, _onnx_for(source, cfg, step), device, cfg.max_batch, cfg.threads, precision)


def _open_tensorrt(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from engines.backends.plan_cache import PlanCache
    from engines.backends.trt_engine import TrtEngine

    device = check_backend(cfg, step)
    onnx = _onnx_for(source, cfg, step)
    cache = PlanCache(cache_dir(cfg))
    return TrtEngine(source, onnx, device, step.precision, cfg.max_batch, cache, cfg.cuda_graphs, cfg.workspace_gib)


Opener = Callable[["ModelSource", EngineConfig, Candidate], Engine]

BACKENDS: dict[str, Opener] = {
    Backend.TORCH.value: _open_torch,
    Backend.AOTI.value: _open_aoti,
    Backend.ONNXRUNTIME.value: _open_onnxruntime,
    Backend.TENSORRT.value: _open_tensorrt,
}
"""Backend name -> opener ``(source, cfg, step) -> Engine`` raising BackendUnavailableError."""


def open_backend(cfg: EngineConfig, step: Candidate, source: ModelSource | None = None) -> Engine:
    """Open exactly one backend (no fallback), e.g. for a benchmark of that backend.

    Raises:
        BackendUnavailableError: it cannot run here.
    """
    from engines.backends.source import load_source

    return BACKENDS[step.backend](source or load_source(cfg), cfg, step)
