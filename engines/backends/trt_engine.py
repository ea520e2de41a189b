"""The tensorrt backend: a plan built from the exported ONNX with the TensorRT 10.12+ / 11 API.

- Build: strongly typed network (precision lives in the graph: FP16 from a half export, INT8 /
  FP8 from a ModelOpt Q/DQ graph, built with no precision flags, which TensorRT 11 removed);
  ``OnnxParser.parse_from_file``; one optimisation profile over the batch (1, max, max); a timing
  cache per TensorRT version and GPU; progress reported through ``IProgressMonitor``.
- Cache: :mod:`emim_stream.engines.backends.engine_cache` (key = ONNX hash, input spec, precision, TensorRT
  version, GPU name, compute capability; JSON sidecar; mismatched or corrupt plans are rebuilt).
- Run: torch tensors bound by address, ``execute_async_v3`` on a side stream; optionally a CUDA
  graph of the enqueue for the current batch size (re-captured when the batch size changes, as
  one execution context's shapes and addresses are baked into a graph).

``import tensorrt`` happens only in :func:`import_tensorrt`: without TensorRT every other
backend works, and the glue here is tested with fakes (tests/engines/backends/test_trt_glue.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from emim_stream.engines.backends.base import EngineBase, EngineInfo, InputSpec, Precision, check_clips
from emim_stream.engines.backends.engine_cache import EngineCache, PlanKey, load_or_build
from emim_stream.engines.backends.model_source import ModelSource
from emim_stream.engines.errors import BackendUnavailableError, ExportError

__all__ = ["MIN_TENSORRT", "TrtEngine", "build_plan", "import_tensorrt", "plan_key", "tensorrt_version"]

log = logging.getLogger(__name__)

MIN_TENSORRT = (10, 12)
_INSTALL_HINT = "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13"


def tensorrt_version(version: str) -> tuple[int, int]:
    """``'10.13.3.9'`` -> ``(10, 13)``."""
    major, minor = [*version.split("."), "0"][:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, if a usable version is installed.

    Raises:
        BackendUnavailableError: not installed, its libraries do not load, or older than 10.12.
    """
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailableError("tensorrt", f"not installed ({err}); {_INSTALL_HINT}") from None
    except OSError as err:  # the bindings are there but libnvinfer is not
        raise BackendUnavailableError("tensorrt", f"cannot load its libraries ({err})") from None
    if tensorrt_version(trt.__version__) < MIN_TENSORRT:
        oldest = ".".join(map(str, MIN_TENSORRT))
        raise BackendUnavailableError("tensorrt", f"version {trt.__version__} is older than {oldest} (strong typing)")
    return trt


def plan_key(onnx_sha256: str, spec: InputSpec, precision: str, trt_version: str, device: torch.device) -> PlanKey:
    """The cache key of a plan for this graph, input, precision, TensorRT and GPU."""
    return PlanKey.for_input(spec, precision, device, onnx_sha256=onnx_sha256, tensorrt_version=trt_version)


