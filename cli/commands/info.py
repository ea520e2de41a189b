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
        T, H, W, mean, std = ck.clip.frames, ck.clip.height, ck.clip.width, ck.clip.mean, ck.clip.std
        vmp = "learned" if ck.vmp is not None else "none (frames pass through)"
        sampling = ck.clip.describe_sampling()
    else:
        model, name = build_model(args.model, args.classes), args.model
        cfg = get_model_cfg(args.model)
        _, T, H, W = cfg.input_size
        mean, std = cfg.mean, cfg.std
        vmp = sampling = "-"
    T = args.frames or T
    H = W = args.size or H
    cost = count_cost(model, (3, T, H, W))
    emim = [m for m in model.modules() if isinstance(m, EmimAttention)]
    print(f"model           {name}")
    print(f"input           3 x {T} x {H} x {W} (C x T x H x W), normalised mean {_values(mean)} / std {_values(std)}")
    print(f"sampling        {sampling}")
    print(f"classes         {model.num_classes}")
    print(f"temporal stride {model.temporal_stride}")
    print(f"EMIM layers     {len(emim)}" + (f" (kernel {emim[0].kernel})" if emim else ""))
    print(f"VMP             {vmp}")
    print(f"parameters      {cost.params:,}")
    print(f"MACs per clip   {cost.macs / 1e9:.2f} G (EMIM window products {cost.emim_window_macs / 1e9:.2f} G)")
    return 0


def _values(values: tuple[float, ...]) -> str:
    """``0.45`` for equal channels, else ``(0.485, 0.456, 0.406)``."""
    return f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"
