"""The backend selection policy: which backends are tried for a config, in which order, and why.

:func:`load_engine` tries the configured backend and, when it cannot run here, falls back in a
fixed order, logging one line per decision with the reason:

- ``auto`` / ``tensorrt``: tensorrt on CUDA -> aoti on CUDA -> torch on CUDA -> torch on the CPU
  (``auto`` with ``device: cpu``: torch on the CPU)
- ``aoti``: aoti on CUDA -> torch on CUDA -> aoti on the CPU -> torch on the CPU (``device: cpu``:
  aoti -> torch on the CPU; ``device: cuda``: aoti -> torch on CUDA -> torch on the CPU)
- ``torch``: torch on CUDA -> torch on the CPU (``device: cpu``: the CPU only)
- ``onnxruntime``: onnxruntime -> torch on CUDA -> torch on the CPU

Only :class:`~emim_stream.engines.errors.BackendUnavailableError` moves the chain on (not installed, no GPU,
an op TensorRT's parser lacks, a failed build); any other error is a real one and propagates.
Precision follows each step: torch and aoti have no int8/fp8 path (they run fp16 on CUDA, fp32 on
the CPU), and a CPU fallback runs fp32 unless bf16 was asked for.

:func:`start_engine` is :func:`load_engine` for a live pipeline (docs/architecture.md#warm-up): an aoti
package that is not cached yet is built in a background process while the next candidate serves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from emim_stream.engines.backends.base import Backend, Engine, EngineConfig, Precision
from emim_stream.engines.backends.candidate import Candidate
from emim_stream.engines.backends.openers import BACKENDS, Opener
from emim_stream.engines.errors import BackendUnavailableError

if TYPE_CHECKING:
    from emim_stream.engines.backends.aoti_engine import BackgroundBuild
    from emim_stream.engines.backends.model_source import ModelSource

__all__ = ["fallback_chain", "load_engine", "start_engine"]

log = logging.getLogger(__name__)

_FP = (Precision.FP32, Precision.FP16, Precision.BF16)


class _Deferred(BackendUnavailableError):
    """The step's engine is being built in the background: the chain moves on, and :func:`start_engine` says so."""


def _torch_step(cfg: EngineConfig, device: str, first: bool, backend: str = Backend.TORCH.value) -> Candidate:
    """A torch or aoti step: fp32 / fp16 / bf16 only, fp16 on the CPU only when asked for first."""
    p = Precision(cfg.precision)
    if p not in _FP:
        target = Precision.FP32 if device == "cpu" else Precision.FP16
        return Candidate(backend, device, target.value, f"{backend} has no {p.value} path")
    if device == "cpu" and p == Precision.FP16 and not first:
        return Candidate(backend, device, Precision.FP32.value, "fp16 on the CPU is slow")
    return Candidate(backend, device, p.value)


def _aoti_step(cfg: EngineConfig, device: str, first: bool) -> Candidate:
    return _torch_step(cfg, device, first, Backend.AOTI.value)


def _ort_step(cfg: EngineConfig) -> Candidate:
    p = Precision(cfg.precision)
    if cfg.onnx is None and p == Precision.BF16:
        return Candidate(
            Backend.ONNXRUNTIME.value, cfg.device, Precision.FP32.value, "the exporter writes fp32 or fp16 graphs"
        )
    return Candidate(Backend.ONNXRUNTIME.value, cfg.device, p.value)


