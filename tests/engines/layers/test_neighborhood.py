"""EMIM neighbourhood op and attention against an independent loop-over-positions reference."""

from __future__ import annotations

import pytest
import torch

from emim_stream.engines.errors import KernelUnavailableError
from emim_stream.engines.layers.blocks import EmimAttention
from emim_stream.engines.layers.neighborhood import KERNELS, emim_neighborhood, resolve_kernel


def loop_reference(q, k, v, rpb, scale):
    """Plain loops over every output position and window offset (docs/model.md#emim)."""
    B, heads, T, H, W, d = q.shape
    attn = torch.zeros(B, heads, T, H, W, 49, dtype=q.dtype)
    ctx = torch.zeros(B, heads, T, H, W, d, dtype=q.dtype)
    pad = torch.full((d,), 1e-6, dtype=q.dtype)
    for b in range(B):
        for h in range(heads):
            for t in range(T):
                tq = t if t < T - 1 else T - 2  # last slot repeats the pair of slot T-2
                tk = tq + 1
                for y in range(H):
                    for x in range(W):
                        keys, vals = [], []
                        for dy in range(-3, 4):
                            for dx in range(-3, 4):
                                yy, xx = y + dy, x + dx
                                inside = 0 <= yy < H and 0 <= xx < W
                                keys.append(k[b, h, tk, yy, xx] if inside else pad)
                                vals.append(v[b, h, tk, yy, xx] if inside else pad)
                                p = (dy + 3) * 7 + (dx + 3)
                                attn[b, h, t, y, x, p] = (
                                    scale * torch.dot(q[b, h, tq, y, x], keys[-1]) + rpb[h, dy + 3, dx + 3]
                                )
                        w = torch.softmax(attn[b, h, t, y, x], dim=0)
                        ctx[b, h, t, y, x] = (w[:, None] * torch.stack(vals)).sum(0)
    return attn, ctx


# triton runs on the CPU only under its interpreter: tests/engines/layers/test_neighborhood_triton.py
@pytest.mark.parametrize("kernel", sorted(set(KERNELS) - {"triton"}))
@pytest.mark.parametrize("shape", [(2, 2, 3, 5, 4, 6), (1, 3, 2, 8, 9, 4), (1, 1, 4, 2, 3, 5)])
def test_kernel_matches_loop_reference_float64(kernel, shape):
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(shape[1], 7, 7, generator=g, dtype=torch.float64)
    scale = shape[-1] ** -0.5
    attn, ctx = emim_neighborhood(q, k, v, rpb, scale, kernel=kernel)
    ref_attn, ref_ctx = loop_reference(q, k, v, rpb, scale)
    # maps of 2..9 cover windows clipped on every border (the pad value enters unmasked)
    assert (attn - ref_attn).abs().max() < 1e-10
    assert (ctx - ref_ctx).abs().max() < 1e-10


def test_last_slot_repeats_slot_before_it():
    q, k, v = (torch.randn(1, 2, 5, 4, 4, 8, dtype=torch.float64) for _ in range(3))
    attn, ctx = emim_neighborhood(q, k, v, torch.randn(2, 7, 7, dtype=torch.float64))
    assert torch.equal(attn[:, :, -1], attn[:, :, -2])
    assert torch.equal(ctx[:, :, -1], ctx[:, :, -2])
    # and the query of the last frame is never used
    q2 = q.clone()
    q2[:, :, -1] += 100
    attn2, _ = emim_neighborhood(q2, k, v, torch.zeros(2, 7, 7, dtype=torch.float64))
    attn0, _ = emim_neighborhood(q, k, v, torch.zeros(2, 7, 7, dtype=torch.float64))
    assert torch.equal(attn2, attn0)


def attention_loop_reference(module: EmimAttention, x: torch.Tensor, size):
    """The whole EMIM attention with the loop reference and an explicit motion MLP."""
    B, N, C = x.shape
    T, H, W = size
    heads, d = module.num_heads, C // module.num_heads
    qkv = x @ module.qkv.weight.T + module.qkv.bias
    qkv = qkv.reshape(B, T, H, W, 3, heads, d).permute(4, 0, 5, 1, 2, 3, 6)
    attn, ctx = loop_reference(qkv[0], qkv[1], qkv[2], module.rpb, d**-0.5)
    w1, b1 = module.motion_conv[0].weight, module.motion_conv[0].bias
    w2, b2 = module.motion_conv[2].weight, module.motion_conv[2].bias
    h = attn @ w1.T + b1
    motion = (h * torch.sigmoid(1.702 * h)) @ w2.T + b2
    out = (ctx + motion).permute(0, 2, 3, 4, 1, 5).reshape(B, N, C)
    return out @ module.proj.weight.T + module.proj.bias


def test_emim_attention_module_matches_reference():
    torch.manual_seed(0)
    module = EmimAttention(dim=12, num_heads=3).double()
    torch.nn.init.normal_(module.motion_conv[2].weight)  # make M non-zero
    torch.nn.init.normal_(module.motion_conv[2].bias)
    size = (3, 4, 5)
    x = torch.randn(2, 3 * 4 * 5, 12, dtype=torch.float64)
    out = module(x, size)
    assert (out - attention_loop_reference(module, x, size)).abs().max() < 1e-10


def test_motion_branch_is_zero_at_init():
    module = EmimAttention(dim=64, num_heads=2).double()
    assert torch.count_nonzero(module.motion_conv[2].weight) == 0
    assert torch.count_nonzero(module.motion_conv[2].bias) == 0
    logits = torch.randn(1, 2, 3, 4, 4, 49, dtype=torch.float64)
    assert torch.count_nonzero(module.motion_conv(logits)) == 0
    assert module.rpb.shape == (2, 7, 7) and module.rpb.std() > 0


def test_unknown_kernel_is_refused():
    with pytest.raises(KernelUnavailableError, match="not available"):
        resolve_kernel("nope")
    assert resolve_kernel("auto") in KERNELS


@pytest.mark.natten
def test_context_matches_natten_na2d_on_padded_maps():
    """NATTEN's fused na2d computes the context branch when rpb = 0 (docs/model.md#natten)."""
    natten = pytest.importorskip("natten", reason="natten is not installed")
    from natten.functional import na2d

    torch.manual_seed(1)
    B, heads, T, H, W, d = 1, 2, 3, 6, 5, 16
    q, k, v = (torch.randn(B, heads, T, H, W, d) for _ in range(3))
    _, ctx = emim_neighborhood(q, k, v, torch.zeros(heads, 7, 7))
    for t in range(T - 1):
        # natten layout [B, H, W, heads, d]; query zero-padded, key/value padded with 1e-6, centre kept
        qt = torch.nn.functional.pad(q[:, :, t].permute(0, 2, 3, 1, 4), (0, 0, 0, 0, 3, 3, 3, 3), value=0.0)
        kt, vt = (
            torch.nn.functional.pad(x[:, :, t + 1].permute(0, 2, 3, 1, 4), (0, 0, 0, 0, 3, 3, 3, 3), value=1e-6)
            for x in (k, v)
        )
        out = na2d(qt.contiguous(), kt.contiguous(), vt.contiguous(), kernel_size=7)
        expected = out[:, 3 : 3 + H, 3 : 3 + W].permute(0, 3, 1, 2, 4)
        assert (ctx[:, :, t] - expected).abs().max() < 1e-5, natten.__version__
