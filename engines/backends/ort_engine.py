"""The onnxruntime backend: the exported graph in ONNX Runtime (CPU; the CUDA provider where present).

The graph is the one :func:`emim_stream.engines.export.onnx.export_onnx` writes (cached by weights hash, clip and
precision), or a ready ONNX from ``engine.onnx``. Input and output cross as torch tensors; on the
CUDA provider they stay on the GPU (IO binding).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from emim_stream.engines.backends.base import EngineBase, EngineInfo, Precision, check_clips
from emim_stream.engines.backends.model_source import ModelSource
from emim_stream.engines.backends.onnx_input import onnx_input_spec
from emim_stream.engines.errors import BackendUnavailableError
from emim_stream.engines.export.onnx import DEFAULT_OPSET, export_onnx

__all__ = ["OrtEngine", "cached_onnx", "cuda_provider_present", "import_onnxruntime", "providers_for"]

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, imported.

    Raises:
        BackendUnavailableError: it is not installed.
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError("onnxruntime", f"not installed ({err})") from None
    return onnxruntime


def providers_for(device: torch.device) -> list[str | tuple[str, dict[str, int]]]:
    """ONNX Runtime's execution providers for ``device`` (a CUDA device: CUDA first, then the CPU).

    Raises:
        BackendUnavailableError: onnxruntime is not installed, or a CUDA device without the CUDA provider.
    """
    available = import_onnxruntime().get_available_providers()
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(
            "onnxruntime",
            f"no CUDAExecutionProvider (providers here: {', '.join(available)}; install onnxruntime-gpu)",
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def cuda_provider_present() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider (onnxruntime-gpu)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def cached_onnx(source: ModelSource, cache_dir: Path, half: bool) -> Path:
    """The exported graph of ``source`` in ``cache_dir``, exporting it on first use.

    The file name carries the weights hash, clip and dtype, so a changed checkpoint or clip gets
    its own file. Export failures surface as :class:`~emim_stream.engines.errors.ExportError`.
    """
    clip = source.clip
    dtype = "fp16" if half else "fp32"
    name = f"{source.model_name}-{source.weights_sha256[:16]}-{clip.frames}x{clip.height}x{clip.width}-{dtype}"
    path = cache_dir / "onnx" / f"{name}-opset{DEFAULT_OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    if not path.is_file():
        log.info("exporting %s to %s (once; cached)", source.model_name, path)
        export_onnx(source.model, (clip.frames, clip.height, clip.width), path, half=half)
    return path


class OrtEngine(EngineBase):
    """An ONNX graph run by ONNX Runtime.

    Args:
        source: the model (for labels, clip spec, hash; and the export when ``onnx`` is None).
        onnx: the graph to run.
        device: ``cpu`` or a CUDA device (needs onnxruntime-gpu's CUDAExecutionProvider).
        max_batch: largest batch of one ``infer`` call.
        threads: intra-op threads (0 = ONNX Runtime's default: one per physical core).
        precision: what to report (e.g. int8 for a Q/DQ graph); default: the graph's input dtype.

    Raises:
        BackendUnavailableError: onnxruntime missing, no CUDA provider for a CUDA device, or a
            graph ONNX Runtime cannot load.
        ConfigError: the graph's input does not match the model's clip.
    """

    def __init__(
        self,
        source: ModelSource,
        onnx: Path,
        device: torch.device,
        max_batch: int = 8,
        threads: int = 0,
        precision: str | None = None,
    ) -> None:
        ort = import_onnxruntime()
        providers = providers_for(device)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(os.fspath(onnx), options, providers=providers)
        except Exception as err:  # onnxruntime's own exception types
            raise BackendUnavailableError("onnxruntime", f"cannot load '{onnx}': {err}") from None
        out = self._session.get_outputs()[0]
        self._input_name, self._output_name = self._session.get_inputs()[0].name, out.name
        self._out_dtype = _ORT_DTYPES.get(out.type, torch.float32)
        self._spec = onnx_input_spec(onnx, source.clip, max_batch)
        self.device = device
        self.vmp = source.vmp
        self._source, self._onnx, self._threads = source, Path(onnx), threads
        graph_precision = Precision.FP16 if self._spec.dtype == torch.float16 else Precision.FP32
        self._precision = Precision(precision) if precision else graph_precision
        self._ort_version = ort.__version__

    def infer(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` float32 on :attr:`device` of clips ``[B, 3, T, H, W]``."""
        check_clips(clips, self._spec)
        clips = clips.to(self.device, self._spec.dtype).contiguous()
        if self.device.type == "cpu":
            (out,) = self._session.run([self._output_name], {self._input_name: clips.numpy()})
            return torch.from_numpy(out).float()
        # CUDA provider: bind torch's buffers directly (no host round trip)
        out = torch.empty((clips.shape[0], len(self.labels)), dtype=self._out_dtype, device=self.device)
        index = self.device.index or 0
        binding = self._session.io_binding()
        binding.bind_input(self._input_name, "cuda", index, _np(clips.dtype), tuple(clips.shape), clips.data_ptr())
        binding.bind_output(self._output_name, "cuda", index, _np(out.dtype), tuple(out.shape), out.data_ptr())
        torch.cuda.synchronize(self.device)  # the input was written on torch's stream
        self._session.run_with_iobinding(binding)
        return out.float()

    def describe(self) -> EngineInfo:
        providers = ", ".join(self._session.get_providers())
        threads = self._threads or "default"
        return self._source.info(
            "onnxruntime",
            self._precision.value,
            str(self.device),
            "ONNX graph (reference kernel lowered to standard ops)",
            f"onnxruntime {self._ort_version}, providers {providers}, threads {threads}, graph {self._onnx}",
        )

    def close(self) -> None:
        self._session = None


def _np(dtype: torch.dtype) -> type[np.floating[Any]]:
    return np.float16 if dtype == torch.float16 else np.float32
