"""``emim-stream calibrate``: INT8/FP8 post-training quantisation from calibration clips, with an accuracy gate.

Writes into ``--out DIR``::

    clips/                              calibration + held-out clips (shards, manifest.json)
    model.qdq.onnx                      the Q/DQ graph: engine.onnx with engine.precision int8/fp8
    model.qdq.onnx.calibration.json     the record build-engine checks (weights hash, ONNX hash, verdict)
    calibration.json                    the same record
    report.json                         the accuracy report

Exit status: 0 deployable, 1 calibrated but below the gate, others as any command's errors.

The command composes the packages: it opens the source with :func:`emim_stream.pipeline.capture.sources.open_source`,
samples and prepares its frames as a camera process does (the checkpoint's clip sampling matched to the source's
frame rate, :mod:`emim_stream.engines.sampling`; :class:`emim_stream.pipeline.capture.preprocess.Preprocessor`) and
hands the samples to :func:`emim_stream.calibration.clips.collect_from_frames`, which never imports ``pipeline``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from emim_stream.cli.commands.common import Progress, add_overrides_argument
from emim_stream.engines.backends.base import QUANTIZED, Precision

if TYPE_CHECKING:
    import numpy as np

    from emim_stream.calibration.clips import ClipManifest
    from emim_stream.engines.backends.model_source import ModelSource
    from emim_stream.engines.sampling import FrameSampler
    from emim_stream.pipeline.capture.preprocess import Preprocessor
    from emim_stream.pipeline.capture.sources import FrameSource

log = logging.getLogger(__name__)

HELP = (
    "quantise a model to INT8/FP8 with ModelOpt on calibration clips and gate it on agreement "
    "with the float model (exit 1 when below the gate)"
)

ONNX_NAME = "model.qdq.onnx"
_PARITY_CLIPS = 2  # clips for the per-pair Q/DQ check (one ONNX Runtime run with every pair exposed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="pipeline config: engine: names the model, cameras[0] the source"
    )
    parser.add_argument("--clips", type=int, help="calibration clips to collect (ModelOpt suggests 128-512)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--source", help="a source URI: file, rtsp://, USB index, synthetic://... (default: cameras[0])")
    src.add_argument("--data", help="a data set: class-per-folder directory, list file or synthetic://?split=val")
    src.add_argument("--clips-from", metavar="DIR", help="reuse the clips folder of an earlier run (OUT/clips)")
    parser.add_argument(
        "--precision", choices=[p.value for p in QUANTIZED], default=Precision.INT8.value, help="default: %(default)s"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--gate", type=float, default=0.99, help="smallest top-1 agreement to deploy (default %(default)s)"
    )
    parser.add_argument(
        "--held-out", type=int, default=100, help="clips kept out of calibration for the report (default %(default)s)"
    )
    parser.add_argument("--stride", type=int, help="sampled frames between clips taken from a source (default: T)")
    parser.add_argument("--batch", type=int, default=8, help="clips per forward pass (default %(default)s)")
    parser.add_argument(
        "--keep",
        action="append",
        metavar="PATTERN",
        help="module-name pattern kept in high precision, repeatable (default: *.motion_conv.*, the EMIM motion "
        "MLP; --keep '' quantises every conv and linear)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data sets: visiting order and clip starts")
    add_overrides_argument(parser, "engine.checkpoint=my.pt")


def _check_args(args: argparse.Namespace) -> None:
    from emim_stream.calibration.errors import CalibrationError

    if args.clips_from is None and (args.clips is None or args.clips < 1):
        raise CalibrationError("--clips N (>= 1) is needed to collect clips (or reuse a folder with --clips-from)")
    if args.held_out < 1:
        raise CalibrationError(f"--held-out must be >= 1: the gate is measured on held-out clips, got {args.held_out}")
    if args.batch < 1:
        raise CalibrationError(f"--batch must be >= 1, got {args.batch}")
    if not args.gate >= 0:
        raise CalibrationError(f"--gate is a top-1 agreement in 0..1, got {args.gate}")


def collect_from_source(
    uri: str | int,
    model: ModelSource,
    out_dir: str | os.PathLike[str],
    calibration: int,
    held_out: int,
    *,
    resize: str = "area",
    stride: int | None = None,
    read_timeout_s: float = 5.0,
    progress: Callable[[int, int], None] | None = None,
) -> ClipManifest:
    """Calibration clips from a pipeline source, its frames sampled and prepared as a camera process does.

    Files and synthetic sources are read as fast as they decode (unpaced: sampled by their own timestamps);
    a file that ends early gives fewer clips (a warning), live sources deliver at their own rate.

    Args:
        uri: a source URI as in a camera config (file, ``rtsp://...``, USB index, ``synthetic://...``).
        read_timeout_s: live sources: how long a silent source may stall before it counts as lost.
        model, out_dir, calibration, held_out, resize, stride, progress: as
            :func:`emim_stream.calibration.clips.collect_from_frames`.

    Raises:
        CalibrationError: bad counts, or the source ended before the first calibration clip.
        SourceError: the source cannot be opened or is lost.
    """
    from emim_stream.calibration.clips import collect_from_frames
    from emim_stream.engines.sampling import FrameSampler, SamplingRequest, plan_sampling
    from emim_stream.engines.uris import redact_uri
    from emim_stream.pipeline.capture.preprocess import Preprocessor
    from emim_stream.pipeline.capture.sources import open_source

    pre = Preprocessor(model.clip.height, model.clip.width, resize)
    source = redact_uri(uri)
    src = open_source(uri, pace=False, read_timeout_s=read_timeout_s)
    fps = src.open().fps
    with src:
        plan = plan_sampling(SamplingRequest.for_clip(model.clip, stride or model.clip.frames), fps)
        log.info("%s: %s", source, plan.describe())
        frames = _prepared_frames(src, pre, FrameSampler(plan), source)
        return collect_from_frames(
            frames,
            model,
            out_dir,
            calibration,
            held_out,
            source=source,
            resize=resize,
            stride=stride,
            progress=progress,
        )


def _prepared_frames(
    src: FrameSource, pre: Preprocessor, sampler: FrameSampler, source: str
) -> Iterator[np.ndarray]:
    """The model's samples of an open source, prepared (a repeated sample twice); until the source ends (a
    warning) or is lost (SourceError)."""
    from emim_stream.pipeline.errors import EndOfStream

    count = 0
    while True:
        try:
            frame = src.read()
        except EndOfStream:
            log.warning("%s ended after %d frames", source, count)
            return
        if frame is None:  # a stalled live source; it raises once it counts as lost
            continue
        count += 1
        _, samples = sampler.offer(frame.source_pts_ns, frame.capture_mono_ns)
        if samples:
            image = pre(frame.image, bgr=True)
            for _ in range(samples):
                yield image


def main(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import onnxruntime
    import torch

    from emim_stream.calibration.clips import Split, collect_from_dataset, load_clips
    from emim_stream.calibration.errors import CalibrationError
    from emim_stream.calibration.quantize import (
        DEFAULT_KEEP,
        export_qdq_onnx,
        import_modelopt,
        modelopt_version,
        qdq_parity,
        quantize_model,
    )
    from emim_stream.calibration.report import build_report, infer_logits, onnxruntime_logits, write_sidecar
    from emim_stream.engines.backends.model_source import load_source
    from emim_stream.pipeline.config import load_config

    _check_args(args)
    cfg = load_config(args.config, args.overrides)
    import_modelopt()  # before spending minutes on clips
    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    model = load_source(cfg.engine)
    clip = model.clip
    out = Path(args.out)
    camera = cfg.cameras[0]
    print(
        f"model    {model.model_name} ({model.weights}, sha256 {model.weights_sha256[:12]}), "
        f"clip 3x{clip.frames}x{clip.height}x{clip.width}, {args.precision}"
    )

    if args.clips_from:
        clips = load_clips(args.clips_from, model)
    else:
        wanted = dict(calibration=args.clips, held_out=args.held_out, resize=camera.resize, progress=Progress("clips"))
        if args.data:
            collect_from_dataset(args.data, model, out / "clips", seed=args.seed, **wanted)
        else:
            collect_from_source(
                args.source or camera.source,
                model,
                out / "clips",
                stride=args.stride,
                read_timeout_s=camera.read_timeout_s,
                **wanted,
            )
        clips = load_clips(out / "clips", model)
    manifest = clips.manifest
    n_cal, n_held = clips.count(Split.CALIBRATION), clips.count(Split.HELD_OUT)
    if n_held == 0:
        raise CalibrationError(f"'{clips.root}' holds no held-out clip: the gate needs some (--held-out)")
    print(f"clips    {n_cal} calibration + {n_held} held out from {manifest.source} ({clips.root})")

    keep = tuple(args.keep) if args.keep else DEFAULT_KEEP
    quant = quantize_model(
        model.model,
        clips.batches(Split.CALIBRATION, args.batch),
        args.precision,
        keep,
        total=n_cal,
        progress=Progress("calibrating"),
    )
    print(
        f"quantise {len(quant.quantized)} conv/linear layers {args.precision}, {len(quant.kept)} kept in "
        f"high precision ({', '.join(keep)}), {quant.seconds:.1f} s on {quant.clips} clips"
    )

    onnx_path = out / ONNX_NAME
    export = export_qdq_onnx(quant, (clip.frames, clip.height, clip.width), onnx_path)
    print(
        f"export   {onnx_path}: {2 * len(quant.quantized)} Q/DQ pairs, opset {export.opset}, "
        f"op audit passed ({export.seconds:.1f} s)"
    )

    reference = infer_logits(model.model, clips.batches(Split.HELD_OUT, args.batch))
    fakequant = infer_logits(quant.model, clips.batches(Split.HELD_OUT, args.batch))
    threads = cfg.engine.threads
    ort_logits, ort_error = onnxruntime_logits(onnx_path, clips.batches(Split.HELD_OUT, args.batch), threads)
    parity = None
    if ort_error is None:
        parity = qdq_parity(onnx_path, quant.model, next(clips.batches(Split.HELD_OUT, _PARITY_CLIPS)), threads)
    facts = {
        "clips": {"calibration": n_cal, "held_out": n_held, "source": manifest.source, "folder": str(clips.root)},
        "input": [3, clip.frames, clip.height, clip.width],
        "quantized_layers": len(quant.quantized),
        "kept_high_precision": list(quant.kept),
        "keep_patterns": list(keep),
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
        args.precision,
        reference,
        fakequant,
        model.labels,
        onnxruntime=ort_logits,
        onnxruntime_error=ort_error,
        qdq_parity=parity,
        gate=args.gate,
        details=facts,
    )
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    record = write_sidecar(onnx_path, report, extra={"input": facts["input"], "clips": facts["clips"]})
    (out / "calibration.json").write_text(json.dumps(record, indent=2))
    print(report.summary())
    print(f"wrote    {out}/: {ONNX_NAME}, {ONNX_NAME}.calibration.json, calibration.json, report.json")
    if report.deployable:
        print(f"deploy   engine.onnx: {onnx_path}  engine.precision: {args.precision}  (then emim-stream build-engine)")
    return 0 if report.deployable else 1
