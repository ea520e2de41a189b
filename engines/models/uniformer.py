"""UniFormer video backbone and its EMIM variants.

- UniFormer: "UniFormer: Unified Transformer for Efficient Spatiotemporal Representation
  Learning" (Li et al., ICLR 2022, arXiv:2201.04676).
- EMIM: "A Renaissance of Explicit Motion Information Mining from Transformers for Action
  Recognition" (Zhuang et al.): temporal stride 1 in the stem and EMIM attention in the even
  blocks of stages 3 and 4.

docs/model.md is the contract (shapes, key names, init). Deviations from the released code are
its Decisions (docs/model.md#decisions): full head width in the EMIM context branch (see
engines/layers/neighborhood.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from emim_stream.engines.data.classes import SYNTHETIC_CLASSES
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.layers.blocks import CBlock, EmimAttention, PatchEmbed3d, SABlock
from emim_stream.engines.models._registry import ModelCfg, RegisteredModel, register_cfgs, register_model

__all__ = ["Uniformer"]


class Uniformer(RegisteredModel):
    """UniFormer video backbone, optionally with EMIM attention.

    Input: clips ``[B, 3, T, H, W]`` already normalised (mean 0.45, std 0.225); H and W multiples
    of 32, T >= 2 (even when ``temporal_stride`` is 2). Output: logits ``[B, num_classes]``.

    Args:
        depths: blocks per stage (stages 1-2 are CBlocks, 3-4 SABlocks).
        dims: channels per stage.
        head_dim: channels per attention head in stages 3-4.
        temporal_stride: the stem's temporal stride: 2 (UniFormer) or 1 (EMIM).
        emim: use EMIM attention in the even blocks of stages 3 and 4.
        num_classes: classifier outputs.
        mlp_ratio: MLP hidden width over the stage width.
        qkv_bias: bias on the qkv projections.
        drop_path_rate: stochastic depth, linearly increasing over all blocks from 0 to this.
        kernel: EMIM neighbourhood kernel (``'auto'`` picks the fastest exact one).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 8, 3),
        dims: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        temporal_stride: int = 2,
        emim: bool = False,
        num_classes: int = 400,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        if temporal_stride not in (1, 2):
            raise ConfigError(f"temporal_stride must be 1 or 2, got {temporal_stride!r}")
        if len(depths) != 4 or len(dims) != 4:
            raise ConfigError(f"depths and dims need 4 stages, got {list(depths)} and {list(dims)}")
        if any(d % head_dim for d in dims[2:]):
            raise ConfigError(f"dims {list(dims[2:])} of stages 3-4 must be multiples of head_dim={head_dim}")
        self.num_classes = num_classes
        self.temporal_stride = temporal_stride
        self.num_features = dims[-1]
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(4)]

        self.patch_embed1 = PatchEmbed3d(3, dims[0], (3, 4, 4), (temporal_stride, 4, 4), (1, 0, 0))
        self.blocks1 = nn.ModuleList(CBlock(dims[0], mlp_ratio, dp) for dp in stage_rates[0])
        self.patch_embed2 = PatchEmbed3d(dims[0], dims[1], (1, 2, 2), (1, 2, 2))
        self.blocks2 = nn.ModuleList(CBlock(dims[1], mlp_ratio, dp) for dp in stage_rates[1])
        self.patch_embed3 = PatchEmbed3d(dims[1], dims[2], (1, 2, 2), (1, 2, 2))
        self.blocks3 = nn.ModuleList(
            SABlock(dims[2], dims[2] // head_dim, mlp_ratio, qkv_bias, dp, emim and i % 2 == 0, kernel)
            for i, dp in enumerate(stage_rates[2])
        )
        self.patch_embed4 = PatchEmbed3d(dims[2], dims[3], (1, 2, 2), (1, 2, 2))
        self.blocks4 = nn.ModuleList(
            SABlock(dims[3], dims[3] // head_dim, mlp_ratio, qkv_bias, dp, emim and i % 2 == 0, kernel)
            for i, dp in enumerate(stage_rates[3])
        )
        self.norm = nn.BatchNorm3d(dims[3])
        self.head = nn.Linear(dims[3], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, EmimAttention):
                module.reset_parameters()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, four stages and the final BatchNorm: ``[B, 3, T, H, W] -> [B, C, T', H/32, W/32]``."""
        x = self.patch_embed1(x)
        for blk in self.blocks1:
            x = blk(x)
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = blk(x)
        x = self.patch_embed3(x)
        for blk in self.blocks3:
            x = blk(x)
        x = self.patch_embed4(x)
        for blk in self.blocks4:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average over (T, H, W), then the classifier (skipped with ``pre_logits``)."""
        x = x.flatten(2).mean(-1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (fine-tuning to new classes)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)


def _init_weights(module: nn.Module) -> None:
    """Linear trunc_normal(.02) and bias 0; LayerNorm (1, 0); convs and BN keep PyTorch defaults."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_PAPER_UNIFORMER = "arXiv:2201.04676"
_PAPER_EMIM = "EMIM: A Renaissance of Explicit Motion Information Mining from Transformers for Action Recognition"

_EMIM_XS = ModelCfg(
    num_classes=len(SYNTHETIC_CLASSES),
    input_size=(3, 8, 128, 128),
    label_names=SYNTHETIC_CLASSES,
    paper=_PAPER_EMIM,
    notes="small CPU preset of this project: EMIM-S block types, depths (1, 1, 2, 2), dims (32, 64, 128, 256), "
    "head_dim 32",
)

register_cfgs(
    {
        "uniformer_s": ModelCfg(paper=_PAPER_UNIFORMER),
        "uniformer_b": ModelCfg(paper=_PAPER_UNIFORMER),
        "emim_s": ModelCfg(paper=_PAPER_EMIM),
        "emim_b": ModelCfg(paper=_PAPER_EMIM),
        "emim_xs": _EMIM_XS,
        "emim_xs.demo": dataclasses.replace(
            _EMIM_XS,
            file="emim_xs_demo.pt",
            notes="the demo model shipped in the repository, trained on the synthetic motion scenes "
            "(engines/weights/emim_xs_demo.json is its model card)",
        ),
    }
)


def _create_uniformer(**kwargs: Any) -> Uniformer:
    allowed = set(inspect.signature(Uniformer).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(f"unknown model setting(s) {unknown}; allowed: {sorted(allowed)}")
    return Uniformer(**kwargs)


@register_model
def uniformer_s(**kwargs: object) -> Uniformer:
    """UniFormer-S video: temporal stride 2, global attention in every SABlock."""
    model_args = dict(depths=(3, 4, 8, 3), dims=(64, 128, 320, 512), head_dim=64, temporal_stride=2)
    return _create_uniformer(**dict(model_args, **kwargs))


@register_model
def uniformer_b(**kwargs: object) -> Uniformer:
    """UniFormer-B video: depths (5, 8, 20, 7), temporal stride 2."""
    model_args = dict(depths=(5, 8, 20, 7), dims=(64, 128, 320, 512), head_dim=64, temporal_stride=2)
    return _create_uniformer(**dict(model_args, **kwargs))


@register_model
def emim_s(**kwargs: object) -> Uniformer:
    """EMIM-S: UniFormer-S with temporal stride 1 and EMIM in even blocks of stages 3-4."""
    model_args = dict(depths=(3, 4, 8, 3), dims=(64, 128, 320, 512), head_dim=64, temporal_stride=1, emim=True)
    return _create_uniformer(**dict(model_args, **kwargs))


@register_model
def emim_b(**kwargs: object) -> Uniformer:
    """EMIM-B: depths (5, 8, 20, 7), temporal stride 1, EMIM in even blocks of stages 3-4."""
    model_args = dict(depths=(5, 8, 20, 7), dims=(64, 128, 320, 512), head_dim=64, temporal_stride=1, emim=True)
    return _create_uniformer(**dict(model_args, **kwargs))


@register_model
def emim_xs(**kwargs: object) -> Uniformer:
    """Small CPU preset (demo, tests): EMIM-S block types, fewer and narrower blocks, 8x128x128."""
    model_args = dict(depths=(1, 1, 2, 2), dims=(32, 64, 128, 256), head_dim=32, temporal_stride=1, emim=True)
    return _create_uniformer(**dict(model_args, **kwargs))
