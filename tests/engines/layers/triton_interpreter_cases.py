"""Run the ``triton`` EMIM kernel under Triton's CPU interpreter and save what it computed.

Not a test module: ``tests/engines/layers/test_neighborhood_triton.py`` runs it in a child process
with ``TRITON_INTERPRET=1`` (the switch must be set before the kernel is defined, so it cannot
be flipped inside the test process), then checks the saved tensors against the float64 loop
reference. Usage: ``python -m tests.engines.layers.triton_interpreter_cases OUT_FILE``.
"""

from __future__ import annotations

import sys

import torch

from emim_stream.engines.layers.blocks import EmimAttention
from emim_stream.engines.layers.neighborhood import emim_neighborhood
from emim_stream.engines.layers.neighborhood_triton import interpreted

CASES = [
    (2, 2, 3, 5, 4, 6),  # head width not a power of two; every window clipped by a border
    (1, 3, 2, 8, 9, 4),  # odd map, 72 positions: three position tiles, the last one partial
    (1, 1, 4, 2, 3, 5),  # map smaller than the window
    (1, 2, 3, 9, 7, 64),  # EMIM's head width
]
"""Op shapes ``(B, heads, T, H, W, d)``."""

ATTENTION = (2, 64, 2, (3, 6, 5))
"""An EMIM attention layer: batch, channels, heads, token grid (T, H, W)."""


def inputs(shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Seeded float64 q, k, v and rpb for an op shape."""
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    return q, k, v, torch.randn(shape[1], 7, 7, generator=g, dtype=torch.float64)


def attention_layer() -> tuple[EmimAttention, torch.Tensor]:
    """A seeded EMIM attention layer (non-zero motion branch) and its input tokens."""
    B, C, heads, (T, H, W) = ATTENTION
    torch.manual_seed(3)
    module = EmimAttention(C, heads, kernel="triton").eval()
    torch.nn.init.normal_(module.motion_conv[2].weight, std=0.1)
    return module, torch.randn(B, T * H * W, C)


def main(out: str) -> None:
    if not interpreted():
        raise SystemExit("set TRITON_INTERPRET=1 before running this")
    ops = []
    for shape in CASES:
        q, k, v, rpb = inputs(shape)
        ops.append(emim_neighborhood(q.float(), k.float(), v.float(), rpb.float(), kernel="triton"))
    module, x = attention_layer()
    with torch.no_grad():
        attention = module(x, ATTENTION[3])
    torch.save({"ops": ops, "attention": attention}, out)


if __name__ == "__main__":
    main(sys.argv[1])
