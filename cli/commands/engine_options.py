"""The engine options that ``build-engine``, ``bench`` and ``doctor`` share: they fill an EngineConfig.

Not a command itself (:data:`emim_stream.cli.main.COMMANDS` does not list it).
"""

from __future__ import annotations

import argparse

from emim_stream.engines.backends.base import Backend, EngineConfig, Precision, read_engine_section

__all__ = ["add_engine_arguments", "engine_config_from_args"]


def add_engine_arguments(parser: argparse.ArgumentParser, backend: bool = True) -> None:
    """Options that fill an EngineConfig; each overrides the config file's ``engine:`` section.

    ``backend=False`` leaves ``--backend`` to the command (its own choices).
    """
    parser.add_argument("--config", help="a pipeline config file; its engine: section is the base")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="an emim-stream checkpoint file")
    src.add_argument("--model", help="a registry name with untrained (seeded) weights, e.g. emim_s")
    if backend:
        parser.add_argument(
            "--backend", choices=[b.value for b in Backend], help="backend (default: the config's, else auto)"
        )
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=[p.value for p in Precision])
    parser.add_argument("--max-batch", type=int, help="largest batch per inference call")
    parser.add_argument("--frames", type=int, help="clip length T (default: the model's)")
    parser.add_argument("--size", type=int, help="square clip size H = W (default: the model's)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch / onnxruntime (0 = default)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch: torch.compile the model")
    parser.add_argument("--cuda-graphs", action="store_true", default=None, help="torch / tensorrt: CUDA graphs")
    parser.add_argument("--kernel", help="EMIM kernel for torch / aoti: reference, triton or auto (default)")
    parser.add_argument("--onnx", help="a ready ONNX (e.g. a Q/DQ graph from calibration) instead of exporting")
    parser.add_argument("--cache-dir", help="ONNX / plan / package cache directory (default ~/.cache/emim-stream)")


def engine_config_from_args(args: argparse.Namespace, **fixed: object) -> EngineConfig:
    """The EngineConfig of the config file (if any) with the command-line options applied, then ``fixed``.

    Raises:
        ConfigError: an invalid value or an unknown key in the file.
    """
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
