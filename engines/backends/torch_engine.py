"""The torch backend: eager PyTorch on the CPU or a CUDA GPU, optional torch.compile and CUDA graphs.

Precision is the model's dtype (``model.to(float16 | bfloat16)``); the EMIM kernel computes its
softmax in float32 whatever the input dtype, and the logits that leave the engine are float32.
CUDA graphs: one graph per batch size, captured on first use after a warm-up on a side stream;
a capture that fails is logged and the engine keeps running eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from emim_stream.engines.backends.base import EngineBase, EngineInfo, InputSpec, Precision, check_clips
from emim_stream.engines.backends.model_source import ModelSource
from emim_stream.engines.errors import BackendUnavailableError
from emim_stream.engines.layers.blocks import EmimAttention
from emim_stream.engines.layers.neighborhood import choose_kernel

__all__ = ["DTYPES", "TorchEngine", "apply_kernel", "cuda_device"]

log = logging.getLogger(__name__)

DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
_WARMUP_ITERS = 3


def cuda_device(name: str, backend: str) -> torch.device:
    """The CUDA device ``name`` ('cuda' or 'cuda:N') after checking it exists.

    Raises:
        BackendUnavailableError: no CUDA device (with why), or the index is out of range.
    """
    if not name.startswith("cuda"):
        raise BackendUnavailableError(backend, f"needs a CUDA device, got {name!r}")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, " + (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only")
        raise BackendUnavailableError(backend, f"no CUDA GPU ({build}, torch.cuda.is_available() is False)")
    device = torch.device(name)
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(backend, f"{name} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return torch.device("cuda", index)


def apply_kernel(model: torch.nn.Module, kernel: str) -> None:
    """Make every EMIM attention layer of ``model`` use ``kernel`` (a resolved kernel name)."""
    for module in model.modules():
        if isinstance(module, EmimAttention):
            module.kernel = kernel


class _GraphRunner:
    """Replays one captured CUDA graph per batch size with static input/output tensors.

    Each graph keeps its own private memory pool: batch sizes may be replayed in any order.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], spec: InputSpec, device: torch.device) -> None:
        self.fn, self.spec, self.device = fn, spec, device
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def capture(self, batch: int) -> None:
        """Warm up on a side stream (allocations, autotuning, compilation), then capture."""
        static_in = torch.zeros(self.spec.shape(batch), dtype=self.spec.dtype, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_ITERS):
                self.fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        self.graphs[batch] = (graph, static_in, static_out)

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        batch = clips.shape[0]
        if batch not in self.graphs:
            self.capture(batch)
        graph, static_in, static_out = self.graphs[batch]
        static_in.copy_(clips)
        graph.replay()
        return static_out.clone()


class TorchEngine(EngineBase):
    """A model run by PyTorch on ``device``.

    Args:
        source: the model (float32, CPU) with its labels and clip spec; the engine takes the
            model over (moves and casts it in place).
        device: ``cpu`` or a checked CUDA device (see :func:`cuda_device`).
        precision: fp32, fp16 or bf16 (all run on the CPU too, fp16 slowly).
        max_batch: largest batch of one ``infer`` call.
        compile: wrap the model in ``torch.compile``.
        cuda_graphs: replay one CUDA graph per batch size (CUDA only; ignored on the CPU, logged).
        threads: ``torch.set_num_threads`` for the CPU (0 = leave PyTorch's default).
        kernel: EMIM kernel name or 'auto' (resolved for ``device``: triton on CUDA when installed).

    Raises:
        BackendUnavailableError: int8 / fp8 (TensorRT only).
        KernelUnavailableError: ``kernel`` cannot run on ``device``.
    """

    def __init__(
        self,
        source: ModelSource,
        device: torch.device,
        precision: str = "fp32",
        max_batch: int = 8,
        compile: bool = False,
        cuda_graphs: bool = False,
        threads: int = 0,
        kernel: str = "auto",
    ) -> None:
        precision = Precision(precision)
        if precision not in DTYPES:
            raise BackendUnavailableError("torch", f"precision {precision.value} needs a TensorRT Q/DQ plan")
        chosen, why = choose_kernel(kernel, device)
        log.info("torch: EMIM kernel %s (%s)", chosen, why)
        if device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        if device.type == "cuda" and precision == Precision.FP32:
            # fp32 means IEEE fp32: cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later,
            # ~1e-3 off the CPU's logits. The switches are process-wide.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.device = device
        self.vmp = source.vmp
        self._source = source
        self._precision = precision
        self._spec = InputSpec(source.clip.frames, source.clip.height, source.clip.width, DTYPES[precision], max_batch)
        self._model = source.model.to(device=device, dtype=DTYPES[precision]).eval()
        apply_kernel(self._model, chosen)
        self._compiled = compile
        self._forward = torch.compile(self._model) if compile else self._model
        self._graphs: _GraphRunner | None = None
        if cuda_graphs and device.type == "cuda":
            self._graphs = _GraphRunner(self._forward, self._spec, device)
        elif cuda_graphs:
            log.info("cuda_graphs ignored: the torch backend runs on %s", device)

    @torch.inference_mode()
    def infer(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` float32 on :attr:`device` of clips ``[B, 3, T, H, W]``."""
        check_clips(clips, self._spec)
        clips = clips.to(self.device, self._spec.dtype, non_blocking=True)
        if self._graphs is not None:
            try:
                return self._graphs(clips).float()
            except RuntimeError as err:  # capture refused (e.g. an op that syncs): run eagerly from now on
                log.warning("CUDA graph capture failed (%s); running without CUDA graphs", str(err).splitlines()[0])
                self._graphs = None
        return self._forward(clips).float()

    def describe(self) -> EngineInfo:
        kernels = sorted({m.kernel for m in self._model.modules() if isinstance(m, EmimAttention)})
        graphs = "off"
        if self._graphs is not None:
            sizes = ", ".join(map(str, sorted(self._graphs.graphs))) or "none yet"
            graphs = f"on (captured batch sizes: {sizes})"
        return self._source.info(
            "torch",
            self._precision.value,
            str(self.device),
            ", ".join(kernels) or "-",
            f"torch {torch.__version__}, compile {'on' if self._compiled else 'off'}, CUDA graphs {graphs}",
        )

    def close(self) -> None:
        self._graphs = None
        if self.device.type == "cuda":
            self._model.to("cpu")
            torch.cuda.empty_cache()
