"""The live VMP stage: one motion prompt per new frame, computed once, on the engine's device.

Each prompt depends only on frames t and t+1 (VMP paper; docs/model.md#vmp-streaming), so the stage
keeps the previous frame's grey level and calls the same maths as the batch layer
(:func:`emim_stream.engines.layers.vmp.grey_level`, :func:`attention_from_grey`, :func:`motion_prompt`). A window of
T streamed
prompts therefore equals :class:`emim_stream.engines.layers.vmp.VmpLayer` applied to the same T+1 raw frames.
Without VMP parameters (public UniFormer / EMIM weights) the stage passes the normalised frame
through.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.layers.vmp import VmpLayer, attention_from_grey, grey_level, motion_prompt
from emim_stream.engines.transforms import MEAN, STD, normalise

__all__ = ["VmpStage"]


class VmpStage:
    """Turns consecutive uint8 frames into prompts ``[3, H, W]`` on ``device``.

    Args:
        vmp: the checkpoint's VMP layer, or None to pass normalised frames through.
        device: where prompts are computed (the engine's device).
        mean, std: the model's input normalisation (VMP de-normalises with the same values,
            so they must be equal across channels when VMP is used).
        dtype: prompt dtype.
    """

    def __init__(
        self,
        vmp: VmpLayer | None,
        device: torch.device | str = "cpu",
        mean: Sequence[float] = (MEAN,) * 3,
        std: Sequence[float] = (STD,) * 3,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype
        self.enabled = vmp is not None
        if vmp is not None:
            if (
                len(set(self.mean)) != 1
                or len(set(self.std)) != 1
                or (self.mean[0], self.std[0]) != (vmp.mean, vmp.std)
            ):
                raise ConfigError(
                    f"VMP de-normalises with mean {vmp.mean} / std {vmp.std}; the clip normalisation "
                    f"{self.mean} / {self.std} must be the same on every channel"
                )
            self._m = vmp.m.detach().to(self.device)
            self._n = vmp.n.detach().to(self.device)
            self._grey = vmp.grey
        self._prev_grey: torch.Tensor | None = None
        self._prev_seq = -2

    def reset(self) -> None:
        """Forget the previous frame (the next frame starts a new window)."""
        self._prev_grey, self._prev_seq = None, -2

    @torch.no_grad()
    def push(self, frame: np.ndarray | torch.Tensor, seq: int) -> torch.Tensor | None:
        """Add frame ``seq`` (uint8 RGB ``[H, W, 3]``); return its prompt, or None after a gap.

        The first frame, and the first frame after a gap in ``seq``, only serve as the reference
        for the next one: they return None.
        """
        x = torch.as_tensor(frame).to(self.device, non_blocking=True)
        x = normalise(x, self.mean, self.std, self.dtype)[None]
        contiguous = seq == self._prev_seq + 1
        self._prev_seq = seq
        if not self.enabled:
            first = self._prev_grey is None or not contiguous
            self._prev_grey = x  # only its presence matters here
            return None if first else x[0]
        g = grey_level(x, self._grey, self.mean[0], self.std[0])
        g_prev, self._prev_grey = self._prev_grey, g
        if g_prev is None or not contiguous:
            return None
        return motion_prompt(attention_from_grey(g_prev, g, self._m, self._n), x)[0]