def _progress_monitor(trt: Any) -> Any:
    """An ``IProgressMonitor`` that logs each build phase and every ~10% of its steps."""

    class LogProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = max(num_steps, 1)
            log.info("tensorrt build: %s%s (%d steps)", "  " if parent_phase else "", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self.steps.get(phase_name, 1)
            if total >= 10 and (step + 1) % max(total // 10, 1) == 0:
                log.info("tensorrt build:   %s %d/%d", phase_name, step + 1, total)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return LogProgress()


def build_plan(
    trt: Any,
    onnx_path: Path,
    spec: InputSpec,
    workspace_gib: float,
    timing_cache: Path | None = None,
    progress: bool = True,
) -> tuple[bytes, dict[str, Any]]:
    """Build a serialized plan from an ONNX file whose batch dimension is dynamic.

    Returns:
        (plan bytes, sidecar extras: build settings and time).

    Raises:
        BackendUnavailableError: no builder (no usable GPU), a parser error (e.g. an unsupported
            op), a graph with a fixed batch, or a failed build.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as err:  # "factory function returned nullptr": CUDA could not initialise
        raise BackendUnavailableError("tensorrt", f"cannot create a Builder ({err}); is a GPU usable?") from None
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError("tensorrt", f"ONNX parser failed on '{onnx_path}': {errors}")
    inp = network.get_input(0)
    if inp.shape[0] != -1:
        raise BackendUnavailableError(
            "tensorrt", f"graph '{onnx_path}' has a fixed batch {inp.shape[0]}; export it with a dynamic batch"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, spec.shape(1), spec.shape(spec.max_batch), spec.shape(spec.max_batch))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt) if progress else None  # referenced here until the build returns
    if monitor is not None:
        config.progress_monitor = monitor
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailableError("tensorrt", f"building a plan from '{onnx_path}' failed (see TensorRT's log)")
    build_s = time.perf_counter() - start
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("tensorrt: plan built in %.0f s", build_s)
    info = {
        "onnx_path": str(onnx_path),
        "build_s": round(build_s, 1),
        "builder": {"strongly_typed": True, "workspace_gib": workspace_gib, "profile_batch": [1, spec.max_batch]},
    }
    return bytes(plan), info


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int8: torch.int8,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise BackendUnavailableError("tensorrt", f"plan I/O dtype {dtype} has no torch equivalent here")
    return table[dtype]


class TrtEngine(EngineBase):
    """A TensorRT plan run with torch tensors on one GPU.

    Args:
        source: the model's labels, clip spec and hash (the graph itself comes from ``onnx``).
        onnx: the ONNX file (dynamic batch) the plan is built from; its hash keys the cache.
        device: a CUDA device.
        precision: recorded in the cache key (the graph's own types decide the kernels).
        max_batch: top of the optimisation profile.
        cache: where plans and the timing cache live.
        cuda_graphs: replay the enqueue as a CUDA graph.
        workspace_gib: builder workspace limit.

    Raises:
        BackendUnavailableError: TensorRT missing or too old, no GPU, op audit / parse / build
            failure, or a plan that cannot be deserialised even after a rebuild.
    """

    def __init__(
        self,
        source: ModelSource,
        onnx: Path,
        device: torch.device,
        precision: str,
        max_batch: int,
        cache: EngineCache,
        cuda_graphs: bool,
        workspace_gib: float,
    ) -> None:
        from emim_stream.engines.backends.onnx_input import onnx_input_spec
        from emim_stream.engines.export.onnx import file_sha256
        from emim_stream.engines.export.onnx_audit import check_onnx

        trt = import_tensorrt()
        if device.type != "cuda":
            raise BackendUnavailableError("tensorrt", f"needs a CUDA device, got {device}")
        spec = onnx_input_spec(onnx, source.clip, max_batch)
        key = plan_key(file_sha256(onnx), spec, precision, trt.__version__, device)

        def build() -> tuple[bytes, dict[str, Any]]:
            try:
                check_onnx(onnx)
            except ExportError as err:
                raise BackendUnavailableError("tensorrt", f"op unsupported: {err}") from None
            return build_plan(trt, onnx, spec, workspace_gib, cache.timing_cache_path(key))

        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self._engine, self._plan_path, self._built = load_or_build(cache, key, build, self._deserialize)
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendUnavailableError("tensorrt", f"plan has inputs {inputs}, outputs {outputs}; expected one each")
        self._input, self._output = inputs[0], outputs[0]
        in_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self._input))
        self._out_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self._output))
        self.device = device
        self.vmp = source.vmp
        self._source, self._precision, self._trt_version = source, Precision(precision), trt.__version__
        self._spec = InputSpec(spec.frames, spec.height, spec.width, in_dtype, max_batch)
        self._use_graphs = cuda_graphs
        self._graph: tuple[int, torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None

    def _deserialize(self, plan: bytes) -> Any:
        try:
            return self._runtime.deserialize_cuda_engine(plan)
        except Exception as err:  # TensorRT usually returns None, some versions raise
            log.warning("tensorrt: deserialising the plan failed: %s", err)
            return None

    def _bind(self, clips: torch.Tensor) -> torch.Tensor:
        """Set the input shape and both addresses; returns the output tensor."""
        self._context.set_input_shape(self._input, tuple(clips.shape))
        self._context.set_tensor_address(self._input, clips.data_ptr())
        shape = tuple(self._context.get_tensor_shape(self._output))
        out = torch.empty(shape, dtype=self._out_dtype, device=self.device)
        self._context.set_tensor_address(self._output, out.data_ptr())
        return out

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT's log)")

    def _capture(self, batch: int) -> None:
        """Bind static buffers, run once (no initialisation inside the capture), then capture."""
        static_in = torch.zeros(self._spec.shape(batch), dtype=self._spec.dtype, device=self.device)
        static_out = self._bind(static_in)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        self._enqueue()
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            self._enqueue()
        self._graph = (batch, graph, static_in, static_out)

    @torch.inference_mode()
    def infer(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` float32 on :attr:`device` of clips ``[B, 3, T, H, W]``."""
        check_clips(clips, self._spec)
        clips = clips.to(self.device, self._spec.dtype).contiguous()
        current = torch.cuda.current_stream(self.device)
        if self._use_graphs:
            try:
                if self._graph is None or self._graph[0] != clips.shape[0]:
                    self._capture(clips.shape[0])
            except RuntimeError as err:  # the plan holds ops that cannot be captured
                log.warning("tensorrt: CUDA graph capture failed (%s); enqueueing directly", str(err).splitlines()[0])
                self._use_graphs, self._graph = False, None
        if self._graph is not None:
            _, graph, static_in, static_out = self._graph
            static_in.copy_(clips)
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                graph.replay()
            current.wait_stream(self._stream)
            return static_out.to(torch.float32, copy=True)  # the graph's buffer is reused
        out = self._bind(clips)
        self._stream.wait_stream(current)
        self._enqueue()
        current.wait_stream(self._stream)
        return out.float()

    def describe(self) -> EngineInfo:
        state = "built now" if self._built else "cached"
        graphs = "on" if self._use_graphs else "off"
        return self._source.info(
            "tensorrt",
            self._precision.value,
            str(self.device),
            "TensorRT layers (reference kernel lowered to standard ops)",
            f"TensorRT {self._trt_version}, plan {self._plan_path} ({state}), CUDA graphs {graphs}",
        )

    def close(self) -> None:
        self._graph = None
        self._context = None
        self._engine = None
