"""Post-training quantisation with NVIDIA ModelOpt: a fake-quant PyTorch model, then a Q/DQ ONNX.

The PyTorch path of tensorrt_notes section 3: ``mtq.quantize`` on the float model with a forward
loop over calibration clips, then the legacy (TorchScript) ONNX exporter, which writes every
quantiser as a QuantizeLinear -> DequantizeLinear pair. TensorRT 10.12+/11 builds such a graph
strongly typed: precision lives in the graph, there is no INT8 flag or calibrator.

What carries a quantiser: the weights (INT8 per output channel, FP8 per tensor) and the input
activations (per tensor) of every ``nn.Conv3d`` and ``nn.Linear`` whose name matches no ``keep``
pattern. The default keeps the EMIM motion MLP (``EmimAttention.motion_conv``, which reads the raw
attention logits) in high precision. Nothing else is quantised: LayerNorm, BatchNorm, the EMIM
neighbourhood logits (q.k + rpb), their softmax and the context sums stay float32 in the graph.
Calibration is ModelOpt's ``max`` (amax = the largest magnitude seen), as in ``INT8_DEFAULT_CFG``
and ``FP8_DEFAULT_CFG``.

FP8: ModelOpt's TorchScript symbolics write ``trt::TRT_FP8QuantizeLinear`` /
``trt::TRT_FP8DequantizeLinear``; :func:`export_qdq_onnx` rewrites them to the standard opset-19
QuantizeLinear / DequantizeLinear with a float8e4m3fn zero point, which TensorRT's parser and ONNX
Runtime read. ModelOpt's own FP8 post-processing is not used: it also puts Q/DQ after every
Softmax, which would quantise the EMIM attention.

Exactness (:func:`qdq_parity`): every Q/DQ pair of the graph, fed in ONNX Runtime the tensor it
sees there, gives the torch quantiser's output on that tensor, except at rounding ties and the
int8 code -128 (torch clamps at -127) -- a handful of elements, one step each. End to end, the two
differ more: a tie that rounds the other way changes a value by one step, and later quantisers
pass the change on, so ONNX Runtime (and TensorRT) land on another rounding of the same
quantised network; the accuracy report measures both against the float model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import io
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from emim_stream.engines.backends.base import QUANTIZED, Precision
from emim_stream.engines.errors import CalibrationError
from emim_stream.engines.export.onnx import INPUT_NAME, ExportReport, export_onnx, file_sha256
from emim_stream.engines.export.onnx_audit import check_onnx
from emim_stream.engines.files import atomic_write

__all__ = [
    "DEFAULT_KEEP",
    "QDQ_OPSET",
    "QUANTIZED_TYPES",
    "QdqAudit",
    "QdqParity",
    "QuantizeResult",
    "audit_qdq",
    "check_qdq",
    "export_qdq_onnx",
    "import_modelopt",
    "modelopt_version",
    "qdq_parity",
    "quantizable_modules",
    "quantize_model",
]

log = logging.getLogger(__name__)

QDQ_OPSET = 19
"""The first opset with float8 QuantizeLinear / DequantizeLinear (int8 needs 13); TensorRT parses 9..24."""
QUANTIZED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv3d, nn.Linear)
DEFAULT_KEEP: tuple[str, ...] = ("*.motion_conv.*",)
"""Module-name patterns (fnmatch) kept in high precision: the EMIM motion MLP."""
_PARITY_TOL = 1e-5
"""A Q/DQ output element differs from its torch quantiser when off by more than this times amax."""
_QDQ_NAME = re.compile(r"/(?P<module>.+)/(?P<kind>input|weight)_quantizer/")
_FP8_OPS = {"TRT_FP8QuantizeLinear": "QuantizeLinear", "TRT_FP8DequantizeLinear": "DequantizeLinear"}
_FP8_ZERO_POINT = "emim_fp8_zero_point"


_FORMATS: dict[Precision, tuple[dict, dict]] = {  # (weights, activations), as ModelOpt's *_DEFAULT_CFG
    Precision.INT8: ({"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None}),  # any TensorRT GPU
    Precision.FP8: ({"num_bits": (4, 3), "axis": None}, {"num_bits": (4, 3), "axis": None}),  # E4M3: Ada, Hopper+
}


def import_modelopt() -> ModuleType:
    """``modelopt.torch.quantization``, imported quietly.

    Raises:
        CalibrationError: ModelOpt (or one of its undeclared dependencies) is not installed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Cannot find transformers package", deprecations
            import modelopt.torch.quantization as mtq
    except ImportError as err:
        raise CalibrationError(
            f"calibration needs NVIDIA ModelOpt, which cannot be imported ({err}); "
            "install it with: pip install 'emim-stream[quant]'"
        ) from None
    return mtq


