"""emim_stream.pipeline.capture.preprocess: output shape for any input, centre-crop geometry, colour order, method
choice."""

from __future__ import annotations

import numpy as np
import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import RESIZE_METHODS
from emim_stream.pipeline.capture.preprocess import Preprocessor

SHAPES = [
    (1080, 1920, 3),  # landscape 16:9
    (1920, 1080, 3),  # portrait
    (240, 320, 3),
    (224, 224, 3),  # already the target
    (2, 3, 3),  # tiny: upscaled
    (1, 1, 3),
    (100, 50),  # grey
    (48, 64, 1),  # grey with a channel axis
    (480, 640, 4),  # BGRA
]


@pytest.mark.parametrize("method", RESIZE_METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("target", [(224, 224), (96, 160), (160, 96)])
def test_output_shape_for_any_input(method, shape, target):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = Preprocessor(*target, method=method)(image)
    assert out.shape == (*target, 3)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert not np.shares_memory(out, image)


def _bands(length: int, across: int, horizontal: bool) -> np.ndarray:
    """BGR image split in three equal bands along its long side: red | green | blue."""
    image = np.zeros((across, length, 3) if horizontal else (length, across, 3), np.uint8)
    third = length // 3
    for i, bgr in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):
        if horizontal:
            image[:, i * third : (i + 1) * third] = bgr
        else:
            image[i * third : (i + 1) * third] = bgr
    return image


@pytest.mark.parametrize("method", RESIZE_METHODS)
@pytest.mark.parametrize("horizontal", [True, False], ids=["landscape", "portrait"])
def test_centre_crop_keeps_exactly_the_middle(method, horizontal):
    # 300x100 frame -> 50x50: scaled by 0.5 the short side is 50 and the crop is the middle band.
    out = Preprocessor(50, 50, method=method)(_bands(300, 100, horizontal))
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([0, 255, 0], np.uint8), (50, 50, 3)))


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_centre_square_lands_in_the_centre(method):
    # A 64x64 white square at the centre of a 480x640 frame; 120x120 output keeps the short side (480
    # -> 120, scale 1/4), so the square becomes 16x16 at the centre of the output.
    image = np.zeros((480, 640, 3), np.uint8)
    image[208:272, 288:352] = 255
    out = Preprocessor(120, 120, method=method)(image)
    bright = np.argwhere(out[..., 0] > 127)
    assert bright.min(axis=0).tolist() == [52, 52] and bright.max(axis=0).tolist() == [67, 67]


def test_bgr_input_comes_out_rgb():
    blue_bgr = np.zeros((60, 80, 3), np.uint8)
    blue_bgr[..., 0] = 255
    prep = Preprocessor(30, 30)
    assert prep(blue_bgr)[0, 0].tolist() == [0, 0, 255]
    assert prep(blue_bgr, bgr=False)[0, 0].tolist() == [255, 0, 0]  # already RGB: kept as is
    bgra = np.dstack([blue_bgr, np.full((60, 80), 7, np.uint8)])
    assert prep(bgra)[0, 0].tolist() == [0, 0, 255]
    assert prep(bgra, bgr=False)[0, 0].tolist() == [255, 0, 0]
    grey = np.full((60, 80), 90, np.uint8)
    assert prep(grey)[5, 5].tolist() == [90, 90, 90]


def test_strided_views_are_accepted():
    image = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    prep = Preprocessor(100, 120)
    np.testing.assert_array_equal(prep(image[..., ::-1], bgr=False), prep(image))  # an RGB view of BGR
    assert prep(image[::2, ::3]).shape == (100, 120, 3)


def test_resolution_may_change_between_calls():
    prep = Preprocessor(64, 64, method="pyramid")
    rng = np.random.default_rng(1)
    for shape in [(720, 1280, 3), (240, 320, 3), (1080, 1920, 3), (64, 64, 3), (33, 17, 3)]:
        assert prep(rng.integers(0, 256, shape, dtype=np.uint8)).shape == (64, 64, 3)


def test_methods_agree_on_a_smooth_image():
    ys, xs = np.mgrid[0:720, 0:1280]
    image = np.dstack([xs * 255 // 1279, ys * 255 // 719, (xs + ys) * 255 // 1998]).astype(np.uint8)
    outs = [Preprocessor(112, 112, method=m)(image).astype(int) for m in RESIZE_METHODS]
    for out in outs[1:]:
        assert np.abs(out - outs[0]).max() <= 3


def test_unknown_method_names_the_field_and_the_choices():
    with pytest.raises(ConfigError, match=r"preprocess\.method 'cubic'.*area, linear, pyramid"):
        Preprocessor(224, 224, method="cubic")
    with pytest.raises(ConfigError):
        Preprocessor(0, 224)


@pytest.mark.parametrize(
    "image",
    [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 2), np.uint8), np.zeros((2, 10, 10, 3), np.uint8)],
    ids=["float", "two-channel", "batch"],
)
def test_unsupported_images_are_rejected(image):
    with pytest.raises(ValueError, match="uint8 image"):
        Preprocessor(8, 8)(image)
