"""``emim-stream import-weights``: published UniFormer / EMIM weights -> an emim-stream checkpoint."""

from __future__ import annotations

import argparse
import logging

HELP = "turn published UniFormer / EMIM weights into a checkpoint that run, evaluate and export accept"

_log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emim-stream import-weights``."""
    parser.add_argument("src", metavar="SRC", help="the published file, e.g. uniformer_small_k400_16x4.pth")
    parser.add_argument(
        "--model", required=True, help="the architecture it was trained as: uniformer_s, uniformer_b, emim_s, emim_b"
    )
    parser.add_argument(
        "--labels", required=True, metavar="k400|ssv2|FILE",
        help="label names in logit order: a shipped map (k400, ssv2) or a file with one name per line",
    )
    parser.add_argument("--out", required=True, metavar="CK.pt", help="the checkpoint to write")
    parser.add_argument("--frames", type=int, default=None, help="clip length T (default: the model's, 16)")
    parser.add_argument("--size", type=int, default=None, help="square clip size, a multiple of 32 (default 224)")


def main(args: argparse.Namespace) -> int:
    """Import, report how the keys fitted, and say how to use the result; exit 0."""
    from emim_stream.engines.checkpoints.import_weights import import_weights

    result = import_weights(args.src, args.model, args.labels, args.out, args.frames, args.size)
    clip = result.clip
    print(
        f"wrote {result.out}: {result.model}, {len(result.labels)} classes ({args.labels}), "
        f"clip {clip.frames}x{clip.height}x{clip.width}, weights {result.weights_sha256[:12]}"
    )
    print(f"keys: {result.report.summary()}")
    if result.report.missing:
        _log.warning(
            "%d weights were not in %s and keep their initial values (e.g. EMIM's motion MLP when the file is "
            "UniFormer's): labels are not the published model's until it is fine-tuned (train --init %s)",
            len(result.report.missing), args.src, result.out,
        )
    print(f"run it:  emim-stream run --set engine.checkpoint={result.out}")
    return 0
