"""Op audit: does every node of an ONNX graph have an importer in TensorRT's ONNX parser?

The supported set is the operator matrix of the ONNX-TensorRT parser, ``docs/operators.md`` of
https://github.com/onnx/onnx-tensorrt in the version whose header reads "TensorRT 10.15 supports
operators in the inclusive range of opset 9 to opset 24" (the parser TensorRT 10.15 ships; rows
marked ``Y``). TensorRT 11 removed weak-typing builder APIs, not ONNX importers, so the 10.15 set
is taken as the floor for 11.x too. The audit checks op names, domains and the opset; per-op
restrictions in that table (e.g. Reduce ``axes`` must be initializers) are only proven by a real
TensorRT build.

Nodes in another domain (custom ops, TensorRT plugins such as ``emim::EmimLocalAttn``) fail the
audit unless named in ``allow``: the parser imports them only as plugins that must be loaded.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emim_stream.engines.errors import ExportError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "OPSET_RANGE",
    "SOURCE",
    "SUPPORTED_OPS",
    "TENSORRT_VERSION",
    "AuditReport",
    "audit_onnx",
    "check_onnx",
]

TENSORRT_VERSION = "10.15"
SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15 operator support matrix)"
OPSET_RANGE = (9, 24)
_STANDARD_DOMAINS = ("", "ai.onnx")

_SUPPORTED_TABLE = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape
    Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum
    Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
    GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
    InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
    Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish
    Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
    QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
    ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding
    Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
    Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
"""
SUPPORTED_OPS = frozenset(_SUPPORTED_TABLE.split())
"""ONNX ops (default domain) that TensorRT's ONNX parser imports, per :data:`SOURCE`."""


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The ops of a graph (subgraphs included) and those TensorRT's parser cannot import."""

    ops: tuple[tuple[str, int], ...]
    """(op, count) sorted by op; ops outside the default domain are written ``domain::Op``."""
    unsupported: tuple[str, ...]
    opset: int
    problems: tuple[str, ...]
    """Human-readable reasons the audit fails (unsupported ops, opset out of range)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """Op counts on one line, then the verdict."""
        counts = ", ".join(f"{op} {n}" for op, n in self.ops)
        verdict = (
            f"op audit passed (TensorRT {TENSORRT_VERSION} ONNX parser, opset {self.opset})"
            if self.ok
            else "op audit FAILED: " + "; ".join(self.problems)
        )
        return f"ops ({sum(n for _, n in self.ops)} nodes): {counts}\n{verdict}"


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of the subgraphs in its attributes (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def audit_onnx(model: onnx.ModelProto | str | os.PathLike[str], allow: tuple[str, ...] = ()) -> AuditReport:
    """Count the graph's ops and list those TensorRT's ONNX parser does not support.

    Args:
        model: an ONNX model or a path (external weights are not loaded; only the graph is read).
        allow: extra op names to accept (``Op`` or ``domain::Op``), e.g. a plugin that will be loaded.

    Returns:
        The :class:`AuditReport`; ``report.ok`` says whether the graph passes.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    counts: Counter[str] = Counter()
    for node in _nodes(model.graph):
        name = node.op_type if node.domain in _STANDARD_DOMAINS else f"{node.domain}::{node.op_type}"
        counts[name] += 1
    unsupported = tuple(sorted(op for op in counts if op not in SUPPORTED_OPS and op not in allow))
    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 0)
    problems = []
    if unsupported:
        problems.append(
            "not supported by TensorRT's ONNX parser: " + ", ".join(f"{op} ({counts[op]}x)" for op in unsupported)
        )
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} outside the parser's range {OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
    return AuditReport(tuple(sorted(counts.items())), unsupported, opset, tuple(problems))


def check_onnx(model: onnx.ModelProto | str | os.PathLike[str], allow: tuple[str, ...] = ()) -> AuditReport:
    """:func:`audit_onnx`, raising when the graph does not pass.

    Raises:
        ExportError: an op TensorRT's parser cannot import, or an opset out of its range.
    """
    report = audit_onnx(model, allow)
    if not report.ok:
        raise ExportError(f"ONNX graph fails the TensorRT op audit: {'; '.join(report.problems)}")
    return report
