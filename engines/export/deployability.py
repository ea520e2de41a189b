"""The deployability contract of a calibrated ONNX: the record beside it, and the check before it is used.

A Q/DQ graph made by calibration is tied to the weights it was made for:
``<model>.onnx.calibration.json`` beside the ONNX records the weights hash, the ONNX file's hash
and the accuracy gate's verdict. Calibration writes the record (:func:`write_sidecar`, from its
:class:`Verdict`); the onnxruntime and tensorrt backends call :func:`check_deployable` on
``engine.onnx``, which refuses a graph made for other weights, changed since, or not deployable.
An ONNX without a record beside it is not a calibration artifact: nothing is checked.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emim_stream.engines.errors import CalibrationError
from emim_stream.engines.export.onnx import file_sha256
from emim_stream.engines.files import atomic_write

__all__ = [
    "SIDECAR_FORMAT",
    "SIDECAR_SUFFIX",
    "Verdict",
    "check_deployable",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".calibration.json"
SIDECAR_FORMAT = "emim-stream.calibration/1"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a calibration concluded about its graph: the weights it is for, and the gate with its figure."""

    model_name: str
    weights_sha256: str
    precision: str
    gate: float
    """The smallest top-1 agreement with the float model a deployable graph reaches."""
    top1: float
    """The top-1 agreement the gate was applied to (the lowest measured)."""
    backend: str
    """Where ``top1`` was measured (e.g. 'torch-fakequant', 'onnxruntime')."""
    clips: int
    """Held-out clips behind ``top1``."""
    deployable: bool


def sidecar_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``model.qdq.onnx`` -> ``model.qdq.onnx.calibration.json``."""
    return Path(f"{os.fspath(onnx_path)}{SIDECAR_SUFFIX}")


def write_sidecar(
    onnx_path: str | os.PathLike[str], verdict: Verdict, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the record of ``verdict`` beside the ONNX (atomically) and return it.

    The record: format, model (name, weights hash), precision, the ONNX file name and hash,
    the gate with the figure it was applied to, the verdict, and ``extra`` (clips, versions...).
    """
    onnx_path = Path(onnx_path)
    record = {
        "format": SIDECAR_FORMAT,
        "model": {"name": verdict.model_name, "weights_sha256": verdict.weights_sha256},
        "precision": verdict.precision,
        "onnx": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "gate": {
            "metric": "top1_agreement",
            "threshold": verdict.gate,
            "value": verdict.top1,
            "backend": verdict.backend,
            "clips": verdict.clips,
        },
        "deployable": verdict.deployable,
        "created_wall": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    with atomic_write(sidecar_path(onnx_path)) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def read_sidecar(onnx_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The calibration record beside ``onnx_path``, or None when there is none.

    Raises:
        CalibrationError: the record exists but cannot be read.
    """
    path = sidecar_path(onnx_path)
    if not path.is_file():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text())
        if record.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format is not {SIDECAR_FORMAT!r}")
        return record
    except (OSError, ValueError, AttributeError) as err:
        raise CalibrationError(
            f"calibration record '{path}' cannot be read ({err}); re-run emim-stream calibrate"
        ) from None


def check_deployable(onnx_path: str | os.PathLike[str], weights_sha256: str, *, force: bool = False) -> None:
    """Refuse a calibrated ONNX that is not for these weights, was changed, or failed its gate.

    Args:
        onnx_path: the graph about to be built (``engine.onnx``).
        weights_sha256: the content hash of the weights the engine loads
            (:func:`emim_stream.engines.checkpoints.io.weights_sha256`; ``ModelSource.weights_sha256``).
        force: a failed gate is only logged (a warning); other weights or a changed file still raise.

    Raises:
        CalibrationError: with the record's figures: made for other weights, the ONNX file differs
            from the one calibrated, or (without ``force``) the accuracy gate failed.
    """
    record = read_sidecar(onnx_path)
    if record is None:
        return
    if not Path(onnx_path).is_file():
        raise CalibrationError(f"'{onnx_path}' does not exist (only its calibration record does)")
    try:
        model, gate = record["model"], record["gate"]
        made_for, onnx_sha256, deployable = model["weights_sha256"], record["onnx_sha256"], record["deployable"]
    except (KeyError, TypeError) as err:
        raise CalibrationError(
            f"calibration record '{sidecar_path(onnx_path)}' lacks {err}; re-run emim-stream calibrate"
        ) from None
    if made_for != weights_sha256:
        raise CalibrationError(
            f"'{onnx_path}' was calibrated for {model.get('name')} weights {made_for[:12]}, but the engine loads "
            f"weights {weights_sha256[:12]}; run emim-stream calibrate for this checkpoint"
        )
    if file_sha256(onnx_path) != onnx_sha256:
        raise CalibrationError(
            f"'{onnx_path}' changed since it was calibrated (its hash differs from the record's); "
            "run emim-stream calibrate again"
        )
    if deployable:
        return
    figures = (
        f"{record.get('precision')} top-1 agreement with the float model {gate['value']:.2%} ({gate['backend']}, "
        f"{gate['clips']} held-out clips) is below the gate {gate['threshold']:.2%}"
    )
    if force:
        log.warning("'%s' is not deployable (%s); building it anyway (forced)", onnx_path, figures)
        return
    raise CalibrationError(
        f"'{onnx_path}' is not deployable: {figures}; calibrate with more or more representative clips, "
        "keep more layers in high precision, or force the build"
    )
