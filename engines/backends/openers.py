"""How each backend opens.

:data:`BACKENDS` maps a backend name to its opener ``(source, cfg, step) -> Engine``. Every opener
starts with :func:`~emim_stream.engines.backends.candidate.check_backend` (library importable, device present,
precision possible here), which ``doctor`` calls too, so its report says what opening would. An opener raises
:class:`~emim_stream.engines.errors.BackendUnavailableError` when its backend cannot run here; the selection
policy (:mod:`emim_stream.engines.backends.select`) moves on only on that error.

The module imports nothing heavy; a backend is imported when it is checked or opened.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from emim_stream.engines.backends.base import Backend, Engine, EngineConfig, Precision
from emim_stream.engines.backends.candidate import Candidate, cache_dir, check_backend
from emim_stream.engines.errors import BackendUnavailableError, ExportError

if TYPE_CHECKING:

    from emim_stream.engines.backends.model_source import ModelSource

__all__ = ["BACKENDS", "Opener", "open_backend"]

def _open_torch(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from emim_stream.engines.backends.torch_engine import TorchEngine

    device = check_backend(cfg, step)
    return TorchEngine(
        source, device, step.precision, cfg.max_batch, cfg.compile, cfg.cuda_graphs, cfg.threads, cfg.kernel
    )


def _open_aoti(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from emim_stream.engines.backends.aoti_engine import open_aoti

    return open_aoti(source, cfg, step)


def _onnx_for(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Path:
    from emim_stream.engines.backends.ort_engine import cached_onnx

    if cfg.onnx is not None:
        from emim_stream.engines.export.deployability import check_deployable

        # a calibration artifact must be for these weights, unchanged, and past its gate (or forced)
        check_deployable(cfg.onnx, source.weights_sha256, force=cfg.force_undeployable)
        return Path(cfg.onnx)
    try:
        return cached_onnx(source, cache_dir(cfg), half=step.precision == Precision.FP16)
    except ExportError as err:
        raise BackendUnavailableError(step.backend, f"ONNX export failed: {err}") from None


def _open_onnxruntime(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from emim_stream.engines.backends.ort_engine import OrtEngine

    device = check_backend(cfg, step)
    precision = step.precision if cfg.onnx is not None else None  # an exported graph says its own
    return OrtEngine(source, _onnx_for(source, cfg, step), device, cfg.max_batch, cfg.threads, precision)


def _open_tensorrt(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
    from emim_stream.engines.backends.engine_cache import EngineCache
    from emim_stream.engines.backends.trt_engine import TrtEngine

    device = check_backend(cfg, step)
    onnx = _onnx_for(source, cfg, step)
    cache = EngineCache(cache_dir(cfg))
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
    from emim_stream.engines.backends.model_source import load_source

    return BACKENDS[step.backend](source or load_source(cfg), cfg, step)
