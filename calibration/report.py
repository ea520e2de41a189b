"""The accuracy report of a quantised model and its deployability gate.

The float model is the reference; no ground-truth labels are needed. On held-out clips the
report compares with it the fake-quant torch model and, where ONNX Runtime runs it, the Q/DQ ONNX:

- top-1 agreement: the quantised model's top class is the float model's;
- top-5 agreement: the float model's top class is among the quantised model's five best;
- max / mean absolute logit error (with the float logits' largest magnitude, for scale);
- per-class top-1 agreement, the class being the float model's prediction.

The gate: the artifact is deployable when every measured top-1 agreement reaches ``gate``
(default 0.99: with 100 held-out clips, one disagreement is allowed). The Q/DQ graph also carries
:func:`emim_stream.calibration.quantize.qdq_parity` figures (each pair against its torch quantiser).

The verdict goes beside the Q/DQ ONNX as the record of :mod:`emim_stream.engines.export.deployability` (weights
hash, ONNX hash, gate and figure), which the backends check before they use the graph.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from emim_stream.engines.errors import CalibrationError, ExportError
from emim_stream.engines.export import deployability
from emim_stream.engines.export.onnx import run_onnxruntime

if TYPE_CHECKING:
    from emim_stream.calibration.quantize import QdqParity

__all__ = [
    "DEFAULT_GATE",
    "Agreement",
    "CalibrationReport",
    "ClassAgreement",
    "build_report",
    "compare_logits",
    "infer_logits",
    "onnxruntime_logits",
    "write_sidecar",
]

log = logging.getLogger(__name__)

DEFAULT_GATE = 0.99
TORCH_FAKEQUANT = "torch-fakequant"
ONNXRUNTIME = "onnxruntime"


@dataclass(frozen=True, slots=True)
class ClassAgreement:
    """Top-1 agreement on the clips the float model puts in one class."""

    clips: int
    top1: float


@dataclass(frozen=True, slots=True)
class Agreement:
    """One quantised backend against the float model on the same clips."""

    backend: str
    """'torch-fakequant' or 'onnxruntime'."""
    clips: int
    top1: float
    top5: float
    max_logit_error: float
    mean_logit_error: float
    float_logit_scale: float
    """Largest |logit| of the float model (the errors' scale)."""
    per_class: dict[str, ClassAgreement]


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, labels: Sequence[str], backend: str) -> Agreement:
    """Agreement of ``candidate`` logits with ``reference`` logits, both ``[N, classes]``.

    Raises:
        ValueError: shapes differ, no clip, or ``labels`` does not match the class count.
    """
    if reference.shape != candidate.shape or reference.dim() != 2 or reference.shape[0] == 0:
        raise ValueError(
            f"logits must be the same [N>0, classes], got {list(reference.shape)} and {list(candidate.shape)}"
        )
    if len(labels) != reference.shape[1]:
        raise ValueError(f"{len(labels)} labels for {reference.shape[1]} classes")
    reference, candidate = reference.float(), candidate.float()
    want = reference.argmax(1)
    got = candidate.argmax(1)
    k = min(5, reference.shape[1])
    in_top5 = (candidate.topk(k, dim=1).indices == want[:, None]).any(1)
    error = (candidate - reference).abs()
    per_class = {}
    for index in want.unique().tolist():
        members = want == index
        per_class[labels[index]] = ClassAgreement(int(members.sum()), float((got[members] == index).float().mean()))
    return Agreement(
        backend=backend,
        clips=reference.shape[0],
        top1=float((got == want).float().mean()),
        top5=float(in_top5.float().mean()),
        max_logit_error=float(error.max()),
        mean_logit_error=float(error.mean()),
        float_logit_scale=float(reference.abs().max()),
        per_class=dict(sorted(per_class.items())),
    )


