"""``emim-stream export``: a model to ONNX (only the batch dynamic), op-audited and checked with ONNX Runtime."""

from __future__ import annotations

import argparse

from emim_stream.cli.commands.common import Progress

HELP = "export a checkpoint or model to ONNX (standard ops only), audit its ops, verify with ONNX Runtime"

# Largest ONNX Runtime vs torch error accepted by the verification, relative to the largest logit.
_TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


def _batch(value: str) -> int | None:
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes a positive integer or 'dynamic', got {value!r}") from None
    if batch < 1:
        raise argparse.ArgumentTypeError(f"--batch must be >= 1, got {batch}")
    return batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an emim-stream checkpoint file")
    src.add_argument("--model", help="a registry name with untrained (seeded) weights, e.g. emim_s")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--batch", type=_batch, default=None, help="a fixed batch size, or 'dynamic' (default)")
    parser.add_argument("--half", action="store_true", help="float16 graph and input (LayerNorm, softmax in fp32)")
    parser.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy", help="torch.onnx exporter")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    parser.add_argument("--frames", type=int, help="clip length T (default: the checkpoint's / model's)")
    parser.add_argument("--size", type=int, help="square clip size H = W (default: the checkpoint's / model's)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime comparison")


def main(args: argparse.Namespace) -> int:
    import torch

    from emim_stream.engines.backends import EngineConfig
    from emim_stream.engines.backends.model_source import load_source
    from emim_stream.engines.errors import ExportError
    from emim_stream.engines.export.onnx import DEFAULT_OPSET, export_onnx, verify_onnx

    cfg = EngineConfig(
        checkpoint=args.checkpoint, model=args.model, frames=args.frames, height=args.size, width=args.size
    )
    steps = 2 if args.no_verify else 3
    progress = Progress("export")
    progress.step(1, steps, f"loading {args.checkpoint or args.model}")
    source = load_source(cfg)
    clip = (source.clip.frames, source.clip.height, source.clip.width)
    progress.step(2, steps, f"exporting with the {args.exporter} exporter and auditing the ops")
    report = export_onnx(
        source.model,
        clip,
        args.out,
        batch=args.batch,
        half=args.half,
        exporter=args.exporter,
        opset=args.opset or DEFAULT_OPSET,
    )
    size_mib = report.path.stat().st_size / 2**20
    print(f"wrote     {report.path} ({size_mib:.1f} MiB, sha256 {report.sha256[:16]}, {report.seconds:.1f} s)")
    print(f"model     {source.model_name} ({source.weights})")
    print(f"input     video {list(report.input_shape)} {report.dtype}; output logits [batch, {len(source.labels)}]")
    print(f"exporter  {report.exporter}, opset {report.opset}")
    print(report.audit.summary())
    if args.no_verify:
        return 0
    dtype = torch.float16 if args.half else torch.float32
    clips = torch.randn(args.batch or 2, 3, *clip, generator=torch.Generator().manual_seed(1)).to(dtype)
    progress.step(3, steps, "verifying with ONNX Runtime")
    abs_err, rel_err = verify_onnx(report.path, source.model, clips)
    limit = _TOLERANCE[report.dtype]
    verdict = "ok" if rel_err <= limit else "FAILED"
    n = clips.shape[0]
    print(f"verify    onnxruntime vs torch on {n} clips: max abs {abs_err:.2e}, rel {rel_err:.2e} ({verdict})")
    if rel_err > limit:
        raise ExportError(f"ONNX Runtime output differs from torch by {rel_err:.2e} (relative; limit {limit:.0e})")
    return 0
