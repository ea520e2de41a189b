"""Camera-side preprocessing: any decoded frame -> the model's ``[H, W, 3]`` uint8 RGB.

The picture is :func:`emim_stream.engines.transforms.fit_frame`'s (resize to cover, centre crop, the camera's
resize method), the function training and calibration prepare their frames with. Colour conversion
runs last, on the small image. Nothing is cached between calls, so the input size may change at any
frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import check_resize, fit_frame

__all__ = ["Preprocessor"]

_TO_RGB = {  # (channels, input is BGR) -> cv2 colour conversion code, None = already RGB
    (1, True): cv2.COLOR_GRAY2RGB,
    (1, False): cv2.COLOR_GRAY2RGB,
    (3, True): cv2.COLOR_BGR2RGB,
    (3, False): None,
    (4, True): cv2.COLOR_BGRA2RGB,
    (4, False): cv2.COLOR_RGBA2RGB,
}


class Preprocessor:
    """Resize-to-cover plus centre crop to ``(height, width)``, returning RGB.

    Args:
        height, width: output size in pixels (the model's H, W).
        method: an :class:`emim_stream.engines.transforms.ResizeMethod` name: ``'area'``, ``'linear'`` or ``'pyramid'``.

    Raises:
        ConfigError: unknown ``method`` (field ``preprocess.method``) or a non-positive size.
    """

    def __init__(self, height: int, width: int, method: str = "area") -> None:
        self.method = check_resize(method, "preprocess.method")
        if height < 1 or width < 1:
            raise ConfigError(f"preprocess output size must be positive, got {width}x{height}")
        self.height = height
        self.width = width

    def __call__(self, image: np.ndarray, bgr: bool = True) -> np.ndarray:
        """Preprocess one frame.

        Args:
            image: ``[H, W]`` grey, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` uint8, any size.
            bgr: the colour channels are in OpenCV's BGR(A) order (as decoded); False for RGB(A).

        Returns:
            ``[height, width, 3]`` uint8 RGB, C-contiguous, never sharing memory with ``image``.

        Raises:
            ValueError: not a uint8 image of a supported layout.
        """
        channels = 1 if image.ndim == 2 else image.shape[-1] if image.ndim == 3 else 0
        if image.dtype != np.uint8 or (channels, bgr) not in _TO_RGB or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"expected an [H, W], [H, W, 1|3|4] uint8 image, got {image.dtype} {image.shape}")
        out = fit_frame(image, self.height, self.width, self.method)
        if out.ndim == 3 and out.shape[2] == 1:
            out = out[..., 0]
        code = _TO_RGB[(channels, bgr)]
        if code is not None:
            return cv2.cvtColor(out, code)
        return out.copy() if np.shares_memory(out, image) or not out.flags.c_contiguous else out
