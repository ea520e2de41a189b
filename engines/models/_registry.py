"""Model registry: names -> constructors and default configs, ``build_model`` and ``list_models``.

Names follow timm's ``arch.tag``: ``emim_s`` is an architecture, ``emim_xs.demo`` the same
architecture with the shipped demo weights. Architecture numbers live only in the variant
functions (engines/models/uniformer.py); this module knows nothing about them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from emim_stream.engines.errors import UnknownModelError

__all__ = ["ModelCfg", "RegisteredModel", "build_model", "get_model_cfg", "list_models", "register_model"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class ModelCfg:
    """What a model name means besides its architecture: input, normalisation, labels, weights."""

    num_classes: int = 400
    input_size: tuple[int, int, int, int] = (3, 16, 224, 224)
    """(channels, frames T, height, width) of one clip."""
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    label_names: tuple[str, ...] = ()
    file: str | None = None
    """Weights file under engines/weights/ (shipped in the repository), for tagged names."""
    first_conv: str = "patch_embed1.proj"
    classifier: str = "head"
    license: str = "Apache-2.0"
    paper: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path | None:
        return WEIGHTS_DIR / self.file if self.file else None


class RegisteredModel(nn.Module):
    """What a variant function builds: a clip classifier (logits ``[B, num_classes]``) that
    :func:`build_model` labels with the name and settings it was built from (checkpoints record them)."""

    num_classes: int
    model_name: str
    model_overrides: dict[str, object]
    default_cfg: ModelCfg


_MODEL_FNS: dict[str, Callable[..., RegisteredModel]] = {}
_MODEL_CFGS: dict[str, ModelCfg] = {}


def register_model(fn: Callable[..., RegisteredModel]) -> Callable[..., RegisteredModel]:
    """Register a variant function under its own name."""
    _MODEL_FNS[fn.__name__] = fn
    return fn


def register_cfgs(cfgs: dict[str, ModelCfg]) -> None:
    """Register default configs: ``'emim_s'`` (untagged default) and tagged ``'emim_xs.demo'``."""
    _MODEL_CFGS.update(cfgs)


def list_models(tagged: bool = False) -> list[str]:
    """Registered architecture names (and ``arch.tag`` names when ``tagged``), sorted."""
    names = set(_MODEL_FNS)
    if tagged:
        names |= {n for n in _MODEL_CFGS if "." in n}
    return sorted(names)


def _split(name: str) -> tuple[str, str]:
    arch, _, tag = name.partition(".")
    if arch not in _MODEL_FNS or (tag and name not in _MODEL_CFGS):
        known = list_models(tagged=True)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (known: {', '.join(known)})")
    return arch, tag


def get_model_cfg(name: str) -> ModelCfg:
    """The :class:`ModelCfg` of ``name`` (``arch`` or ``arch.tag``)."""
    arch, tag = _split(name)
    return _MODEL_CFGS[name if tag else arch]


def build_model(name: str, num_classes: int | None = None, **overrides: object) -> RegisteredModel:
    """Build a registered model with freshly initialised weights.

    Args:
        name: ``arch`` or ``arch.tag`` (the tag selects the default config, e.g. labels).
        num_classes: classifier size; default from the model's config.
        **overrides: architecture arguments passed to the model class (e.g. ``drop_path_rate``,
            ``temporal_stride``, ``kernel``).

    Returns:
        The model, with ``model_name``, ``model_overrides`` and ``default_cfg`` attributes set
        (checkpoints record them).

    Raises:
        UnknownModelError: ``name`` is not registered (the message lists close matches).
    """
    arch, _ = _split(name)
    cfg = get_model_cfg(name)
    num_classes = cfg.num_classes if num_classes is None else int(num_classes)
    model = _MODEL_FNS[arch](num_classes=num_classes, **overrides)
    model.model_name = arch
    model.model_overrides = dict(overrides)
    model.default_cfg = cfg
    return model
