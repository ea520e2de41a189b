"""``emim-stream train``: train or fine-tune a model (VMP layer + backbone) on clips; resumable."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
import threading
from pathlib import Path

from emim_stream.cli.commands.common import Progress
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.training.config import TrainConfig
from emim_stream.engines.transforms import RESIZE_METHODS

HELP = "train or fine-tune a model on synthetic clips, a class-per-folder video set or a list file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="emim_xs", help="registry name (default: emim_xs)")
    parser.add_argument(
        "--data", required=True,
        help="training data: synthetic://?split=train&n=3600[&window=any&fresh=1], a folder DIR/<class>/<video>, "
        "or a list file of '<video path> <label>' lines",
    )
    parser.add_argument("--val-data", default=None,
                        help="validation data (default: synthetic val split, or --val-fraction of the videos)")
    parser.add_argument("--epochs", type=int, required=True, help="training epochs")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (after every epoch)")
    parser.add_argument(
        "--init", default=None,
        help="initial weights: public UniFormer/EMIM (2-D inflated or 3-D) or an emim-stream checkpoint",
    )
    parser.add_argument("--frames", type=int, default=None, help="clip length T (default: the model's)")
    parser.add_argument("--size", type=int, default=None,
                        help="square input size, a multiple of 32 (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="default %(default)s")
    parser.add_argument(
        "--lr", type=float, default=TrainConfig.lr, help="peak learning rate (AdamW), default %(default)s"
    )
    parser.add_argument(
        "--min-lr", type=float, default=TrainConfig.min_lr,
        help="learning rate at the end of the cosine decay, default %(default)s",
    )
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay, help="default %(default)s")
    parser.add_argument(
        "--warmup-epochs", type=float, default=TrainConfig.warmup_epochs,
        help="linear warm-up length in epochs, default %(default)s",
    )
    parser.add_argument("--vmp", action=argparse.BooleanOptionalAction, default=TrainConfig.vmp,
                        help="train a VMP layer in front of the backbone (default: on)")
    parser.add_argument(
        "--vmp-lambda", type=float, default=TrainConfig.vmp_lambda,
        help="weight of the VMP regulariser, default %(default)s",
    )
    parser.add_argument("--vmp-init", default=None, metavar="M,N",
                        help="initial VMP m,n, also over --init's (default: N(1e-5, 1) draws, or --init's); "
                        "0,0.168 = slope 50, shift 0.1 (motion-only); 0,0 = slope 50, shift 0 (signed)")
    parser.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                        help="share of each class held out for validation (video data without --val-data)")
    parser.add_argument(
        "--val-n", type=int, default=TrainConfig.val_n, help="synthetic validation clips (default %(default)s)"
    )
    parser.add_argument("--resize", default=TrainConfig.method, choices=RESIZE_METHODS,
                        help="frame resize method; use the camera's (default: %(default)s)")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="architecture argument, e.g. emim=false or temporal_stride=2 (repeatable)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="default %(default)s")
    parser.add_argument("--augment", action="store_true",
                        help="show each training clip mirrored, transposed and/or reversed at random, with the label "
                        "of the motion it then shows (the nine synthetic motions only)")
    parser.add_argument("--cache-clips", nargs="?", const="", default=None, metavar="DIR",
                        help="render the training clips once (with --workers processes) into DIR "
                        "(default: the user cache's clips/) and read them from there every epoch; not with fresh=1")
    parser.add_argument(
        "--workers", type=int, default=TrainConfig.workers, help="data-loading worker processes (default %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is faster on a CPU shared with other jobs)")
    parser.add_argument("--resume", action="store_true", help="continue the run from <out>.resume")
    parser.add_argument(
        "--log-every", type=int, default=TrainConfig.log_every, help="progress line every N steps (default %(default)s)"
    )
    parser.add_argument(
        "--save-every", type=int, default=TrainConfig.save_every,
        help="write the resume file every N steps (default %(default)s)",
    )


def parse_model_args(items: list[str]) -> dict[str, object]:
    """``['emim=false', 'depths=1,1,2,2']`` -> ``{'emim': False, 'depths': (1, 1, 2, 2)}``.

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-arg {item!r} must look like KEY=VALUE, e.g. emim=false")
        values = [_value(v) for v in text.split(",")]
        out[key] = tuple(values) if "," in text else values[0]
    return out


def _pair(text: str | None, option: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        m, n = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r} must be two numbers M,N, e.g. 0,0.168") from None
    return m, n


def _cache_folder(text: str | None) -> Path | None:
    """``--cache-clips``: absent -> None; given without DIR -> the user cache's ``clips/``; else DIR."""
    if text is None:
        return None
    if text:
        return Path(text)
    from emim_stream.engines.backends.engine_cache import default_cache_dir

    return default_cache_dir() / "clips"


def _value(text: str) -> object:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(args: argparse.Namespace) -> int:
    import torch

    from emim_stream.engines.training.train import TrainInterrupted, train

    if args.threads:
        torch.set_num_threads(args.threads)

    as_given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    cfg = TrainConfig(**{
        **as_given,  # the options named as TrainConfig's fields
        "overrides": parse_model_args(args.model_arg),
        "vmp_init": _pair(args.vmp_init, "--vmp-init"),
        "method": args.resize,
        "cache_clips": _cache_folder(args.cache_clips),
        "command": shlex.join(["emim-stream", *sys.argv[1:]]),
    })  # fmt: skip
    progress = Progress("training steps")
    stop = threading.Event()

    def on_sigint(*_: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        stop.set()
        print("\nstopping after this step to save the resume file (Ctrl-C again: stop now, unsaved)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = train(cfg, on_step=lambda step: progress(step.global_step, step.total_steps), stop=stop)
    except TrainInterrupted as stopped:
        resume = cfg.command if "--resume" in sys.argv[1:] else f"{cfg.command} --resume"
        print(
            f"interrupted at epoch {stopped.epoch} step {stopped.step_in_epoch}/{stopped.steps_per_epoch}; "
            f"saved {stopped.resume_file}\ncontinue with:\n  {resume}",
            flush=True,
        )
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.val is not None:
        print(result.val.report())
    minutes = result.train_seconds / 60
    print(f"wrote {result.out} (weights {result.weights_sha256[:12]}) after {minutes:.1f} min of training")
    return 0
