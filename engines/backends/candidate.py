"""One step of the fallback chain (a backend on a device at a precision) and the checks it makes before loading.

Below the openers and every backend module: the aoti build process and ``doctor`` make the same checks.
The module imports nothing heavy; a backend's library is imported when it is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emim_stream.engines.backends.base import Backend, EngineConfig, Precision
from emim_stream.engines.errors import BackendUnavailableError

if TYPE_CHECKING:
    import torch

__all__ = ["ONNX_BACKENDS", "Candidate", "cache_dir", "check_backend"]

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
    (:func:`emim_stream.engines.backends.aoti_engine.cpp_compiler`); that is checked when a build is due.

    Raises:
        BackendUnavailableError: the backend's library is missing or too old, the CUDA device does not
            exist, ONNX Runtime lacks the CUDA provider for a CUDA device, or tensorrt is asked for bf16
            without a bf16 graph.
    """
    import torch

    from emim_stream.engines.backends.torch_engine import cuda_device

    if step.backend == Backend.TENSORRT:
        from emim_stream.engines.backends.trt_engine import import_tensorrt

        import_tensorrt()  # fail fast, before a GPU check or an export
        device = cuda_device(step.device, step.backend)
        if step.precision == Precision.BF16 and cfg.onnx is None:
            raise BackendUnavailableError(
                step.backend,
                "bf16 needs a bf16 graph in engine.onnx (e.g. ModelOpt AutoCast); the exporter writes fp32/fp16",
            )
        return device
    if step.backend == Backend.ONNXRUNTIME:
        from emim_stream.engines.backends.ort_engine import cuda_provider_present, providers_for

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
    from emim_stream.engines.backends.engine_cache import default_cache_dir

    return Path(cfg.plan_cache_dir).expanduser() if cfg.plan_cache_dir else default_cache_dir()
