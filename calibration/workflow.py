"""The calibration workflow: clips -> ModelOpt quantisation -> Q/DQ ONNX -> accuracy report and verdict.

Writes into the job's ``out`` folder::

    clips/                              calibration + held-out clips (shards, manifest.json)
    model.qdq.onnx                      the Q/DQ graph: engine.onnx with engine.precision int8/fp8
    model.qdq.onnx.calibration.json     the record build-engine checks (weights hash, ONNX hash, verdict)
    calibration.json                    the same record
    report.json                         the accuracy report

Clips come from an earlier run's folder, a data set, or a camera's source. This package never imports
``pipeline``: the caller passes a :data:`SourceCollector` that reads the source the way the camera process
prepares frames (``emim-stream calibrate`` passes one built on the pipeline's sources).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from emim_stream.calibration.clips import ClipManifest, ClipSet, Progress, Split, collect_from_dataset, load_clips
from emim_stream.calibration.errors import CalibrationError
from emim_stream.calibration.quantize import (
    export_qdq_onnx,
    import_modelopt,
    modelopt_version,
    qdq_parity,
    quantize_model,
)
from emim_stream.calibration.report import (
    CalibrationReport,
    build_report,
    infer_logits,
    onnxruntime_logits,
    write_sidecar,
)
from emim_stream.engines.backends.base import EngineConfig
from emim_stream.engines.backends.model_source import ModelSource, load_source

__all__ = ["ONNX_NAME", "CalibrationJob", "SourceCollector", "calibrate"]

ONNX_NAME = "model.qdq.onnx"
_PARITY_CLIPS = 2  # clips for the per-pair Q/DQ check (one ONNX Runtime run with every pair exposed)

SourceCollector = Callable[..., ClipManifest]
"""Collects clips from the camera's source: ``(model, out_dir, calibration=, held_out=, resize=, progress=)``, as
:func:`emim_stream.calibration.clips.collect_from_frames` takes them, with the source and its reading settings
bound."""


@dataclass(frozen=True)
class CalibrationJob:
    """What to calibrate into ``out`` (the calibrate command's options; it holds their defaults).

    Raises:
        CalibrationError: a count or the gate out of range, or nothing to take clips from.
    """

    out: Path
    precision: str
    clips: int | None
    """Calibration clips to collect (ModelOpt suggests 128-512); None with ``clips_from``."""
    held_out: int
    """Clips kept out of calibration for the report."""
    gate: float
    """Smallest top-1 agreement with the float model that may deploy."""
    batch: int
    """Clips per forward pass."""
    keep: tuple[str, ...]
    """Module-name patterns kept in high precision."""
    seed: int
    """Data sets: visiting order and clip starts."""
    resize: str
    """How frames are resized (the camera's setting)."""
    clips_from: str | None = None
    """The clips folder of an earlier run to reuse."""
    data: str | None = None
    """A data set to take clips from instead of the camera's source."""

    def __post_init__(self) -> None:
        if self.clips_from is None and (self.clips is None or self.clips < 1):
            raise CalibrationError("--clips N (>= 1) is needed to collect clips (or reuse a folder with --clips-from)")
        if self.held_out < 1:
            raise CalibrationError(
                f"--held-out must be >= 1: the gate is measured on held-out clips, got {self.held_out}"
            )
        if self.batch < 1:
            raise CalibrationError(f"--batch must be >= 1, got {self.batch}")
        if not self.gate >= 0:
            raise CalibrationError(f"--gate is a top-1 agreement in 0..1, got {self.gate}")


def calibrate(
    job: CalibrationJob,
    engine: EngineConfig,
    from_source: SourceCollector,
    *,
    progress: Callable[[str], Progress],
    say: Callable[[str], None],
) -> CalibrationReport:
    """Quantise ``engine``'s model on clips, export the Q/DQ graph and gate it on the held-out clips.

    Args:
        job: what to do and where to write.
        engine: the model (checkpoint or registry name) and the threads to use.
        from_source: collects clips from the camera's source (used without ``clips_from`` and ``data``).
        progress: a progress callback for a named step (``'clips'``, ``'calibrating'``).
        say: where the step lines go.

    Returns:
        The report; ``deployable`` says whether the graph passed the gate.

    Raises:
        CalibrationError: ModelOpt is missing, or no held-out clip to measure the gate on.
    """
    import_modelopt()  # before spending minutes on clips
    if engine.threads:
        torch.set_num_threads(engine.threads)
    model = load_source(engine)
    clip = model.clip
    say(
        f"model    {model.model_name} ({model.weights}, sha256 {model.weights_sha256[:12]}), "
        f"clip 3x{clip.frames}x{clip.height}x{clip.width}, {job.precision}"
    )
    clips = _clips(job, model, from_source, progress)
    manifest = clips.manifest
    n_cal, n_held = clips.count(Split.CALIBRATION), clips.count(Split.HELD_OUT)
    if n_held == 0:
        raise CalibrationError(f"'{clips.root}' holds no held-out clip: the gate needs some (--held-out)")
    say(f"clips    {n_cal} calibration + {n_held} held out from {manifest.source} ({clips.root})")

    quant = quantize_model(
        model.model,
        clips.batches(Split.CALIBRATION, job.batch),
        job.precision,
        job.keep,
        total=n_cal,
        progress=progress("calibrating"),
    )
    say(
        f"quantise {len(quant.quantized)} conv/linear layers {job.precision}, {len(quant.kept)} kept in "
        f"high precision ({', '.join(job.keep)}), {quant.seconds:.1f} s on {quant.clips} clips"
    )

    onnx_path = job.out / ONNX_NAME
    export = export_qdq_onnx(quant, (clip.frames, clip.height, clip.width), onnx_path)
    say(
        f"export   {onnx_path}: {2 * len(quant.quantized)} Q/DQ pairs, opset {export.opset}, "
        f"op audit passed ({export.seconds:.1f} s)"
    )

    reference = infer_logits(model.model, clips.batches(Split.HELD_OUT, job.batch))
    fakequant = infer_logits(quant.model, clips.batches(Split.HELD_OUT, job.batch))
    threads = engine.threads
    ort_logits, ort_error = onnxruntime_logits(onnx_path, clips.batches(Split.HELD_OUT, job.batch), threads)
    parity = None
    if ort_error is None:
        parity = qdq_parity(onnx_path, quant.model, next(clips.batches(Split.HELD_OUT, _PARITY_CLIPS)), threads)
    facts: dict[str, Any] = {
        "clips": {"calibration": n_cal, "held_out": n_held, "source": manifest.source, "folder": str(clips.root)},
        "input": [3, clip.frames, clip.height, clip.width],
        "quantized_layers": len(quant.quantized),
        "kept_high_precision": list(quant.kept),
        "keep_patterns": list(job.keep),
        "calibration_seconds": round(quant.seconds, 3),
        "collection_seconds": manifest.seconds,
        "export_seconds": round(export.seconds, 3),
        "versions": {
            "torch": torch.__version__,
            "modelopt": modelopt_version(),
            "onnxruntime": onnxruntime.__version__,
        },
    }
    report = build_report(
        model.model_name,
        model.weights_sha256,
        job.precision,
        reference,
        fakequant,
        model.labels,
        onnxruntime=ort_logits,
        onnxruntime_error=ort_error,
        qdq_parity=parity,
        gate=job.gate,
        details=facts,
    )
    (job.out / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    record = write_sidecar(onnx_path, report, extra={"input": facts["input"], "clips": facts["clips"]})
    (job.out / "calibration.json").write_text(json.dumps(record, indent=2))
    say(report.summary())
    say(f"wrote    {job.out}/: {ONNX_NAME}, {ONNX_NAME}.calibration.json, calibration.json, report.json")
    if report.deployable:
        say(f"deploy   engine.onnx: {onnx_path}  engine.precision: {job.precision}  (then emim-stream build-engine)")
    return report


def _clips(
    job: CalibrationJob, model: ModelSource, from_source: SourceCollector, progress: Callable[[str], Progress]
) -> ClipSet:
    """The job's clips: an earlier run's folder, or collected now (from the data set or the source) into out/clips."""
    if job.clips_from:
        return load_clips(job.clips_from, model)
    assert job.clips is not None  # CalibrationJob checked it: needed without clips_from
    folder, counting = job.out / "clips", progress("clips")
    if job.data:
        collect_from_dataset(
            job.data, model, folder, job.clips, job.held_out, resize=job.resize, seed=job.seed, progress=counting
        )
    else:
        from_source(model, folder, calibration=job.clips, held_out=job.held_out, resize=job.resize, progress=counting)
    return load_clips(folder, model)
