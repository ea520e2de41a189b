"""Post-processing of logits: softmax, optional smoothing over a camera's windows, top-k."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Postprocessor"]


class Postprocessor:
    """Turns one camera's logits into top-k ``(label, score)`` pairs.

    Args:
        labels: class names in logit order.
        topk: how many labels to keep.
        smoothing: exponential smoothing factor of the scores over successive windows
            (``s = smoothing * s_prev + (1 - smoothing) * p``); 0 disables it.
    """

    def __init__(self, labels: Sequence[str], topk: int = 3, smoothing: float = 0.0) -> None:
        self.labels = tuple(labels)
        self.topk = min(topk, len(self.labels))
        self.smoothing = smoothing
        self._state: torch.Tensor | None = None

    @property
    def scores(self) -> list[float]:
        """The last window's probabilities (smoothed) in label order; empty before the first window."""
        return [] if self._state is None else self._state.tolist()

    def reset(self) -> None:
        """Forget the smoothing state (after a gap in the stream)."""
        self._state = None

    def __call__(self, logits: torch.Tensor) -> list[tuple[str, float]]:
        """``logits``: ``[classes]`` of one window -> top-k labels with probabilities, best first."""
        probs = torch.softmax(logits.detach().float().cpu(), dim=-1)
        if self.smoothing and self._state is not None:
            probs = self.smoothing * self._state + (1.0 - self.smoothing) * probs
        self._state = probs
        scores, idx = probs.topk(self.topk)
        return [(self.labels[i], round(float(s), 6)) for s, i in zip(scores.tolist(), idx.tolist(), strict=True)]
