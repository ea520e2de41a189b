"""Building blocks of the UniFormer video backbone and its EMIM attention.

UniFormer: "UniFormer: Unified Transformer for Efficient Spatiotemporal Representation
Learning" (Li et al., ICLR 2022). EMIM replaces the global attention of some SABlocks by
:class:`EmimAttention` (docs/model.md#backbone, docs/model.md#emim). Module and parameter names match the
public checkpoints (docs/model.md#checkpoint-keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emim_stream.engines.layers.neighborhood import WINDOW, emim_neighborhood, resolve_kernel

__all__ = [
    "Attention",
    "CBlock",
    "CMlp",
    "DropPath",
    "EmimAttention",
    "Mlp",
    "PatchEmbed3d",
    "QuickGELU",
    "SABlock",
]

Size3d = tuple[int, int, int]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (EMIM's motion MLP uses it, not nn.GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed3d(nn.Module):
    """Conv3d patchify, then LayerNorm over channels (eps 1e-5). ``[B, Cin, T, H, W] -> [B, C, T', H', W']``."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        kernel: Size3d,
        stride: Size3d,
        padding: Size3d = (0, 0, 0),
    ) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_dim, dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class CMlp(nn.Module):
    """Pointwise-conv MLP of a CBlock: 1x1x1 conv C->4C, GELU, 1x1x1 conv 4C->C."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Mlp(nn.Module):
    """Token MLP of an SABlock: Linear C->4C, GELU, Linear 4C->C."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CBlock(nn.Module):
    """UniFormer's local block (stages 1-2): depthwise 5x5x5 "attention" between 1x1x1 convs.

    Args:
        dim: channels C.
        mlp_ratio: MLP hidden width over C.
        drop_path: stochastic depth rate of this block.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm3d(dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.attn = nn.Conv3d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = CMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Attention(nn.Module):
    """Global multi-head self-attention over all T*H*W tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: Size3d) -> torch.Tensor:
        """``x``: tokens ``[B, N, C]`` ordered (t, h, w); ``size`` = (T, H, W) is unused here."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class EmimAttention(nn.Module):
    """EMIM attention: next-frame 7x7 local attention plus a motion branch on its raw logits.

    ``out = proj(F + M)`` where ``F = softmax(A) V`` is the context branch and
    ``M = motion_conv(A)`` maps each head's 49 logits to the head width with one MLP shared by all
    heads (docs/model.md#motion-branch). ``motion_conv``'s second Linear starts at zero, so M = 0 at init.

    Args:
        dim: channels C.
        num_heads: heads; head width ``C // num_heads``.
        qkv_bias: bias on the qkv projection.
        kernel: neighbourhood kernel name (``'auto'``, ``'reference'``, ...); resolved once here.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, kernel: str = "auto") -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.kernel = resolve_kernel(kernel)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rpb = nn.Parameter(torch.zeros(num_heads, WINDOW, WINDOW))
        window = WINDOW * WINDOW
        self.motion_conv = nn.Sequential(nn.Linear(window, 4 * window), QuickGELU(), nn.Linear(4 * window, head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """rpb trunc_normal(.02); motion_conv.0 xavier_uniform; motion_conv.2 zero (M = 0 at init).

        Called again by the model after its generic Linear init so these win.
        """
        nn.init.trunc_normal_(self.rpb, std=0.02)
        expand, project = (m for m in self.motion_conv if isinstance(m, nn.Linear))
        nn.init.xavier_uniform_(expand.weight)
        nn.init.zeros_(expand.bias)
        nn.init.zeros_(project.weight)
        nn.init.zeros_(project.bias)

    def forward(self, x: torch.Tensor, size: Size3d) -> torch.Tensor:
        """``x``: tokens ``[B, T*H*W, C]`` ordered (t, h, w); ``size`` = (T, H, W)."""
        B, N, C = x.shape
        T, H, W = size
        qkv = self.qkv(x).reshape(B, T, H, W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(4, 0, 5, 1, 2, 3, 6).unbind(0)  # each [B, heads, T, H, W, d]
        attn, context = emim_neighborhood(q, k, v, self.rpb, self.scale, kernel=self.kernel)
        x = context + self.motion_conv(attn.to(context.dtype))
        return self.proj(x.permute(0, 2, 3, 4, 1, 5).reshape(B, N, C))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, window={WINDOW}, kernel={self.kernel!r}"


class SABlock(nn.Module):
    """UniFormer's global block (stages 3-4): DPE, then pre-norm attention and MLP on tokens.

    Args:
        dim: channels C.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over C.
        qkv_bias: bias on the qkv projection.
        drop_path: stochastic depth rate of this block.
        emim: use :class:`EmimAttention` instead of global :class:`Attention`.
        kernel: EMIM neighbourhood kernel (ignored without ``emim``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        emim: bool = False,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if emim:
            self.attn: nn.Module = EmimAttention(dim, num_heads, qkv_bias, kernel)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        B, C, T, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.attn(self.norm1(x), (T, H, W)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(B, C, T, H, W)
