"""The engine contract: config, records and the ``Engine`` protocol every backend meets.

An engine classifies batches of clips (the VMP prompts, already normalised) on its own device:
``infer(clips [B, 3, T, H, W]) -> logits [B, classes]`` (float32). Backends: ``torch`` (CPU/CUDA),
``aoti``, ``onnxruntime`` and ``tensorrt``; :func:`emim_stream.engines.backends.select.load_engine` picks one
from an :class:`EngineConfig` and falls back in a stated order.

This module imports neither torch nor any backend (the pipeline config embeds
:class:`EngineConfig`, and camera processes load that config without paying for torch).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import msgspec

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.validation import check_ranges, closest_key, explain, ranged

if TYPE_CHECKING:
    import torch

    from emim_stream.engines.layers.vmp import VmpLayer

__all__ = [
    "QUANTIZED",
    "Backend",
    "Engine",
    "EngineConfig",
    "EngineInfo",
    "InputSpec",
    "Precision",
    "check_clips",
    "read_engine_section",
]


class Backend(str, Enum):
    """Inference backends; ``AUTO`` = the fastest that works here (tensorrt, then aoti, then torch)."""

    AUTO = "auto"
    TORCH = "torch"
    AOTI = "aoti"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


class Precision(str, Enum):
    """Compute precision. ``INT8`` / ``FP8`` need a Q/DQ ONNX from calibration (onnxruntime, tensorrt)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    FP8 = "fp8"


QUANTIZED = (Precision.INT8, Precision.FP8)
"""Precisions that live in a Q/DQ graph made by calibration (``engine.onnx``), not in a backend flag."""

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
MAX_FRAMES = 128
"""Largest clip length ``engine.frames`` accepted."""
MAX_SIDE = 1024
"""Largest clip ``engine.height`` / ``engine.width`` accepted (pixels)."""
MAX_THREADS = 256
"""Largest ``engine.threads`` accepted (libraries abort on absurd thread counts)."""


