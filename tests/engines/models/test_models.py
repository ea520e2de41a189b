"""Model zoo: every registered variant builds and runs; named sizes match the papers."""

from __future__ import annotations

import pytest
import torch

from emim_stream.engines.diagnostics.flops import count_cost
from emim_stream.engines.errors import ConfigError, UnknownModelError
from emim_stream.engines.layers.blocks import Attention, EmimAttention
from emim_stream.engines.models import build_model, get_model_cfg, list_models


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_every_variant_runs_forward_and_backward(name):
    model = build_model(name, num_classes=5)
    model.train()
    x = torch.randn(2, 3, 4, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert model.patch_embed1.proj.weight.grad is not None
    assert model.default_cfg == get_model_cfg(name)


@pytest.mark.parametrize(("name", "expected"), [("uniformer_s", 21_400_400), ("emim_s", 21_536_612)])
def test_parameter_counts_with_400_classes(name, expected):
    assert n_params(build_model(name, num_classes=400)) == expected


def test_emim_layout_matches_the_spec():
    model = build_model("emim_s")
    emim = [name for name, m in model.named_modules() if isinstance(m, EmimAttention)]
    assert emim == [f"blocks3.{i}.attn" for i in (0, 2, 4, 6)] + [f"blocks4.{i}.attn" for i in (0, 2)]
    assert all(isinstance(b.attn, Attention) for b in build_model("uniformer_s").blocks3)
    assert model.patch_embed1.proj.stride == (1, 4, 4)
    assert build_model("uniformer_s").patch_embed1.proj.stride == (2, 4, 4)


def test_state_dict_key_names():
    keys = set(build_model("emim_s").state_dict())
    for key in [
        "patch_embed1.proj.weight",
        "patch_embed4.norm.bias",
        "blocks1.0.pos_embed.weight",
        "blocks1.2.norm1.running_mean",
        "blocks2.3.mlp.fc2.weight",
        "blocks3.0.attn.rpb",
        "blocks3.0.attn.motion_conv.0.weight",
        "blocks3.6.attn.motion_conv.2.bias",
        "blocks3.7.attn.qkv.weight",
        "blocks4.2.attn.rpb",
        "norm.num_batches_tracked",
        "head.weight",
    ]:
        assert key in keys, key
    assert "blocks3.1.attn.rpb" not in keys
    sd = build_model("emim_s").state_dict()
    assert sd["blocks3.0.attn.motion_conv.0.weight"].shape == (196, 49)
    assert sd["blocks3.0.attn.motion_conv.2.weight"].shape == (64, 196)
    assert sd["blocks4.0.attn.rpb"].shape == (8, 7, 7)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "gmacs"), [("uniformer_s", 41.7), ("emim_s", 85.1)])
def test_macs_per_clip(name, gmacs):
    cost = count_cost(build_model(name), (3, 16, 224, 224))
    assert abs(cost.macs / 1e9 - gmacs) < 0.1


def test_unknown_name_and_setting_are_clear_errors():
    with pytest.raises(UnknownModelError, match="did you mean.*emim_s"):
        build_model("emim_ss")
    with pytest.raises(ConfigError, match="unknown model setting"):
        build_model("emim_xs", depth=3)
    with pytest.raises(ConfigError, match="temporal_stride"):
        build_model("emim_xs", temporal_stride=3)


def test_emim_xs_runs_its_default_input():
    cfg = get_model_cfg("emim_xs")
    model = build_model("emim_xs").eval()
    with torch.no_grad():
        assert model(torch.randn(1, *cfg.input_size)).shape == (1, len(cfg.label_names))
