"""``emim-stream import-weights``: published UniFormer / EMIM weights -> an emim-stream checkpoint."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emim_stream.engines.clip import ClipSampling

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
    sampling = parser.add_argument_group(
        "clip sampling", "how the training clips were sampled (default: the published configuration for k400 "
        "8/16/32 frames and ssv2 16/32 frames; none recorded otherwise)",
    )
    sampling.add_argument("--frame-interval", type=int, default=None, metavar="N",
                          help="source frames between sampled frames (the 4 of 16x4)")
    sampling.add_argument("--fps", type=float, default=None,
                          help="frame rate of the training videos the interval counts in (e.g. 30)")
    sampling.add_argument("--span", type=float, default=None, metavar="SECONDS",
                          help="uniformly sampled models: the seconds the clip's frames spread over")


def main(args: argparse.Namespace) -> int:
    """Import, report how the keys fitted, and say how to use the result; exit 0."""
    from emim_stream.engines.checkpoints.import_weights import import_weights

    result = import_weights(args.src, args.model, args.labels, args.out, args.frames, args.size, _sampling(args))
    clip = result.clip
    print(
        f"wrote {result.out}: {result.model}, {len(result.labels)} classes ({args.labels}), "
        f"clip {clip.frames}x{clip.height}x{clip.width}, weights {result.weights_sha256[:12]}"
    )
    print(f"sampling: {clip.describe_sampling()}")
    if clip.sampling is None:
        _log.warning(
            "no clip sampling recorded (no published configuration for %s with %d frames): cameras feed it "
            "consecutive frames; state it with --frame-interval and --fps, or --span",
            args.labels, clip.frames,
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


def _sampling(args: argparse.Namespace) -> ClipSampling | None:
    """The :class:`ClipSampling` the options state, or None (the published one, if any, applies).

    Raises:
        ConfigError: ``--fps`` without ``--frame-interval`` and vice versa, or ``--span`` with either.
    """
    from emim_stream.engines.clip import ClipSampling
    from emim_stream.engines.errors import ConfigError

    if args.frame_interval is None and args.fps is None and args.span is None:
        return None
    if args.span is not None:
        if args.frame_interval is not None or args.fps is not None:
            raise ConfigError("--span (uniform sampling) excludes --frame-interval and --fps")
        return ClipSampling(span_s=args.span)
    if args.frame_interval is None or args.fps is None:
        raise ConfigError("--frame-interval and --fps go together (the interval counts frames at that rate)")
    return ClipSampling(frame_interval=args.frame_interval, fps=args.fps)
