"""Frame preparation, written once: the resize method, fit (resize to cover + centre crop), normalisation.

Training and evaluation (:mod:`emim_stream.engines.data.datasets`), calibration and the camera process
(:mod:`emim_stream.pipeline.capture.preprocess`) call these functions, so a model sees the same pixels and values in
training as at run time.

The resize method is a setting because it dominates the camera-side cost (measured on one core: 1080p to
398x224 takes 7.3 ms with INTER_AREA, 3.2 ms with pyrDown steps then INTER_AREA, 0.22 ms with
INTER_LINEAR); train and evaluate with the method you deploy.

Camera processes import this module for :func:`fit_frame` and never load torch: torch is imported
inside :func:`normalise` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING

import cv2
import numpy as np

from emim_stream.engines.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "MEAN",
    "RESIZE_METHODS",
    "STD",
    "ResizeMethod",
    "check_resize",
    "fit_frame",
    "normalise",
]

MEAN, STD = 0.45, 0.225
"""Input normalisation of every model of the zoo (all channels), and the VMP layer's default."""


class ResizeMethod(str, Enum):
    """How a frame is scaled to the model's size."""

    AREA = "area"
    """cv2.INTER_AREA."""
    LINEAR = "linear"
    """cv2.INTER_LINEAR: the fastest."""
    PYRAMID = "pyramid"
    """cv2.pyrDown while the window is at least twice the target, then INTER_AREA."""


RESIZE_METHODS: tuple[str, ...] = tuple(m.value for m in ResizeMethod)
"""The method names, for CLI choices and messages."""


def check_resize(method: str, field: str) -> str:
    """The name of the :class:`ResizeMethod` ``method`` is (a member or its name), as a plain ``str``.

    Raises:
        ConfigError: another name; the message starts with ``field`` (e.g. ``'preprocess.method'``).
    """
    if method not in RESIZE_METHODS:
        raise ConfigError(f"{field} {method!r} is not supported; expected one of {', '.join(RESIZE_METHODS)}")
    return ResizeMethod(method).value


def fit_frame(image: np.ndarray, height: int, width: int, method: str = ResizeMethod.AREA) -> np.ndarray:
    """Resize to cover ``height x width`` and centre-crop: the picture every model input is made of.

    The frame is scaled by ``max(height / h, width / w)`` (the short side, relative to the target's
    aspect, fits exactly) and centre-cropped. The crop window is taken in the source first and only
    that window is resized: the same picture as resizing the whole frame and then cropping (up to
    sub-pixel rounding of the window), without resizing the pixels the crop drops. Channels are
    not touched (colour conversion is the caller's), and ``method`` is not checked (see
    :func:`check_resize`).

    Args:
        image: ``[h, w]`` or ``[h, w, c]`` uint8, any size.
        height, width: output size in pixels.
        method: a :class:`ResizeMethod` or its name.

    Returns:
        ``[height, width, c]`` uint8, C-contiguous (``[height, width]`` where cv2 drops a single
        channel); it shares memory with ``image`` only when ``image`` is already exactly the output.
    """
    in_h, in_w = image.shape[:2]
    scale = max(height / in_h, width / in_w)
    crop_h = min(in_h, max(1, round(height / scale)))
    crop_w = min(in_w, max(1, round(width / scale)))
    top, left = (in_h - crop_h) // 2, (in_w - crop_w) // 2
    window = image[top : top + crop_h, left : left + crop_w]
    if window.shape[:2] == (height, width):
        return np.ascontiguousarray(window)
    if method == ResizeMethod.LINEAR:
        return cv2.resize(window, (width, height), interpolation=cv2.INTER_LINEAR)
    if method == ResizeMethod.PYRAMID:
        while window.shape[0] >= 2 * height and window.shape[1] >= 2 * width:
            window = cv2.pyrDown(window)
    return cv2.resize(window, (width, height), interpolation=cv2.INTER_AREA)


def normalise(
    frames: torch.Tensor,
    mean: Sequence[float] = (MEAN,) * 3,
    std: Sequence[float] = (STD,) * 3,
    dtype: torch.dtype | None = None,
    channel_dim: int = -3,
) -> torch.Tensor:
    """uint8 RGB ``[..., H, W, 3]`` -> ``(x / 255 - mean) / std``, contiguous, channels moved to ``channel_dim``.

    Computed as ``x * (1 / (255 std)) - mean / std`` per channel, the same operations for one frame
    or a batch of clips, so every element gets the same value either way.

    Args:
        frames: uint8 (or float) RGB, channels last: one frame ``[H, W, 3]``, a clip ``[T, H, W, 3]``,
            clips ``[B, T, H, W, 3]``.
        mean, std: per channel, on the [0, 1] scale.
        dtype: result dtype (default float32).
        channel_dim: where the channel axis goes: ``-3`` gives ``[..., 3, H, W]`` (frames), ``1``
            gives ``[B, 3, T, H, W]`` for clips ``[B, T, H, W, 3]`` (the model's layout).

    Returns:
        The normalised frames on ``frames``' device.
    """
    import torch  # here, not at the top: see the module docstring

    dtype = dtype or torch.float32
    x = frames.movedim(-1, channel_dim).to(dtype=dtype, memory_format=torch.contiguous_format)
    shape = [1] * x.dim()
    shape[channel_dim] = 3
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=dtype, device=x.device).reshape(shape)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], dtype=dtype, device=x.device)
    return x.mul_(scale).sub_(shift.reshape(shape))
