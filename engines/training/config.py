"""The settings of one training run (no torch: the train command reads its option defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from emim_stream.engines.errors import ConfigError

__all__ = ["TrainConfig"]

_PER_RUN: dict[str, Any] = {"per_run": True}
"""Metadata of a :class:`TrainConfig` field that a resumed run may change (where it writes, how it loads data and
logs); every other field is a setting a resumed run must share with the run it continues."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``frames`` / ``size`` default to the model's input size (``size`` is square)."""

    model: str
    data: str
    out: Path = field(metadata=_PER_RUN)
    epochs: int
    val_data: str | None = None
    """Validation set spec; default: the synthetic ``val`` split for synthetic data, else a held-out part."""
    init: str | None = None
    """Initial weights: public UniFormer / EMIM (2-D inflated or 3-D) or an emim-stream checkpoint."""
    frames: int | None = None
    size: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    """Architecture arguments for :func:`emim_stream.engines.models.build_model` (e.g. ``emim=False``)."""
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    vmp: bool = True
    vmp_lambda: float = 0.1
    vmp_init: tuple[float, float] | None = None
    """Initial VMP ``(m, n)`` instead of N(1e-5, 1) draws; ``(0.0, 0.168)`` is slope 50 and shift 0.1, which
    suppresses static pixels (prompts start motion-only: learning from scratch on the synthetic scenes
    starts far sooner than from a random draw)."""
    val_fraction: float = 0.1
    """Share of each class held out for validation when ``val_data`` is not given (video data)."""
    val_n: int = 180
    """Synthetic validation clips when ``val_data`` is not given (synthetic data)."""
    method: str = "area"
    """Resize method (as the camera's ``resize`` setting)."""
    seed: int = 0
    augment: bool = False
    """Show each training clip through a random motion symmetry (:mod:`emim_stream.engines.data.augment`; the nine
    motions only)."""
    cache_clips: Path | None = field(default=None, metadata=_PER_RUN)
    """Render the (fixed) training clips once into this folder and read them from there every epoch."""
    workers: int = field(default=0, metadata=_PER_RUN)
    resume: bool = field(default=False, metadata=_PER_RUN)
    log_every: int = field(default=20, metadata=_PER_RUN)
    save_every: int = field(default=50, metadata=_PER_RUN)
    command: str = field(default="", metadata=_PER_RUN)
    """The command line that started the run (recorded in the checkpoint)."""

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("min_lr", 0 <= self.min_lr <= self.lr, "in [0, lr]"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
            ("vmp_lambda", self.vmp_lambda >= 0, ">= 0"),
            ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
            ("val_n", self.val_n >= 0, ">= 0"),
            ("workers", self.workers >= 0, ">= 0"),
            ("log_every", self.log_every >= 1, ">= 1"),
            ("save_every", self.save_every >= 1, ">= 1"),
            ("frames", self.frames is None or self.frames >= 2, ">= 2"),
            ("size", self.size is None or (self.size > 0 and self.size % 32 == 0), "a positive multiple of 32"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"training setting {name}={getattr(self, name)!r} must be {rule}")

    def resume_settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues: every field not marked per run."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("per_run")}
        values["overrides"] = dict(self.overrides)
        return values
