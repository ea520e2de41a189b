"""VMP layer against the formula written out directly (docs/model.md#vmp)."""

from __future__ import annotations

import math

import pytest
import torch

from emim_stream.engines.layers.vmp import VmpLayer, motion_attention, motion_prompt


def direct_formula(frames, m, n, grey):
    """Per-pixel loops of the paper's formula, in float64."""
    B, C, T1, H, W = frames.shape
    a = 5.0 / (0.45 * abs(math.tanh(m)) + 0.1)
    b = 0.6 * math.tanh(n)
    prompts = torch.zeros(B, C, T1 - 1, H, W, dtype=torch.float64)
    attn = torch.zeros(B, T1 - 1, H, W, dtype=torch.float64)
    for bi in range(B):
        for t in range(T1 - 1):
            for y in range(H):
                for x in range(W):
                    g0 = sum(grey[c] * (float(frames[bi, c, t, y, x]) * 0.225 + 0.45) for c in range(3))
                    g1 = sum(grey[c] * (float(frames[bi, c, t + 1, y, x]) * 0.225 + 0.45) for c in range(3))
                    attn[bi, t, y, x] = 1.0 / (1.0 + math.exp(-a * ((g1 - g0) - b)))
                    for c in range(3):
                        prompts[bi, c, t, y, x] = attn[bi, t, y, x] * frames[bi, c, t + 1, y, x]
    diff = attn[:, 1:] - attn[:, :-1]
    return prompts, (diff**2).sum() / (H * W * (T1 - 2) * B)


@pytest.mark.parametrize("grey", [(0.299, 0.587, 0.114), (0.114, 0.587, 0.299)])
def test_vmp_matches_direct_formula(grey):
    torch.manual_seed(3)
    layer = VmpLayer(grey).double()
    frames = torch.randn(2, 3, 5, 4, 3, dtype=torch.float64) * 0.5
    prompts, reg = layer(frames)
    ref_prompts, ref_reg = direct_formula(frames, layer.m.item(), layer.n.item(), grey)
    assert prompts.shape == (2, 3, 4, 4, 3)
    assert (prompts - ref_prompts).abs().max() < 1e-12
    assert abs(reg.item() - ref_reg.item()) < 1e-12


def test_rgb_grey_weights_are_the_default():
    assert VmpLayer().grey.tolist() == [0.299, 0.587, 0.114]


def test_gradients_reach_m_and_n():
    torch.manual_seed(4)
    layer = VmpLayer()
    frames = torch.randn(1, 3, 4, 8, 8)
    prompts, reg = layer(frames)
    (prompts.square().mean() + reg).backward()
    assert layer.m.grad is not None and layer.m.grad.abs() > 0
    assert layer.n.grad is not None and layer.n.grad.abs() > 0


def test_step_functions_equal_the_batch_layer():
    """The streaming stage uses motion_attention/motion_prompt one step at a time."""
    torch.manual_seed(5)
    layer = VmpLayer()
    frames = torch.randn(1, 3, 6, 8, 8)
    prompts, _ = layer(frames)
    for t in range(5):
        a = motion_attention(frames[:, :, t], frames[:, :, t + 1], layer.m, layer.n, layer.grey)
        assert torch.equal(motion_prompt(a, frames[:, :, t + 1]), prompts[:, :, t])


def test_bad_input_shape_is_refused():
    with pytest.raises(ValueError, match="T\\+1"):
        VmpLayer()(torch.zeros(1, 3, 1, 4, 4))
