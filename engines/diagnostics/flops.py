"""Parameter and multiply-accumulate (MAC) counts of a model for one clip.

MACs are half of the FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts for
matmuls and convolutions (the fvcore convention the papers report). The EMIM window products
are elementwise in the portable kernel, which the counter does not see, so they are added
analytically: ``2 * 49 * C * (T-1) * H * W`` per EMIM layer (q.k and weights.v over the window,
for the T-1 distinct slots). PyTorch's counter has no formula for the CPU flash-attention op that
``scaled_dot_product_attention`` dispatches to on the CPU; we give it the standard SDPA formula.
Norms, softmax and activations are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from emim_stream.engines.layers.blocks import EmimAttention
from emim_stream.engines.layers.neighborhood import WINDOW

__all__ = ["ModelCost", "count_cost"]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@dataclass(frozen=True)
class ModelCost:
    """Parameters and MACs of one clip of ``clip_shape`` (C, T, H, W)."""

    params: int
    macs: int
    emim_window_macs: int
    clip_shape: tuple[int, int, int, int]


def count_cost(model: nn.Module, clip_shape: tuple[int, int, int, int]) -> ModelCost:
    """Count parameters and MACs of ``model`` on one clip (batch 1, eval mode, no grad)."""
    window_macs = 0

    def add_window(module: nn.Module, args: tuple[Any, ...], _out: torch.Tensor) -> None:
        nonlocal window_macs
        x, (T, H, W) = args
        window_macs += 2 * WINDOW * WINDOW * x.shape[-1] * (T - 1) * H * W * x.shape[0]

    hooks = [m.register_forward_hook(add_window) for m in model.modules() if isinstance(m, EmimAttention)]
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
        with torch.no_grad(), counter:
            model(torch.zeros(1, *clip_shape))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(params, counter.get_total_flops() // 2 + window_macs, window_macs, (*clip_shape,))
