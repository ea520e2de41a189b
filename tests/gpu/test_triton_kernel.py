"""The fused Triton EMIM kernel on CUDA against the float64 reference, at EMIM-S's sizes and odd ones.

The reference is the ``reference`` kernel in float64 (itself checked against a loop over positions in
tests/engines/layers/test_neighborhood.py) on the same inputs the Triton kernel sees, upcast: the errors below
are the kernel's own arithmetic, relative to the reference's largest magnitude. Bounds: fp32 1e-5;
fp16 2e-3 (logits) / 5e-3 (context); bf16 1e-2 / 2e-2 (8-bit mantissa outputs).
"""

from __future__ import annotations

import pytest
import torch

from emim_stream.engines.layers.neighborhood import KERNELS, WINDOW, emim_neighborhood
from tests.gpu.conftest import GPU, rel_err

pytestmark = GPU

SHAPES = {
    "stage3": (2, 5, 16, 14, 14, 64),  # EMIM-S at 16x224x224: 5 heads on 14x14
    "stage4": (2, 8, 16, 7, 7, 64),  # 8 heads on 7x7: the window covers the map
    "odd-9x11": (1, 3, 5, 9, 11, 64),
    "odd-13x5-d32": (2, 2, 3, 13, 5, 32),
    "tiny-3x2-d16": (1, 1, 2, 3, 2, 16),  # maps smaller than the window, T = 2
}
BOUNDS = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 5e-3), torch.bfloat16: (1e-2, 2e-2)}


@pytest.mark.parametrize("dtype", list(BOUNDS), ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_triton_kernel_equals_float64_reference(shape, dtype):
    assert "triton" in KERNELS, f"the triton kernel is not registered: does Triton import? (kernels: {sorted(KERNELS)})"
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(shape, generator=g).to("cuda", dtype) for _ in range(3))
    rpb = (torch.randn(shape[1], WINDOW, WINDOW, generator=g) * 0.5).to("cuda", dtype)
    attn, ctx = emim_neighborhood(q, k, v, rpb, kernel="triton")
    ref_attn, ref_ctx = emim_neighborhood(q.double(), k.double(), v.double(), rpb.double(), kernel="reference")
    assert attn.shape == ref_attn.shape and ctx.shape == ref_ctx.shape
    assert attn.device.type == "cuda" and ctx.dtype == dtype
    attn_bound, ctx_bound = BOUNDS[dtype]
    assert rel_err(attn, ref_attn) <= attn_bound
    assert rel_err(ctx, ref_ctx) <= ctx_bound
