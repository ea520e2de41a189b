"""Video Motion Prompts (VMP): a learned, differentiable frame-difference attention.

From "Motion meets Attention: Video Motion Prompts" (Chen et al., ACML 2024). T+1 normalised
frames in, T prompts out: ``Z_t = sigmoid(a(m) * (D_t - b(n))) * X_{t+1}`` where ``D_t`` is the
signed grey-level difference of frames t+1 and t on the de-normalised [0, 1] scale.
docs/model.md#vmp is the contract.

Deviation from the released code (docs/model.md#decision-grey-weights): the grey weights are
the standard RGB ones (0.299, 0.587, 0.114) by default, and a setting.

The maths lives once, in :func:`grey_level`, :func:`attention_from_grey` and :func:`motion_prompt`;
the batch layer and the live streaming stage (emim_stream.pipeline.inference.vmp_stage, which computes each frame's grey
level once and keeps it for the next step) both call them, so a streamed window equals the batch
layer on the same T+1 raw frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from emim_stream.engines.transforms import MEAN, STD

ALPHA, BETA, GAMMA, EPS = 5.0, 0.45, 0.6, 0.1
RGB_GREY = (0.299, 0.587, 0.114)

__all__ = [
    "RGB_GREY",
    "VmpLayer",
    "attention_from_grey",
    "grey_level",
    "motion_attention",
    "motion_prompt",
    "normalisation_for",
    "slope_shift",
]


def slope_shift(m: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The slope ``a = alpha / (beta |tanh m| + eps)`` (9.09..50) and shift ``b = gamma tanh n`` (-0.6..0.6)."""
    return ALPHA / (BETA * torch.tanh(m).abs() + EPS), GAMMA * torch.tanh(n)


def grey_level(frames: torch.Tensor, grey: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """Grey level in [0, 1] of normalised frames ``[B, 3, ...]`` (channel dim 1) -> ``[B, ...]``.

    De-normalises (``x * std + mean``) and weights the channels. Written as elementwise operations
    so each frame's result is the same whether it is computed alone or in a clip.
    """
    w = grey.tolist()
    x = frames * std + mean
    return x[:, 0] * w[0] + x[:, 1] * w[1] + x[:, 2] * w[2]


def attention_from_grey(g_prev: torch.Tensor, g_cur: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``A = sigmoid(a(m) * (g_cur - g_prev - b(n)))`` from grey levels of consecutive frames."""
    a, b = slope_shift(m.to(g_cur.dtype), n.to(g_cur.dtype))
    return torch.sigmoid(a * (g_cur - g_prev - b))


def motion_attention(
    prev: torch.Tensor,
    cur: torch.Tensor,
    m: torch.Tensor,
    n: torch.Tensor,
    grey: torch.Tensor,
    mean: float = MEAN,
    std: float = STD,
) -> torch.Tensor:
    """Attention map ``A = sigmoid(a (g(cur) - g(prev) - b))`` of consecutive normalised frames.

    Args:
        prev, cur: normalised frames ``[B, 3, ...]`` (channel dim 1; any trailing dims, e.g.
            ``[B, 3, H, W]`` for one step or ``[B, 3, T, H, W]`` for a clip).
        m, n: the VMP scalars (shape ``[1]``).
        grey: ``[3]`` channel weights for the grey conversion.
        mean, std: the normalisation to undo (frames are de-normalised to [0, 1] first).

    Returns:
        ``A`` with the channel dim removed: ``[B, ...]``.
    """
    return attention_from_grey(grey_level(prev, grey, mean, std), grey_level(cur, grey, mean, std), m, n)


def motion_prompt(attn: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """The prompt ``Z = A * X_cur`` on every channel of the normalised frame ``cur`` ``[B, 3, ...]``."""
    return attn.unsqueeze(1) * cur


class VmpLayer(nn.Module):
    """Batch VMP layer: ``[B, 3, T+1, H, W]`` normalised frames -> ``[B, 3, T, H, W]`` prompts.

    Args:
        grey_weights: channel weights of the grey conversion, in the clip's channel order.
        mean, std: the normalisation of the incoming frames (all channels).
    """

    grey: torch.Tensor

    def __init__(self, grey_weights: Sequence[float] = RGB_GREY, mean: float = MEAN, std: float = STD) -> None:
        super().__init__()
        if len(grey_weights) != 3:
            raise ValueError(f"grey_weights needs 3 values, got {list(grey_weights)}")
        self.m = nn.Parameter(torch.empty(1))
        self.n = nn.Parameter(torch.empty(1))
        self.register_buffer(
            "grey", torch.tensor([float(w) for w in grey_weights], dtype=torch.float64), persistent=False
        )
        self.mean, self.std = float(mean), float(std)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``m, n ~ N(1e-5, 1)`` as in the reference code."""
        nn.init.normal_(self.m, mean=1e-5, std=1.0)
        nn.init.normal_(self.n, mean=1e-5, std=1.0)

    def attention(self, frames: torch.Tensor) -> torch.Tensor:
        """Attention maps ``[B, T, H, W]`` of the T+1 frames ``[B, 3, T+1, H, W]``."""
        return motion_attention(frames[:, :, :-1], frames[:, :, 1:], self.m, self.n, self.grey, self.mean, self.std)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts and the temporal-variation regulariser.

        Args:
            frames: ``[B, 3, T+1, H, W]`` normalised (T >= 1).

        Returns:
            ``(prompts [B, 3, T, H, W], reg)`` where ``reg = mean((A_{t+1} - A_t)^2)`` (a scalar;
            0 when T == 1). Training adds ``lambda * reg`` to its loss.
        """
        if frames.dim() != 5 or frames.shape[1] != 3 or frames.shape[2] < 2:
            raise ValueError(f"VMP needs frames [B, 3, T+1>=2, H, W], got {tuple(frames.shape)}")
        attn = self.attention(frames)
        prompts = motion_prompt(attn, frames[:, :, 1:])
        reg = (attn[:, 1:] - attn[:, :-1]).pow(2).mean() if attn.shape[1] > 1 else attn.new_zeros(())
        return prompts, reg

    def extra_repr(self) -> str:
        a, b = slope_shift(self.m.detach(), self.n.detach())
        grey = ", ".join(f"{w:.3f}" for w in self.grey.tolist())
        return f"slope={a.item():.3g}, shift={b.item():.3g}, grey=({grey})"

    def settings(self) -> dict[str, object]:
        """What a checkpoint stores beside ``m``/``n`` to rebuild this layer."""
        return {"grey_weights": [float(w) for w in self.grey.tolist()], "mean": self.mean, "std": self.std}


def normalisation_for(vmp: VmpLayer | None) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` per channel of the frames the VMP stage gets: the VMP layer's own, else ``MEAN`` / ``STD``.

    VMP de-normalises with its own scalars, so its frames must be normalised with them on every
    channel; the runtime's VMP stage and calibration both take the normalisation from here.
    """
    if vmp is not None:
        return (vmp.mean,) * 3, (vmp.std,) * 3
    return (MEAN,) * 3, (STD,) * 3
