"""``emim-stream build-engine``: build (or validate) the TensorRT plan or aoti package a config asks for."""

from __future__ import annotations

import argparse
import logging

from emim_stream.cli.commands.engine_options import add_engine_arguments, engine_config_from_args
from emim_stream.engines.backends.base import Backend

HELP = "build a TensorRT plan or an aoti package ahead of time (cached by model, input, precision, toolkit, device)"

log = logging.getLogger(__name__)

_BUILT = (Backend.TENSORRT.value, Backend.AOTI.value)
"""Backends with an artefact to build ahead of time."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser, backend=False)
    parser.add_argument(
        "--backend",
        choices=_BUILT,
        default=Backend.TENSORRT.value,
        help="build a TensorRT plan (default) or an aoti package (torch.export + AOTInductor)",
    )
    parser.add_argument(
        "--force", action="store_true", help="build from --onnx even if its calibration failed the accuracy gate"
    )


def main(args: argparse.Namespace) -> int:
    import torch

    from emim_stream.engines.backends import Candidate, open_backend

    fixed = {"force_undeployable": True} if args.force else {}
    cfg = engine_config_from_args(args, backend=args.backend, **fixed)
    if args.backend == Backend.TENSORRT:
        device = cfg.device if cfg.device.startswith("cuda") else "cuda"
    elif cfg.device == "auto":  # aoti: where the config would run it
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = cfg.device
    step = Candidate(args.backend, device, cfg.precision)
    log.info("build-engine: %s", step)
    with open_backend(cfg, step) as engine:  # builds unless a valid plan / package is cached
        info = engine.describe()
        spec = engine.input_spec
    print(f"engine   {info.summary()}")
    print(f"input    [1..{spec.max_batch}, 3, {spec.frames}, {spec.height}, {spec.width}] {spec.dtype}")
    return 0
