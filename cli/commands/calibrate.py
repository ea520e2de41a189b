"""``emim-stream calibrate``: INT8/FP8 post-training quantisation from calibration clips, with an accuracy gate.

The workflow and what it writes are :mod:`emim_stream.calibration.workflow`'s. Exit status: 0 deployable, 1
calibrated but below the gate, others as any command's errors.

This module composes the packages: :func:`collect_from_source` opens the source with
:func:`emim_stream.pipeline.capture.sources.open_source`, prepares every frame as the camera process does
(:class:`emim_stream.pipeline.capture.preprocess.Preprocessor`) and hands the frames to
:func:`emim_stream.calibration.clips.collect_from_frames`, which never imports ``pipeline``.
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
    from emim_stream.pipeline.capture.preprocess import Preprocessor
    from emim_stream.pipeline.capture.sources import FrameSource

log = logging.getLogger(__name__)

HELP = (
    "quantise a model to INT8/FP8 with ModelOpt on calibration clips and gate it on agreement "
    "with the float model (exit 1 when below the gate)"
)


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
    parser.add_argument("--stride", type=int, help="frames between clips taken from a source (default: T)")
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
    """Calibration clips from a pipeline source, its frames prepared as the camera process prepares them.

    Files and synthetic sources are read as fast as they decode (unpaced); a file that ends early
    gives fewer clips (a warning), live sources deliver at their own rate.

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
    from emim_stream.engines.uris import redact_uri
    from emim_stream.pipeline.capture.preprocess import Preprocessor
    from emim_stream.pipeline.capture.sources import open_source

    pre = Preprocessor(model.clip.height, model.clip.width, resize)
    source = redact_uri(uri)
    with open_source(uri, pace=False, read_timeout_s=read_timeout_s) as src:
        frames = _prepared_frames(src, pre, source)
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


def _prepared_frames(src: FrameSource, pre: Preprocessor, source: str) -> Iterator[np.ndarray]:
    """The frames of an open source, prepared; until it ends (a warning) or is lost (SourceError)."""
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
        yield pre(frame.image, bgr=True)


def main(args: argparse.Namespace) -> int:
    import functools
    from pathlib import Path

    from emim_stream.calibration.quantize import DEFAULT_KEEP
    from emim_stream.calibration.workflow import CalibrationJob, calibrate
    from emim_stream.pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    camera = cfg.cameras[0]
    job = CalibrationJob(
        out=Path(args.out),
        precision=args.precision,
        clips=args.clips,
        held_out=args.held_out,
        gate=args.gate,
        batch=args.batch,
        keep=tuple(args.keep) if args.keep else DEFAULT_KEEP,
        seed=args.seed,
        resize=camera.resize,
        clips_from=args.clips_from,
        data=args.data,
    )
    from_source = functools.partial(
        collect_from_source, args.source or camera.source, stride=args.stride, read_timeout_s=camera.read_timeout_s
    )
    report = calibrate(job, cfg.engine, from_source, progress=Progress, say=print)
    return 0 if report.deployable else 1
