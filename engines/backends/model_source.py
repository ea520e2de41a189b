"""The model behind an engine: a checkpoint, or a registry name with seeded untrained weights."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from emim_stream.engines.backends.base import EngineConfig, EngineInfo
from emim_stream.engines.checkpoints.io import load_checkpoint, weights_sha256
from emim_stream.engines.clip import CONSECUTIVE, ClipSpec
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.models import build_model, get_model_cfg

__all__ = ["UNTRAINED_SEED", "ModelSource", "load_source"]

UNTRAINED_SEED = 0
"""Seed of the weights of ``engine.model`` (untrained): the same name gives the same weights and
hash everywhere, so exported graphs and TensorRT plans are cached across runs."""


@dataclass(frozen=True)
class ModelSource:
    """A model ready to wrap in an engine: eval mode, float32, on the CPU."""

    model: nn.Module
    labels: tuple[str, ...]
    clip: ClipSpec
    model_name: str
    weights_sha256: str
    weights: str
    """'checkpoint <path>' or 'untrained <name> (seed 0)'."""
    vmp: VmpLayer | None

    def info(self, backend: str, precision: str, device: str, kernel: str, detail: str) -> EngineInfo:
        """The :class:`EngineInfo` of an engine running these weights."""
        return EngineInfo(
            backend=backend,
            precision=precision,
            device=device,
            checkpoint_sha256=self.weights_sha256,
            model_name=self.model_name,
            weights=self.weights,
            kernel=kernel,
            detail=detail,
        )


def load_source(cfg: EngineConfig) -> ModelSource:
    """Load the weights ``cfg`` names and the clip spec it asks for.

    Raises:
        ConfigError: neither ``checkpoint`` nor ``model`` is set, or an unknown model name.
        CheckpointError: the checkpoint cannot be read or does not fit its architecture.
        KernelUnavailableError: ``cfg.kernel`` is not available here.
    """
    if cfg.checkpoint is not None:
        ck = load_checkpoint(cfg.checkpoint, kernel=cfg.kernel)
        model, labels, clip, name, digest = ck.model, ck.labels, ck.clip, ck.model_name, ck.weights_sha256
        weights, vmp = f"checkpoint {ck.path}", ck.vmp
    elif cfg.model is not None:
        model_cfg = get_model_cfg(cfg.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            model = build_model(cfg.model, kernel=cfg.kernel)
        n = model.num_classes
        labels = model_cfg.label_names if len(model_cfg.label_names) == n else tuple(f"class_{i}" for i in range(n))
        _, T, H, W = model_cfg.input_size
        clip = ClipSpec(T, H, W, model_cfg.mean, model_cfg.std, CONSECUTIVE)  # untrained: no sampling to keep
        name, vmp = model.model_name, None
        digest = weights_sha256(model.state_dict())
        weights = f"untrained {cfg.model} (seed {UNTRAINED_SEED})"
    else:
        raise ConfigError("set engine.checkpoint (a checkpoint file) or engine.model (a registry name, untrained)")
    frames = cfg.frames or clip.frames
    height = cfg.height or clip.height
    width = cfg.width or clip.width
    if (frames, height, width) != (clip.frames, clip.height, clip.width):
        clip = replace(clip, frames=frames, height=height, width=width)
    return ModelSource(model.eval().float(), tuple(labels), clip, name, digest, weights, vmp)
