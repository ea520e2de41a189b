"""The portable EMIM neighbourhood kernel (``kernel: reference``): plain PyTorch, exportable to ONNX.

The window constants live here, below every kernel: the fused Triton kernel reads them and uses this kernel's
maths as its CPU fallback; :mod:`emim_stream.engines.layers.neighborhood` puts both in one kernel table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["PAD", "PAD_VALUE", "WINDOW", "pad_window", "reference_kernel"]

WINDOW = 7
"""Side of EMIM's square neighbourhood window."""
PAD = WINDOW // 2
PAD_VALUE = 1e-6
"""The constant the key/value maps are padded with (read, not masked: docs/model.md#padding)."""


def pad_window(x: torch.Tensor) -> torch.Tensor:
    """Pad the H and W dims of ``[..., H, W, d]`` by PAD with the constant PAD_VALUE."""
    return F.pad(x, (0, 0, PAD, PAD, PAD, PAD), value=PAD_VALUE)


def reference_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Portable kernel on paired frames: q, k, v ``[B, h, T', H, W, d]`` -> (A, F)."""
    H, W = q.shape[3], q.shape[4]
    q = q * scale
    k_pad, v_pad = pad_window(k), pad_window(v)
    logits = [(q * k_pad[:, :, :, dy : dy + H, dx : dx + W, :]).sum(-1) for dy in range(WINDOW) for dx in range(WINDOW)]
    attn = torch.stack(logits, dim=-1) + rpb.reshape(1, -1, 1, 1, 1, WINDOW * WINDOW).to(q.dtype)
    softmax_dtype = torch.promote_types(attn.dtype, torch.float32)  # fp16/bf16 logits: softmax in fp32
    weights = torch.softmax(attn.to(softmax_dtype), dim=-1).to(v.dtype)

    def term(p: int) -> torch.Tensor:
        dy, dx = divmod(p, WINDOW)
        return weights[..., p : p + 1] * v_pad[:, :, :, dy : dy + H, dx : dx + W, :]

    context = term(0)
    for p in range(1, WINDOW * WINDOW):
        context = context + term(p)
    return attn, context
