"""``emim-stream info``: a model's architecture, parameters and multiply-accumulates per clip."""

from __future__ import annotations

import argparse

HELP = "print a model's parameters and multiply-accumulates (MACs) per clip"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registry name, e.g. emim_s, uniformer_s, emim_xs")
    src.add_argument("--checkpoint", help="an emim-stream checkpoint file")
    parser.add_argument("--classes", type=int, default=None, help="classifier size (default: the model's)")
    parser.add_argument("--frames", type=int, default=None, help="clip length T (default: the model's)")
    parser.add_argument("--size", type=int, default=None, help="square input size (default: the model's)")


def main(args: argparse.Namespace) -> int:
    from emim_stream.engines.checkpoints.io import load_checkpoint
    from emim_stream.engines.diagnostics.flops import count_cost
    from emim_stream.engines.layers.blocks import EmimAttention
    from emim_stream.engines.models import build_model, get_model_cfg

    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        model, name = ck.model, f"{ck.model_name} ({ck.path})"
        _, T, H, W = 3, ck.clip.frames, ck.clip.height, ck.clip.width
        vmp = "learned" if ck.vmp is not None else "none (frames pass through)"
    else:
        model, name = build_model(args.model, args.classes), args.model
        _, T, H, W = get_model_cfg(args.model).input_size
        vmp = "-"
    T = args.frames or T
    H = W = args.size or H
    cost = count_cost(model, (3, T, H, W))
    emim = [m for m in model.modules() if isinstance(m, EmimAttention)]
    print(f"model           {name}")
    print(f"input           3 x {T} x {H} x {W} (C x T x H x W), normalised mean 0.45 / std 0.225")
    print(f"classes         {model.num_classes}")
    print(f"temporal stride {model.temporal_stride}")
    print(f"EMIM layers     {len(emim)}" + (f" (kernel {emim[0].kernel})" if emim else ""))
    print(f"VMP             {vmp}")
    print(f"parameters      {cost.params:,}")
    print(f"MACs per clip   {cost.macs / 1e9:.2f} G (EMIM window products {cost.emim_window_macs / 1e9:.2f} G)")
    return 0
