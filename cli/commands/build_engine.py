"""``emim-stream build-engine``: build (or validate) the TensorRT plan or aoti package a config asks for, with progress.

Also home of the engine options the engine commands share (``bench``, ``doctor``):
:func:`add_engine_arguments` and :func:`engine_config_from_args`.
"""

from __future__ import annotations

import argparse
import logging

HELP = "build a TensorRT plan or an aoti package ahead of time (cached by model, input, precision, toolkit, device)"

log = logging.getLogger(__name__)

_BACKENDS = ("auto", "torch", "aoti", "onnxruntime", "tensorrt")
_BUILT = ("tensorrt", "aoti")
"""Backends with an artefact to build ahead of time."""
_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


def add_engine_arguments(parser: argparse.ArgumentParser, backend: bool = True) -> None:
    """Options that fill an EngineConfig; each overrides the config file's ``engine:`` section."""
    parser.add_argument("--config", help="a pipeline config file; its engine: section is the base")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="an emim-stream checkpoint file")
    src.add_argument("--model", help="a registry name with untrained (seeded) weights, e.g. emim_s")
    if backend:
        parser.add_argument("--backend", choices=_BACKENDS, help="backend (default: the config's, else auto)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=_PRECISIONS)
    parser.add_argument("--max-batch", type=int, help="largest batch per inference call")
    parser.add_argument("--frames", type=int, help="clip length T (default: the model's)")
    parser.add_argument("--size", type=int, help="square clip size H = W (default: the model's)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch / onnxruntime (0 = default)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch: torch.compile the model")
    parser.add_argument("--cuda-graphs", action="store_true", default=None, help="torch / tensorrt: CUDA graphs")
    parser.add_argument("--kernel", help="EMIM kernel for torch / aoti: reference, triton or auto (default)")
    parser.add_argument("--onnx", help="a ready ONNX (e.g. a Q/DQ graph from calibration) instead of exporting")
    parser.add_argument("--cache-dir", help="ONNX / plan / package cache directory (default ~/.cache/emim-stream)")


def engine_config_from_args(args: argparse.Namespace, **fixed: object):
    """The EngineConfig of the config file (if any) with the command-line options applied.

    Raises:
        ConfigError: an invalid value or an unknown key in the file.
    """
    from engines.backends.base import EngineConfig, read_engine_section

    data = read_engine_section(args.config) if args.config else {}
    flags = {
        "checkpoint": args.checkpoint,
        "model": args.model,
        "backend": getattr(args, "backend", None),
        "device": args.device,
        "precision": args.precision,
        "max_batch": args.max_batch,
        "frames": args.frames,
        "height": args.size,
        "width": args.size,
        "threads": args.threads,
        "compile": args.compile,
        "cuda_graphs": args.cuda_graphs,
        "kernel": args.kernel,
        "onnx": args.onnx,
        "plan_cache_dir": args.cache_dir,
    }
    if args.checkpoint or args.model:  # the command line names the weights: drop the file's choice
        data = {k: v for k, v in data.items() if k not in ("checkpoint", "model")}
    data.update({k: v for k, v in flags.items() if v is not None})
    data.update(fixed)
    return EngineConfig.from_dict(data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser, backend=False)
    parser.add_argument(
        "--backend",
        choices=_BUILT,
        default="tensorrt",
        help="build a TensorRT plan (default) or an aoti package (torch.export + AOTInductor)",
    )
    parser.add_argument(
        "--force", action="store_true", help="build from --onnx even if its calibration failed the accuracy gate"
    )


def main(args: argparse.Namespace) -> int:
    import torch

    from engines.backends import Candidate, open_backend

    fixed = {"force_undeployable": True} if args.force else {}
    cfg = engine_config_from_args(args, backend=args.backend, **fixed)
    if args.backend == "tensorrt":
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
