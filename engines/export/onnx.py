"""ONNX export of a model: only the batch dimension dynamic, the EMIM op as standard ONNX ops.

The EMIM neighbourhood op is exported with the portable ``reference`` kernel whatever kernel the
model runs with (49 static Slice / Mul / ReduceSum windows, Softmax, no custom node), so the graph
runs in ONNX Runtime and TensorRT compiles it with its own layers.

Exporters (torch 2.13):

- ``legacy`` (default): the TorchScript exporter, ``torch.onnx.export(..., dynamo=False)``. About
  15x faster here than dynamo (emim_xs: ~3 s against ~45 s on 2 CPU cores) with the same ONNX
  Runtime numerics, and the exporter ModelOpt's Q/DQ (INT8/FP8) path uses: calibration passes its
  quantised model to :func:`export_onnx` unchanged.
- ``dynamo``: ``torch.export`` + onnxscript (``dynamo=True``), NVIDIA's recommendation for
  TensorRT 11; a smaller graph (no Constant nodes), weights kept inside the file.

``half``: the graph computes in float16 with float16 input; LayerNorms stay float32 (explicit
Casts) and the EMIM softmax is float32 (the kernel upcasts). TensorRT 10.12+/11 builds such a
graph as-is (strong typing: precision lives in the graph, there are no FP16 builder flags).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from emim_stream.engines.errors import ConfigError, ExportError
from emim_stream.engines.export.onnx_audit import AuditReport, audit_onnx, check_onnx
from emim_stream.engines.files import atomic_write
from emim_stream.engines.layers.blocks import EmimAttention

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportReport",
    "Exporter",
    "export_onnx",
    "file_sha256",
    "run_onnxruntime",
    "verify_onnx",
]

log = logging.getLogger(__name__)

INPUT_NAME = "video"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
"""LayerNormalization is native (17+), GELU is decomposed (the Gelu op is 20+): every TensorRT
10.x / 11.x parser and ONNX Runtime take it; the dynamo exporter's minimum is 18."""
_EXPORT_KERNEL = "reference"
_TRACE_BATCH = 2  # a traced batch of 1 lets exporters specialise the batch dimension