def infer_logits(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Logits ``[N, classes]`` of a torch model over all batches (eval, no grad, CPU)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(batch).float() for batch in batches])


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    """What a calibration measured and whether its artifact may replace the float engine."""

    model_name: str
    weights_sha256: str
    precision: str
    gate: float
    comparisons: tuple[Agreement, ...]
    deployable: bool
    onnxruntime_error: str | None = None
    """Why the Q/DQ graph was not run in ONNX Runtime (None: it ran)."""
    onnxruntime_vs_fakequant: Agreement | None = None
    """The Q/DQ graph in ONNX Runtime against the fake-quant torch model (not gated: the two are
    roundings of the same quantised network, see :mod:`emim_stream.calibration.quantize`)."""
    qdq_parity: QdqParity | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Calibration facts for the record: clips, quantised layers, timings, versions."""

    @property
    def gated(self) -> Agreement:
        """The comparison with the lowest top-1 agreement: the one the verdict rests on."""
        return min(self.comparisons, key=lambda c: c.top1)

    @property
    def verdict(self) -> deployability.Verdict:
        """The verdict with the figure it rests on, as the artifact's record carries it."""
        gated = self.gated
        return deployability.Verdict(
            model_name=self.model_name,
            weights_sha256=self.weights_sha256,
            precision=self.precision,
            gate=self.gate,
            top1=gated.top1,
            backend=gated.backend,
            clips=gated.clips,
            deployable=self.deployable,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the terminal."""
        clips = self.comparisons[0].clips
        lines = [f"accuracy of {self.precision} against float ({self.model_name}, {clips} held-out clips)"]
        for c in self.comparisons:
            lines.append(
                f"  {c.backend:16s} top-1 {c.top1:7.2%}  top-5 {c.top5:7.2%}  logit error max {c.max_logit_error:.4g} "
                f"mean {c.mean_logit_error:.4g} (float logits up to {c.float_logit_scale:.4g})"
            )
        if self.onnxruntime_error:
            lines.append(f"  onnxruntime      not run: {self.onnxruntime_error}")
        if self.onnxruntime_vs_fakequant is not None:
            c = self.onnxruntime_vs_fakequant
            lines.append(
                f"  ort vs fakequant top-1 {c.top1:7.2%}  logit difference max {c.max_logit_error:.4g} "
                f"mean {c.mean_logit_error:.4g}"
            )
        if self.qdq_parity is not None:
            p = self.qdq_parity
            lines.append(
                f"  Q/DQ parity      {p.pairs} pairs vs their torch quantisers: {p.mismatched} of {p.elements} "
                f"elements differ (max {p.max_error_of_amax:.3g} amax)"
            )
        worst = min(self.gated.per_class.items(), key=lambda kv: kv[1].top1, default=None)
        if worst is not None:
            lines.append(f"  weakest class    {worst[0]}: top-1 {worst[1].top1:.2%} of {worst[1].clips} clips")
        verdict = "DEPLOYABLE" if self.deployable else "NOT deployable"
        lines.append(
            f"verdict: {verdict} (top-1 agreement {self.gated.top1:.2%} on {self.gated.backend}, gate {self.gate:.2%})"
        )
        return "\n".join(lines)


def build_report(
    model_name: str,
    weights_sha256: str,
    precision: str,
    reference: torch.Tensor,
    fakequant: torch.Tensor,
    labels: Sequence[str],
    *,
    onnxruntime: torch.Tensor | None = None,
    onnxruntime_error: str | None = None,
    qdq_parity: QdqParity | None = None,
    gate: float = DEFAULT_GATE,
    details: dict[str, Any] | None = None,
) -> CalibrationReport:
    """Compare the quantised logits with the float ones and apply the gate.

    Args:
        reference: float model logits ``[N, classes]`` on the held-out clips.
        fakequant: fake-quant torch logits on the same clips.
        onnxruntime: the Q/DQ ONNX's logits in ONNX Runtime, or None when it did not run
            (say why in ``onnxruntime_error``).
        gate: the smallest top-1 agreement (0..1) every comparison must reach; > 1 always fails.

    Raises:
        CalibrationError: no held-out clip, or a gate below 0.
    """
    if reference.shape[0] == 0:
        raise CalibrationError("the accuracy report needs at least one held-out clip (--held-out)")
    if not gate >= 0:
        raise CalibrationError(f"the gate is a top-1 agreement in 0..1, got {gate}")
    comparisons = [compare_logits(reference, fakequant, labels, TORCH_FAKEQUANT)]
    ort_vs_fakequant = None
    if onnxruntime is not None:
        comparisons.append(compare_logits(reference, onnxruntime, labels, ONNXRUNTIME))
        ort_vs_fakequant = compare_logits(fakequant, onnxruntime, labels, f"{ONNXRUNTIME} vs {TORCH_FAKEQUANT}")
    return CalibrationReport(
        model_name=model_name,
        weights_sha256=weights_sha256,
        precision=precision,
        gate=gate,
        comparisons=tuple(comparisons),
        deployable=all(c.top1 >= gate for c in comparisons),
        onnxruntime_error=onnxruntime_error,
        onnxruntime_vs_fakequant=ort_vs_fakequant,
        qdq_parity=qdq_parity,
        details=dict(details or {}),
    )


def onnxruntime_logits(
    path: str | os.PathLike[str], batches: Iterable[torch.Tensor], threads: int = 0
) -> tuple[torch.Tensor | None, str | None]:
    """The Q/DQ graph's logits in ONNX Runtime (``threads`` 0: its default), or (None, why) when it cannot run there."""
    try:
        return torch.cat([run_onnxruntime(path, batch, threads) for batch in batches]), None
    except ExportError as err:
        log.warning("the Q/DQ graph does not run in ONNX Runtime: %s", err)
        return None, str(err)


def write_sidecar(
    onnx_path: str | os.PathLike[str], report: CalibrationReport, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the report's verdict beside the ONNX (:func:`emim_stream.engines.export.deployability.write_sidecar`)
    and return it."""
    return deployability.write_sidecar(onnx_path, report.verdict, extra)
