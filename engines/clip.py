"""The input contract of a checkpoint: clip size, normalisation and how the clip's frames were sampled in time.

A motion-sensitive model learns motion over a time span, so the span is part of its input just as H x W and
the normalisation are: :class:`ClipSampling` states it, :class:`ClipSpec` carries it with the rest, and
every consumer (``run``'s cameras, ``evaluate``, ``calibrate``, ``train --init``) reads it from here.

Sampling of the published models (what ``import-weights`` records,
:data:`emim_stream.engines.checkpoints.import_weights.PUBLISHED_SAMPLING`):

- Kinetics-400 ``TxI`` models (UniFormer 16x4, 8x8, 32x4): T frames, one every I source frames
  (mmaction2 ``SampleFrames(clip_len=16, frame_interval=4)`` in
  ``configs/recognition/uniformer/uniformer-small_imagenet1k-pre_16x4x1_kinetics400-rgb.py``; SlowFast's
  ``DATA.SAMPLING_RATE``), counted at 30 fps: the SlowFast loader UniFormer trains with resamples every video to
  ``DATA.TARGET_FPS = 30`` first (Sense-X/UniFormer ``video_classification/slowfast/config/defaults.py``). 16x4 is
  7.5 sampled frames per second; its 16 frames cover 64 source frames, 2.13 s.
- Something-Something V2 (16 or 32 frames): TSN-style segments, one frame from each of T equal parts of the
  *whole* video (Sense-X/UniFormer ``video_classification/slowfast/datasets/sth.py``, ``get_seq_frames``). A live
  camera has no "whole video", so the clip is given a fixed span (:attr:`ClipSampling.span_s`).

This module does not import torch: camera processes read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import MEAN, STD

__all__ = ["CONSECUTIVE", "ClipSampling", "ClipSpec", "clip_from_record", "clip_record"]

_MAX = 1000.0  # upper bound of a stated frame rate (fps) and span (s)


@dataclass(frozen=True)
class ClipSampling:
    """How a clip's frames were taken from the training videos: an interval at a frame rate, or a span.

    Three forms: ``frame_interval`` source frames apart at ``fps`` (the Kinetics ``TxI`` models: a fixed
    time step ``frame_interval / fps``); ``span_s`` (uniformly sampled models: T frames spread evenly over
    that many seconds); or ``frame_interval`` without ``fps`` (frames of videos of any rate taken
    ``frame_interval`` apart: the model is then fed that interval in the camera's own frames).
    """

    frame_interval: int = 1
    """Source frames from one sampled frame to the next (mmaction2 ``frame_interval``, SlowFast ``SAMPLING_RATE``)."""
    fps: float | None = None
    """Frame rate of the training videos the interval counts in; None: videos of any rate."""
    span_s: float | None = None
    """Uniformly sampled models: the T frames cover this many seconds (one frame per T-th of it)."""

    def __post_init__(self) -> None:
        if isinstance(self.frame_interval, bool) or not isinstance(self.frame_interval, int):
            raise ConfigError(f"clip sampling frame_interval must be an integer, got {self.frame_interval!r}")
        if not 1 <= self.frame_interval <= 1000:
            raise ConfigError(f"clip sampling frame_interval must be in 1..1000, got {self.frame_interval}")
        for name in ("fps", "span_s"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value <= _MAX):
                raise ConfigError(f"clip sampling {name} must be a number in (0, {_MAX:g}] or null, got {value!r}")
        if self.span_s is not None and (self.fps is not None or self.frame_interval != 1):
            raise ConfigError("clip sampling: span_s (uniform sampling) excludes fps and frame_interval")

    def sampled_fps(self, frames: int) -> float | None:
        """Sampled frames per second of a clip of ``frames`` frames; None when the rate is the camera's own."""
        if self.span_s is not None:
            return frames / self.span_s
        if self.fps is not None:
            return self.fps / self.frame_interval
        return None

    def describe(self, frames: int) -> str:
        """In words, e.g. ``one frame in 4 at 30 fps (7.5 frames/s; 16 frames cover 2.13 s)``."""
        if self.span_s is not None:
            rate = frames / self.span_s
            return f"{frames} frames spread over {self.span_s:g} s ({rate:.3g} frames/s)"
        step = "consecutive frames" if self.frame_interval == 1 else f"one frame in {self.frame_interval}"
        if self.fps is None:
            return f"{step} of the camera, at its own frame rate"
        rate = self.fps / self.frame_interval
        return f"{step} at {self.fps:g} fps ({rate:.3g} frames/s; {frames} frames cover {frames / rate:.3g} s)"

    def record(self) -> dict[str, Any]:
        """The checkpoint's record of it."""
        return {"frame_interval": self.frame_interval, "fps": self.fps, "span_s": self.span_s}


CONSECUTIVE = ClipSampling()
"""Consecutive frames of a camera at any rate (what a checkpoint that states no sampling is fed)."""


@dataclass(frozen=True)
class ClipSpec:
    """Input of one clip: frames T, height, width, the per-channel normalisation and the temporal sampling.

    ``sampling`` is None for checkpoints written before it was recorded: they are fed consecutive frames.
    """

    frames: int
    height: int
    width: int
    mean: tuple[float, float, float] = (MEAN,) * 3
    std: tuple[float, float, float] = (STD,) * 3
    sampling: ClipSampling | None = field(default=None)

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ConfigError(f"clip frames must be >= 2, got {self.frames}")
        if self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0:
            raise ConfigError(f"clip height/width must be positive multiples of 32, got {self.height}x{self.width}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ConfigError(f"clip {name} must be 3 finite numbers (one per channel), got {values!r}")
        if min(self.std) <= 0:
            raise ConfigError(f"clip std must be > 0 on every channel, got {self.std}")

    def describe_sampling(self) -> str:
        """The sampling in words; for a checkpoint that states none, what it is fed instead."""
        if self.sampling is None:
            return "not stated (a checkpoint from before sampling was recorded): consecutive camera frames"
        return self.sampling.describe(self.frames)


def clip_record(clip: ClipSpec) -> dict[str, Any]:
    """The checkpoint's ``clip`` entry."""
    record: dict[str, Any] = {
        "frames": clip.frames,
        "height": clip.height,
        "width": clip.width,
        "mean": list(clip.mean),
        "std": list(clip.std),
    }
    if clip.sampling is not None:
        record["sampling"] = clip.sampling.record()
    return record


def clip_from_record(value: Any) -> ClipSpec:
    """The :class:`ClipSpec` of a checkpoint's ``clip`` entry (``sampling`` optional: older files lack it).

    Raises:
        ValueError, KeyError, TypeError, ConfigError: a malformed entry (the loader names the file).
    """
    if not isinstance(value, dict):
        raise ValueError(f"clip must be a dict of frames, height, width, mean, std, got {str(value)[:80]}")
    sampling = value.get("sampling")
    if sampling is not None:
        if not isinstance(sampling, dict):
            raise ValueError(f"clip sampling must be a dict, got {str(sampling)[:80]}")
        sampling = ClipSampling(**sampling)
    return ClipSpec(
        value["frames"], value["height"], value["width"], tuple(value["mean"]), tuple(value["std"]), sampling
    )