def fallback_chain(cfg: EngineConfig) -> list[Candidate]:
    """The candidates :func:`load_engine` tries for ``cfg``, in order (just the first without ``fallback``)."""
    gpu = cfg.device if cfg.device.startswith("cuda") else "cuda"
    torch_gpu_cpu = [_torch_step(cfg, gpu, False), _torch_step(cfg, "cpu", False)]
    if cfg.backend == Backend.ONNXRUNTIME:
        rest = [_torch_step(cfg, "cpu", False)] if cfg.device == "cpu" else torch_gpu_cpu
        chain = [_ort_step(cfg), *rest]
    elif cfg.backend == Backend.AOTI:
        if cfg.device == "cpu":
            chain = [_aoti_step(cfg, "cpu", True), _torch_step(cfg, "cpu", True)]
        elif cfg.device == "auto":
            cpu = [_aoti_step(cfg, "cpu", False), _torch_step(cfg, "cpu", False)]
            chain = [_aoti_step(cfg, gpu, True), _torch_step(cfg, gpu, False), *cpu]
        else:
            chain = [_aoti_step(cfg, gpu, True), *torch_gpu_cpu]
    elif cfg.device == "cpu":
        chain = [_torch_step(cfg, "cpu", True)]
    elif cfg.backend == Backend.TORCH:
        chain = [_torch_step(cfg, gpu, True), _torch_step(cfg, "cpu", False)]
    else:  # auto, tensorrt
        tensorrt = Candidate(Backend.TENSORRT.value, gpu, cfg.precision)
        chain = [tensorrt, _aoti_step(cfg, gpu, False), *torch_gpu_cpu]
    return chain if cfg.fallback else chain[:1]


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
        CalibrationError: ``engine.onnx`` is a calibrated graph the engine must refuse.
    """
    from emim_stream.engines.backends.model_source import load_source

    source = source or load_source(cfg)
    chain = fallback_chain(cfg)
    reasons = []
    for i, step in enumerate(chain):
        try:
            engine = openers[step.backend](source, cfg, step)
        except BackendUnavailableError as err:
            reasons.append(f"{step}: {err.reason}")
            if isinstance(err, _Deferred):
                continue
            if i + 1 < len(chain):
                log.warning("backend %s unavailable (%s); trying %s", step, err.reason, chain[i + 1])
            else:
                log.warning("backend %s unavailable (%s)", step, err.reason)
            continue
        why = f" (asked {cfg.precision}: {step.note})" if step.note else ""
        log.info("using backend %s%s: %s", step, why, engine.describe().summary())
        return engine
    raise BackendUnavailableError(cfg.backend, "no backend can run here: " + "; ".join(reasons))


def _expected_build_time(previous_s: float | None) -> str:
    if previous_s is None:
        return "usually a few minutes on a small CPU, longer when the box is busy"
    about = f"{previous_s:.0f} s" if previous_s < 90 else f"{previous_s / 60:.0f} min"
    return f"about {about}, as the last build here"


def start_engine(cfg: EngineConfig, source: ModelSource | None = None) -> tuple[Engine, BackgroundBuild | None]:
    """:func:`load_engine` that never waits for a compile (docs/architecture.md#warm-up).

    An aoti step whose package is not cached yet (and that is not the chain's last step) starts
    building it in a background process and moves the chain on, so the next candidate serves
    until the build is done (announced at INFO, once: designed behaviour, nothing to act on); a
    cached package loads at once.

    Returns:
        (the serving engine, the background build or None). Swap to ``build.engine()`` once
        ``build.done()``; ``build.close()`` ends it early.

    Raises:
        As :func:`load_engine` (a background build already started is ended first).
    """
    from emim_stream.engines.backends.aoti_engine import BackgroundBuild, NotBuiltError, cpp_compiler, open_aoti
    from emim_stream.engines.backends.model_source import load_source

    source = source or load_source(cfg)
    last = fallback_chain(cfg)[-1]
    builds: list[BackgroundBuild] = []
    previous_s: list[float | None] = []

    def open_or_defer(source: ModelSource, cfg: EngineConfig, step: Candidate) -> Engine:
        if builds or step == last:
            return open_aoti(source, cfg, step)
        try:
            return open_aoti(source, cfg, step, build=False)
        except NotBuiltError as err:
            cpp_compiler()  # no compiler: the chain moves on with that reason, no build is started
            builds.append(BackgroundBuild(cfg, step, source))
            previous_s.append(err.previous_s)
            raise _Deferred("aoti", f"{err.reason}; building it in the background") from None

    try:
        engine = load_engine(cfg, source, {**BACKENDS, Backend.AOTI.value: open_or_defer})
    except BaseException:
        for build in builds:
            build.close()
        raise
    if not builds:
        return engine, None
    build = builds[0]
    log.info(
        "compiling the %s engine for %s in the background (process %d, %s): %s. Labels are served by %s "
        "meanwhile and it takes over by itself when ready; progress is in the '[aoti build]' lines. "
        "`emim-stream build-engine` builds it ahead of time.",
        build.step,
        source.model_name,
        build.pid,
        build.priority,
        _expected_build_time(previous_s[0]),
        engine.describe().backend,
    )
    return engine, build
