"""Sliding clip windows of T prompts, one every ``stride`` samples, without re-copying T frames.

Prompts are written into a doubled ring ``[3, 2T, H, W]`` (slot ``k % T`` and ``k % T + T``), so
the T newest prompts are always the contiguous time range ``[s, s + T)`` of the buffer and a
window is a view, not a copy. A window stays valid until the next push: the scheduler serves
(or skips) it first.
"""

from __future__ import annotations

import torch

__all__ = ["ClipWindow"]


class ClipWindow:
    """The last T prompts of one camera, with the sample numbers they came from.

    Args:
        frames: T, prompts per clip.
        stride: a window is ready every ``stride`` new prompts once T are present.
        height, width: prompt size.
        device, dtype: where the buffer lives (the engine's device).
    """

    def __init__(
        self,
        frames: int,
        stride: int,
        height: int,
        width: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be >= 1, got {frames} and {stride}")
        self.frames, self.stride = frames, stride
        self._buf = torch.zeros(3, 2 * frames, height, width, device=device, dtype=dtype)
        self.reset()

    def reset(self) -> None:
        """Drop all prompts (after a gap in the sample numbers)."""
        self._count = 0  # prompts since the last reset
        self._since_ready = 0
        self.last_seq = -1

    @property
    def filled(self) -> int:
        """How many prompts of the next window are present (0..T)."""
        return min(self._count, self.frames)

    def push(self, prompt: torch.Tensor, seq: int) -> bool:
        """Add the prompt of sample ``seq``; True when a window is ready (ending at ``seq``).

        A ``seq`` that does not follow the previous one restarts the window.
        """
        if self._count and seq != self.last_seq + 1:
            self.reset()
        slot = self._count % self.frames
        self._buf[:, slot] = prompt
        self._buf[:, slot + self.frames] = prompt
        self._count += 1
        self._since_ready += 1
        self.last_seq = seq
        if self._count >= self.frames and (self._count == self.frames or self._since_ready >= self.stride):
            self._since_ready = 0
            return True
        return False

    def will_be_ready_within(self, n: int) -> bool:
        """Whether pushing ``n`` more consecutive prompts would make another window ready."""
        if self._count + n < self.frames:
            return False
        if self._count < self.frames:
            return True
        return self._since_ready + n >= self.stride

    @property
    def first_seq(self) -> int:
        """Sample number of the oldest prompt in the current window."""
        return self.last_seq - self.frames + 1

    def clip(self) -> torch.Tensor:
        """The current window ``[3, T, H, W]``: a view into the buffer, valid until the next push."""
        start = self._count % self.frames
        return self._buf[:, start : start + self.frames]
