"""Top-1 accuracy and the confusion matrix of a model (VMP layer + backbone) on a clip data set."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from emim_stream.engines.clip import ClipSpec
from emim_stream.engines.data.datasets import ClipDataset
from emim_stream.engines.layers.vmp import VmpLayer, clip_inputs

__all__ = ["EvalResult", "evaluate", "forward_clips"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Counts of one evaluation. ``confusion[i, j]``: clips of class i predicted as class j."""

    labels: tuple[str, ...]
    confusion: np.ndarray
    seconds: float

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        """Fraction of clips whose top-scoring class is their label."""
        return float(np.trace(self.confusion) / max(self.n, 1))

    @property
    def per_class(self) -> dict[str, float]:
        """Recall of each class that has clips (NaN for a class without clips)."""
        totals = self.confusion.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.diag(self.confusion) / totals
        return {name: float(r) for name, r in zip(self.labels, recall, strict=True)}

    def report(self) -> str:
        """Top-1, per-class accuracy and the confusion matrix as text (rows: true class, columns: predicted)."""
        width = max(len(name) for name in self.labels) + 4
        lines = [f"top-1 {100 * self.top1:.2f}% on {self.n} clips ({self.seconds:.1f} s)", "", "per-class accuracy:"]
        for name, acc, count in zip(self.labels, self.per_class.values(), self.confusion.sum(1), strict=True):
            lines.append(f"  {name:<{width}} {100 * acc:6.1f}%  ({count} clips)")
        lines += ["", "confusion (rows: true class, columns: predicted class, numbered as the rows):"]
        lines.append(" " * (width + 2) + "".join(f"{j:>5}" for j in range(len(self.labels))))
        for i, (name, row) in enumerate(zip(self.labels, self.confusion, strict=True)):
            lines.append(f"  {f'{i} {name}':<{width}}" + "".join(f"{int(c):>5}" for c in row))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "top1": self.top1,
            "clips": self.n,
            "per_class": self.per_class,
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
        }


def forward_clips(
    model: nn.Module, vmp: VmpLayer | None, clips: torch.Tensor, clip: ClipSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of uint8 clips of T+1 frames, as the pipeline computes them.

    Args:
        model: the backbone (takes T frames).
        vmp: the VMP layer, or None: the backbone then sees the last T normalised frames, as the
            pipeline's pass-through VMP stage gives it.
        clips: ``[B, T+1, H, W, 3]`` uint8 RGB.
        clip: the checkpoint's clip spec (its normalisation).

    Returns:
        ``(logits [B, classes], reg)``: ``reg`` is the VMP regulariser (0 without VMP).
    """
    x, reg = clip_inputs(clips, vmp, clip.mean, clip.std)
    return model(x), reg


@torch.no_grad()
def evaluate(
    model: nn.Module,
    vmp: VmpLayer | None,
    dataset: ClipDataset,
    clip: ClipSpec,
    batch_size: int = 16,
    workers: int = 0,
    labels: Sequence[str] | None = None,
    log_every_s: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Classify every clip of ``dataset`` and count the outcomes (the model is left in eval mode).

    Args:
        model, vmp: as :func:`forward_clips`.
        dataset: clips whose labels index ``labels``.
        clip: the checkpoint's clip spec (its normalisation).
        batch_size, workers: data loading.
        labels: label names (default: the data set's).
        log_every_s: progress log interval, seconds.
        progress: called with (clips done, total) after each batch.
    """
    labels = tuple(labels or dataset.labels)
    model.eval()
    if vmp is not None:
        vmp.eval()
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    start = last_log = time.monotonic()
    done = 0
    for clips, target in loader:
        logits, _ = forward_clips(model, vmp, clips, clip)
        np.add.at(confusion, (target.numpy(), logits.argmax(1).numpy()), 1)
        done += len(target)
        if progress is not None:
            progress(done, len(dataset))
        if time.monotonic() - last_log >= log_every_s:
            last_log = time.monotonic()
            _log.info("evaluated %d/%d clips (%.1f%% so far)", done, len(dataset), 100 * np.trace(confusion) / done)
    return EvalResult(labels, confusion, time.monotonic() - start)