class Exporter(str, Enum):
    """Which torch.onnx exporter to use."""

    LEGACY = "legacy"
    DYNAMO = "dynamo"


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What was written: file, settings, op audit, content hash."""

    path: Path
    exporter: str
    opset: int
    batch: int | None
    """Fixed batch size, or None for a dynamic batch dimension."""
    dtype: str
    """Input and compute dtype: 'float32' or 'float16'."""
    input_shape: tuple[int | str, ...]
    audit: AuditReport
    sha256: str
    seconds: float


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_fp32(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(a.float() for a in args)


def _to_fp16(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    return out.half()


def _export_copy(model: nn.Module, half: bool) -> nn.Module:
    """A copy in eval mode with the reference EMIM kernel; ``half``: float16 with LayerNorms in float32."""
    model = copy.deepcopy(model).eval().cpu()
    for module in model.modules():
        if isinstance(module, EmimAttention):
            module.kernel = _EXPORT_KERNEL
    if half:
        model.half()
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.float()
                module.register_forward_pre_hook(_to_fp32)
                module.register_forward_hook(_to_fp16)
    return model


def export_onnx(
    model: nn.Module,
    clip: tuple[int, int, int],
    path: str | os.PathLike[str],
    *,
    batch: int | None = None,
    half: bool = False,
    exporter: str = Exporter.LEGACY,
    opset: int = DEFAULT_OPSET,
    audit: bool = True,
) -> ExportReport:
    """Export ``model`` to ONNX with input ``video`` ``[B, 3, T, H, W]`` and output ``logits`` ``[B, classes]``.

    The model is copied (the caller's is not changed). Quantised models (ModelOpt fake-quant
    modules) export with ``exporter='legacy'`` to Q/DQ nodes.

    Args:
        model: the network (any device; exported on the CPU).
        clip: (T, H, W) of one clip; static in the graph.
        path: the .onnx file to write (atomically; weights inside the file).
        batch: a fixed batch size, or None for a dynamic batch dimension (the only dynamic one).
        half: float16 graph and input (see the module docstring).
        exporter: ``'legacy'`` (TorchScript) or ``'dynamo'``.
        opset: ONNX opset (TensorRT's parser takes 9..24; dynamo needs >= 18).
        audit: run the TensorRT op audit and raise when it fails.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ConfigError: an unknown exporter, a batch < 1, or an opset the exporter cannot write.
        ExportError: the exporter failed, or the graph fails the op audit.
    """
    if exporter not in {e.value for e in Exporter}:
        raise ConfigError(f"exporter must be one of {[e.value for e in Exporter]}")
    if batch is not None and batch < 1:
        raise ConfigError(f"export batch must be >= 1 or dynamic, got {batch}")
    kind = Exporter(exporter)
    if kind is Exporter.DYNAMO and opset < 18:
        raise ConfigError(f"the dynamo exporter writes opset >= 18, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    T, H, W = clip
    example = torch.randn(batch or _TRACE_BATCH, 3, T, H, W, generator=torch.Generator().manual_seed(0)).to(dtype)
    net = _export_copy(model, half)
    start = time.perf_counter()
    try:
        with atomic_write(path) as tmp:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python ints in shapes (T, H, W are static)
                if kind is Exporter.LEGACY:
                    torch.onnx.export(
                        net,
                        (example,),
                        str(tmp),
                        dynamo=False,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_axes=None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                        opset_version=opset,
                        do_constant_folding=True,
                    )
                else:
                    shapes = None if batch else ({0: torch.export.Dim("batch", min=1, max=1024)},)
                    torch.onnx.export(
                        net,
                        (example,),
                        str(tmp),
                        dynamo=True,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_shapes=shapes,
                        opset_version=opset,
                        external_data=False,
                        verbose=False,
                    )
            report = audit_onnx(tmp)
            if audit:
                check_onnx(tmp)
    except ExportError:
        raise
    except Exception as err:  # exporters raise many types; the message names the cause
        raise ExportError(f"ONNX export ({kind.value}) failed: {type(err).__name__}: {err}") from err
    seconds = time.perf_counter() - start
    log.info("exported %s (%s, opset %d) in %.1f s", path, kind.value, opset, seconds)
    return ExportReport(
        path=path,
        exporter=kind.value,
        opset=report.opset,
        batch=batch,
        dtype="float16" if half else "float32",
        input_shape=(batch or "batch", 3, T, H, W),
        audit=report,
        sha256=file_sha256(path),
        seconds=seconds,
    )


def run_onnxruntime(path: str | os.PathLike[str], clips: torch.Tensor, threads: int = 0) -> torch.Tensor:
    """Run an exported graph once with ONNX Runtime on the CPU; returns float32 logits.

    Raises:
        ExportError: ONNX Runtime cannot load or run the graph.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        feed = clips.detach().cpu().numpy()
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: feed})
    except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ExportError(f"ONNX Runtime cannot run '{path}': {err}") from err
    return torch.from_numpy(out).float()


def verify_onnx(
    path: str | os.PathLike[str], model: nn.Module, clips: torch.Tensor, threads: int = 0
) -> tuple[float, float]:
    """Compare ONNX Runtime's output with the model's on ``clips`` (the graph's input dtype).

    Returns:
        (max absolute error, max error relative to the largest reference logit).
    """
    net = _export_copy(model, half=clips.dtype == torch.float16)
    with torch.no_grad():
        expected = net(clips.cpu()).float()
    got = run_onnxruntime(path, clips, threads)
    abs_err = (got - expected).abs().max().item()
    return abs_err, abs_err / max(expected.abs().max().item(), 1e-12)