def _choice(field: str, value: Any, enum: type[Enum]) -> None:
    allowed = [e.value for e in enum]
    if value not in allowed:
        raise ConfigError(f"engine.{field} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What engine to run and how; the pipeline config's ``engine:`` section.

    Exactly one of ``checkpoint`` and ``model`` names the weights. ``frames`` / ``height`` /
    ``width`` default to the checkpoint's clip (or the model's default input).
    """

    backend: str = "auto"
    """auto | torch | aoti | onnxruntime | tensorrt. auto = tensorrt (then aoti) on a GPU, else torch."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N. auto = the first CUDA GPU if there is one, else the CPU."""
    precision: str = "fp32"
    """fp32 | fp16 | bf16 | int8 | fp8 (int8/fp8: TensorRT from a Q/DQ ONNX in ``onnx``)."""
    max_batch: int = ranged(8, 1, 1024)
    """Largest batch one ``infer`` call takes (TensorRT's optimisation profile goes 1..max_batch)."""
    checkpoint: str | None = None
    """An emim-stream checkpoint file (model, labels, clip spec, VMP parameters)."""
    model: str | None = None
    """A registry name (e.g. emim_xs) with untrained, seeded weights: for benchmarks and tests only."""
    frames: int | None = ranged(None, 2, MAX_FRAMES)
    """Clip length T (default: the checkpoint's / model's)."""
    height: int | None = ranged(None, 32, MAX_SIDE)
    """Clip height, a multiple of 32 (default: the checkpoint's / model's)."""
    width: int | None = ranged(None, 32, MAX_SIDE)
    """Clip width, a multiple of 32 (default: the checkpoint's / model's)."""
    compile: bool = False
    """torch backend: wrap the model in torch.compile."""
    cuda_graphs: bool = False
    """torch / tensorrt on CUDA: capture one CUDA graph per batch size and replay it."""
    threads: int = ranged(0, 0, MAX_THREADS)
    """CPU threads for torch / onnxruntime (0 = the library's default)."""
    plan_cache_dir: str | None = None
    """Where exported ONNX files, TensorRT plans and aoti packages are cached (default: ~/.cache/emim-stream)."""
    onnx: str | None = None
    """A ready ONNX (e.g. the Q/DQ graph from calibration) for onnxruntime / tensorrt, instead of exporting."""
    force_undeployable: bool = False
    """Use ``onnx`` even when its calibration record says it failed the accuracy gate (logged as a warning)."""
    kernel: str = "auto"
    """EMIM neighbourhood kernel for torch / aoti: reference | triton | auto (triton on CUDA when installed)."""
    fallback: bool = True
    """Fall back along tensorrt -> aoti -> torch (CUDA, then CPU) when the chosen backend cannot run."""
    workspace_gib: float = ranged(4.0, 0, 1024, low_open=True)
    """TensorRT builder workspace limit."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineConfig:
        """Build from a mapping (a config file's ``engine:`` section) with ``msgspec.convert``, as the pipeline
        config is built, rejecting unknown keys.

        Raises:
            ConfigError: an unknown key (with the closest known one) or an invalid value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"the engine section must be a mapping, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                close = closest_key(key, known)
                hint = f"; did you mean engine.{close}?" if close else f"; known: {', '.join(known)}"
                raise ConfigError(f"unknown key engine.{key}{hint}")
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as err:
            field_path, rule = explain(err, data, cls)
            raise ConfigError(f"engine.{field_path} {rule}") from None

    def __post_init__(self) -> None:
        _choice("backend", self.backend, Backend)
        _choice("precision", self.precision, Precision)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"engine.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.backend == Backend.TENSORRT and self.device == "cpu":
            raise ConfigError("engine.backend 'tensorrt' needs a GPU; set engine.device to cuda or auto")
        if self.checkpoint is not None and self.model is not None:
            raise ConfigError(
                f"set only one of engine.checkpoint ({self.checkpoint!r}) and engine.model ({self.model!r})"
            )
        for name in ("max_batch", "frames", "height", "width", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"engine.{name} must be an integer, got {value!r}")
        for name in ("height", "width"):
            if getattr(self, name) is not None and getattr(self, name) % 32:
                raise ConfigError(f"engine.{name} must be a multiple of 32, got {getattr(self, name)!r}")
        if not isinstance(self.workspace_gib, (int, float)):
            raise ConfigError(f"engine.workspace_gib must be a number, got {self.workspace_gib!r}")
        check_ranges(self, lambda name, rule: ConfigError(f"engine.{name} {rule}"))
        for name in ("compile", "cuda_graphs", "fallback"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"engine.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.kernel, str) or not self.kernel:
            raise ConfigError(f"engine.kernel must be a kernel name or 'auto', got {self.kernel!r}")
        if self.precision in QUANTIZED and self.onnx is None:
            raise ConfigError(
                f"engine.precision {self.precision!r} needs engine.onnx: a Q/DQ ONNX made by calibration "
                "(TensorRT 10.12+ has no implicit INT8/FP8 calibration)"
            )


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What ``infer`` takes: ``[B, 3, frames, height, width]`` with 1 <= B <= max_batch, of ``dtype``.

    Other floating dtypes are accepted and cast; ``dtype`` is what the engine computes in (the VMP
    stage may produce it directly to save a cast).
    """

    frames: int
    height: int
    width: int
    dtype: torch.dtype
    max_batch: int

    def shape(self, batch: int) -> tuple[int, int, int, int, int]:
        """The clip tensor shape for ``batch`` clips."""
        return (batch, 3, self.frames, self.height, self.width)


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What an engine is, for logs, messages and benchmark tables."""

    backend: str
    precision: str
    device: str
    checkpoint_sha256: str
    """Content hash of the weights (emim_stream.engines.checkpoints.io.weights_sha256)."""
    model_name: str
    weights: str
    """Where the weights came from: a checkpoint path, or 'untrained <name> (seed 0)'."""
    kernel: str = "-"
    """EMIM neighbourhood kernel (torch backend), or how the op runs in the backend's graph."""
    detail: str = ""
    """Backend specifics: providers, plan file, compile / CUDA graph state, library versions."""

    def summary(self) -> str:
        """One line: ``backend precision on device, model (weights), kernel, detail``."""
        tail = f", {self.detail}" if self.detail else ""
        return (
            f"{self.backend} {self.precision} on {self.device}, {self.model_name} ({self.weights}, "
            f"sha256 {self.checkpoint_sha256[:12]}), kernel {self.kernel}{tail}"
        )


@runtime_checkable
class Engine(Protocol):
    """A loaded inference engine; implementations are context managers (``close`` on exit)."""

    device: torch.device
    """Where ``infer`` wants its input and returns its logits (the VMP stage runs there too)."""
    vmp: VmpLayer | None
    """The checkpoint's VMP layer (None: the model takes normalised frames as they are)."""

    @property
    def input_spec(self) -> InputSpec: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    def infer(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` float32 of clips ``[B, 3, T, H, W]`` (normalised VMP prompts)."""
        ...

    def describe(self) -> EngineInfo: ...

    def close(self) -> None: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


_E = TypeVar("_E", bound="EngineBase")


class EngineBase:
    """What every backend's engine shares: its input spec, its labels and the context-manager protocol.

    Subclasses set ``_spec`` (the :class:`InputSpec` they accept) and ``_source`` (the model source the labels
    come from) and implement ``infer``, ``describe`` and ``close``.
    """

    _spec: InputSpec
    _source: Any

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._source.labels)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_clips(clips: torch.Tensor, spec: InputSpec) -> None:
    """Check a batch against ``spec``.

    Raises:
        ValueError: wrong rank, clip shape, batch size or a non-floating dtype (a caller bug: the
            runtime builds batches from the engine's own ``input_spec``).
    """
    B = clips.shape[0] if clips.dim() == 5 else -1
    if clips.dim() != 5 or tuple(clips.shape[1:]) != spec.shape(1)[1:] or not 1 <= B <= spec.max_batch:
        raise ValueError(
            f"clips must be [B, 3, {spec.frames}, {spec.height}, {spec.width}] with 1 <= B <= {spec.max_batch}, "
            f"got {list(clips.shape)}"
        )
    if not clips.dtype.is_floating_point:
        raise ValueError(f"clips must be a floating tensor (normalised prompts), got {clips.dtype}")


def read_engine_section(path: str) -> dict[str, Any]:
    """The ``engine:`` mapping of a YAML config file (empty when the file has none).

    The full pipeline config loader validates the whole file; this reads only the engine part,
    for commands that need nothing else (build-engine, bench, doctor).

    Raises:
        ConfigError: the file cannot be read or parsed, or ``engine`` is not a mapping.
    """
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config '{path}': {err}") from None
    section = data.get("engine", {}) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"config '{path}': 'engine' must be a mapping")
    return section
