"""``emim-stream evaluate``: top-1, per-class accuracy and confusion matrix of a checkpoint on a clip set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emim_stream.cli.commands.common import Progress
from emim_stream.engines.transforms import RESIZE_METHODS

HELP = "evaluate a checkpoint on held-out clips: top-1, per-class accuracy, confusion matrix"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="an emim-stream checkpoint")
    parser.add_argument(
        "--data", default="synthetic://?split=test&n=900",
        help="clips: synthetic://?split=test&n=900 (default), a folder DIR/<class>/<video> or a list file",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is faster on a CPU shared with other jobs)")
    parser.add_argument("--resize", default=None, choices=RESIZE_METHODS,
                        help="frame resize method (default: the one the checkpoint was trained with, else area)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")


def main(args: argparse.Namespace) -> int:
    import torch

    from emim_stream.engines.checkpoints.io import load_checkpoint
    from emim_stream.engines.data.datasets import open_dataset
    from emim_stream.engines.training.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    method = args.resize or ck.extra.get("training", {}).get("method", "area")
    clip = ck.clip
    dataset = open_dataset(
        args.data, clip.frames + 1, clip.height, clip.width, train=False, labels=ck.labels, method=method,
        default_split="test", default_n=900,
    )
    print(f"checkpoint {ck.path} ({ck.model_name}, VMP {'on' if ck.vmp is not None else 'off'})")
    print(f"data       {dataset.describe()}")
    result = evaluate(
        ck.model, ck.vmp, dataset, clip, args.batch_size, args.workers, ck.labels,
        progress=Progress("evaluating clips"),
    )
    print(result.report())
    if args.json is not None:
        record = {"checkpoint": str(ck.path), "weights_sha256": ck.weights_sha256, "data": args.data,
                  "data_description": dataset.describe(), **result.as_dict()}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0