def modelopt_version() -> str:
    import modelopt

    return str(modelopt.__version__)


def quantizable_modules(
    model: nn.Module, keep: Sequence[str] = DEFAULT_KEEP
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split the model's convs and linears into (to quantise, kept in high precision), in model order.

    Args:
        model: the float model.
        keep: module-name patterns (fnmatch, e.g. ``'*.motion_conv.*'``, ``'head'``) not to quantise.
    """
    quantized: list[str] = []
    kept: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED_TYPES):
            (kept if any(fnmatch.fnmatchcase(name, p) for p in keep) else quantized).append(name)
    return tuple(quantized), tuple(kept)


def _quant_config(modules: Sequence[str], precision: Precision) -> dict:
    """Deny every quantiser, then enable weight and input quantisers of ``modules`` by exact name."""
    weights, inputs = _FORMATS[precision]
    entries: list[dict] = [{"quantizer_name": "*", "enable": False}]
    for name in modules:
        entries.append({"quantizer_name": f"{name}.weight_quantizer", "cfg": dict(weights)})
        entries.append({"quantizer_name": f"{name}.input_quantizer", "cfg": dict(inputs)})
    return {"quant_cfg": entries, "algorithm": "max"}


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    """A calibrated fake-quant copy of a model and what was quantised."""

    model: nn.Module
    precision: str
    quantized: tuple[str, ...]
    """Conv/linear modules with weight and input quantisers."""
    kept: tuple[str, ...]
    """Conv/linear modules kept in high precision."""
    clips: int
    """Calibration clips seen."""
    seconds: float


def quantize_model(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    precision: str = Precision.INT8,
    keep: Sequence[str] = DEFAULT_KEEP,
    *,
    total: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizeResult:
    """Insert quantisers into a copy of ``model`` and calibrate them (amax) on ``batches``.

    Args:
        model: the float model (not changed), on the CPU.
        batches: calibration clips ``[b, 3, T, H, W]`` float32, as the engine receives them;
            iterated once.
        precision: ``'int8'`` or ``'fp8'``.
        keep: module-name patterns kept in high precision (see :func:`quantizable_modules`).
        total: clips in ``batches`` (for ``progress`` only).
        progress: called with (clips done, ``total``) after each batch.

    Raises:
        CalibrationError: ModelOpt missing, an unknown precision, ``keep`` leaving nothing to
            quantise, or no calibration clip.
    """
    mtq = import_modelopt()
    if precision not in QUANTIZED:
        raise CalibrationError(f"precision must be one of {[p.value for p in QUANTIZED]}, got {precision!r}")
    precision = Precision(precision)
    quantized, kept = quantizable_modules(model, keep)
    if not quantized:
        raise CalibrationError(f"the keep patterns {list(keep)} leave no conv or linear layer to quantise")
    seen = 0

    def forward_loop(net: nn.Module) -> None:
        nonlocal seen
        for batch in batches:
            net(batch)
            seen += batch.shape[0]
            if progress is not None:
                progress(seen, total)
        if seen == 0:
            raise CalibrationError("no calibration clips: the clip set is empty")

    start = time.perf_counter()
    net = copy.deepcopy(model).eval().cpu()
    out = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = mtq.quantize(net, _quant_config(quantized, precision), forward_loop)
    if out.getvalue().strip():
        log.debug("modelopt: %s", out.getvalue().strip())
    seconds = time.perf_counter() - start
    log.info(
        "quantised %d layers (%s) on %d clips in %.1f s; kept %d in high precision",
        len(quantized),
        precision.value,
        seen,
        seconds,
        len(kept),
    )
    return QuantizeResult(net, precision.value, quantized, kept, seen, seconds)


def _fp8_to_native(path: Path) -> None:
    """Rewrite ModelOpt's ``trt::TRT_FP8*`` nodes to standard opset-19 float8e4m3fn Q/DQ, in place."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(os.fspath(path))
    graph = proto.graph
    graph.initializer.append(helper.make_tensor(_FP8_ZERO_POINT, TensorProto.FLOAT8E4M3FN, [], [0.0]))
    quantized = set()
    for node in graph.node:
        if node.domain == "trt" and node.op_type in _FP8_OPS:
            node.domain, node.op_type = "", _FP8_OPS[node.op_type]
            node.input.append(_FP8_ZERO_POINT)
            if node.op_type == "QuantizeLinear":
                node.attribute.append(helper.make_attribute("saturate", 1))
                quantized.add(node.output[0])
    for info in graph.value_info:  # the exporter typed the custom op's output uint8
        if info.name in quantized:
            info.type.tensor_type.elem_type = TensorProto.FLOAT8E4M3FN
    opsets = [o for o in proto.opset_import if o.domain != "trt"]
    del proto.opset_import[:]
    proto.opset_import.extend(opsets)
    onnx.checker.check_model(proto)
    with atomic_write(path) as tmp:
        onnx.save(proto, os.fspath(tmp))


def export_qdq_onnx(result: QuantizeResult, clip: tuple[int, int, int], path: str | os.PathLike[str]) -> ExportReport:
    """Export the fake-quant model as a Q/DQ ONNX (dynamic batch) and check its quantiser pairs.

    Args:
        result: from :func:`quantize_model`.
        clip: (T, H, W).
        path: the .onnx to write.

    Returns:
        The export report (op audit and hash of the final file).

    Raises:
        ExportError: the export failed or the graph fails the TensorRT op audit.
        CalibrationError: a layer meant to be quantised has no Q/DQ pair, or a kept one has
            (the file is removed in both cases).
    """
    path = Path(path)
    report = export_onnx(result.model, clip, path, opset=QDQ_OPSET, audit=False)
    try:
        if result.precision == Precision.FP8:
            _fp8_to_native(path)
        audit = check_onnx(path)
        check_qdq(path, result.quantized, result.kept)
    except Exception:
        path.unlink(missing_ok=True)  # no graph is better than one that looks usable
        raise
    return dataclasses.replace(report, audit=audit, sha256=file_sha256(path))


@dataclass(frozen=True, slots=True)
class QdqAudit:
    """The quantise/dequantise pairs of a graph, by the module they belong to."""

    pairs: dict[str, tuple[str, ...]]
    """Module name -> the quantised tensors (``'input'``, ``'weight'``)."""
    dtypes: tuple[str, ...]
    """Quantised element types found (``'INT8'``, ``'FLOAT8E4M3FN'``)."""
    unpaired: tuple[str, ...]
    """QuantizeLinear nodes that feed no DequantizeLinear."""

    @property
    def count(self) -> int:
        """Number of Q/DQ pairs."""
        return sum(len(kinds) for kinds in self.pairs.values())


def _module_of(scope: str) -> str:
    """The module an exporter scope names: ``blocks3.0/attn/motion_conv/motion_conv.0`` -> ``...motion_conv.0``.

    The TorchScript exporter names a scope after the module's attribute name; the children of a
    called ``nn.Sequential`` repeat the container's name (``motion_conv/motion_conv.0``).
    """
    parts: list[str] = []
    for part in scope.split("/"):
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part
        else:
            parts.append(part)
    return ".".join(parts)


def _producers(graph) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _zero_point_dtype(graph, name: str, producers: dict[str, Any]) -> str:
    import onnx

    for init in graph.initializer:
        if init.name == name:
            return onnx.TensorProto.DataType.Name(init.data_type)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return onnx.TensorProto.DataType.Name(node.attribute[0].t.data_type)
    return "UNKNOWN"


def audit_qdq(path: str | os.PathLike[str]) -> QdqAudit:
    """List the Q/DQ pairs of an exported graph, by module (node scopes ``/blocks1.0/conv1/input_quantizer/...``)."""
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    producers = _producers(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pairs: dict[str, list[str]] = {}
    dtypes, unpaired = set(), []
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        if not any(c.op_type == "DequantizeLinear" for c in consumers.get(node.output[0], [])):
            unpaired.append(node.name)
            continue
        match = _QDQ_NAME.search(node.name)
        module = _module_of(match["module"]) if match else node.name
        pairs.setdefault(module, []).append(match["kind"] if match else "?")
        if len(node.input) > 2:
            dtypes.add(_zero_point_dtype(graph, node.input[2], producers))
    return QdqAudit({m: tuple(sorted(k)) for m, k in pairs.items()}, tuple(sorted(dtypes)), tuple(unpaired))


def check_qdq(path: str | os.PathLike[str], quantized: Sequence[str], kept: Sequence[str] = ()) -> QdqAudit:
    """:func:`audit_qdq`, raising unless exactly the ``quantized`` modules have an input and a weight pair.

    Raises:
        CalibrationError: a module meant to be quantised lacks a pair, or another (e.g. a kept
            one) has one, or a QuantizeLinear feeds no DequantizeLinear.
    """
    audit = audit_qdq(path)
    missing = [m for m in quantized if audit.pairs.get(m) != ("input", "weight")]
    extra = [m for m in audit.pairs if m not in set(quantized)]
    if missing or extra or audit.unpaired:
        raise CalibrationError(
            f"'{path}' does not carry the expected quantise/dequantise pairs: "
            f"{len(missing)} layer(s) without input+weight pairs {missing[:5]}, "
            f"{len(extra)} unexpected {extra[:5]} (kept in high precision: {len(kept)}), "
            f"{len(audit.unpaired)} QuantizeLinear without DequantizeLinear"
        )
    return audit


@dataclass(frozen=True, slots=True)
class QdqParity:
    """Each Q/DQ pair in ONNX Runtime against its torch quantiser on the same tensor."""

    pairs: int
    elements: int
    mismatched: int
    """Elements off by more than 1e-5 amax (rounding ties, the int8 code -128)."""
    max_error_of_amax: float
    """Largest difference relative to the quantiser's amax (one INT8 step is 1/127; FP8 E4M3 steps reach 1/14)."""


def qdq_parity(
    path: str | os.PathLike[str], quant_model: nn.Module, clips: torch.Tensor, threads: int = 0
) -> QdqParity:
    """Run the Q/DQ graph once in ONNX Runtime on ``clips`` and check every pair against its quantiser.

    Each pair's input (as ONNX Runtime computed it) goes through the torch quantiser of the same
    name; its output is compared with the pair's DequantizeLinear output. ``threads``: ONNX
    Runtime's intra-op threads (0: its default).

    Raises:
        ExportError: ONNX Runtime cannot load or run the graph.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from emim_stream.engines.errors import ExportError

    proto = onnx.load(os.fspath(path))
    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pairs = []  # (quantiser name, input tensor, dequantised tensor)
    for node in graph.node:
        match = _QDQ_NAME.search(node.name)
        dq = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        if node.op_type == "QuantizeLinear" and match and dq:
            quantizer = f"{_module_of(match['module'])}.{match['kind']}_quantizer"
            pairs.append((quantizer, node.input[0], dq[0].output[0]))
    wanted = list(dict.fromkeys(t for _, x, y in pairs for t in (x, y) if t not in weights and t != INPUT_NAME))
    for name in wanted:
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    feed = clips.detach().cpu().float().numpy()
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = dict(zip(wanted, session.run(wanted, {INPUT_NAME: feed}), strict=True))
    except Exception as err:  # onnxruntime raises its own exception types
        raise ExportError(f"ONNX Runtime cannot run '{path}': {err}") from err
    values[INPUT_NAME] = feed
    modules = dict(quant_model.named_modules())
    elements = mismatched = 0
    worst = 0.0
    with torch.no_grad():
        for quantizer_name, x, y in pairs:
            quantizer = modules[quantizer_name]
            source = numpy_helper.to_array(weights[x]) if x in weights else values[x]
            expected = quantizer(torch.from_numpy(np.array(source)))
            amax = max(float(quantizer.amax.max()), 1e-12)  # 0 for an all-zero tensor (exported with scale 1)
            error = (torch.from_numpy(values[y]) - expected).abs()
            elements += error.numel()
            mismatched += int((error > _PARITY_TOL * amax).sum())
            worst = max(worst, float(error.max()) / amax)
    return QdqParity(len(pairs), elements, mismatched, worst)
