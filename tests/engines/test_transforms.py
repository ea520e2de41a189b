"""emim_stream.engines.transforms: the resize-method check, fit_frame's crop geometry, the runtime's normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import (
    RESIZE_METHODS,
    ResizeMethod,
    check_resize,
    fit_frame,
)


def test_check_resize_takes_names_and_members_and_names_the_field():
    assert RESIZE_METHODS == ("area", "linear", "pyramid")
    for member in ResizeMethod:
        got = check_resize(member, "cameras[0].resize")
        assert got == member.value and type(got) is str  # a plain name, whatever came in
        assert check_resize(member.value, "cameras[0].resize") == member.value
    with pytest.raises(ConfigError, match=r"^cameras\[0\]\.resize 'cubic' is not supported; expected one of area, li"):
        check_resize("cubic", "cameras[0].resize")


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_fit_frame_keeps_the_centre_of_a_wide_frame(method):
    """A 40x20 frame to 20x20: scale 1, so the picture is the centre 20 columns, exactly, for every method."""
    image = np.broadcast_to(np.arange(40, dtype=np.uint8)[None, :, None], (20, 40, 3))
    out = fit_frame(image, 20, 20, method)
    np.testing.assert_array_equal(out[0, :, 0], np.arange(10, 30))
    assert out.flags.c_contiguous and not np.shares_memory(out, image)


def test_fit_frame_of_a_tall_frame_scales_the_centre_rows():
    """A 30x90 frame of horizontal bands to 10x10: the middle 30 rows (30..59) become 10 rows of 3 averaged rows."""
    rows = np.repeat(np.arange(90, dtype=np.uint8)[:, None], 30, axis=1)
    out = fit_frame(rows, 10, 10, "area")
    np.testing.assert_array_equal(out[:, 0], np.arange(30, 60).reshape(10, 3).mean(axis=1).round())


def test_fit_frame_does_not_copy_a_frame_that_is_already_the_output():
    image = np.arange(16 * 24 * 3, dtype=np.uint32).astype(np.uint8).reshape(16, 24, 3)
    out = fit_frame(image, 16, 24)
    assert np.shares_memory(out, image) and out.shape == image.shape
    np.testing.assert_array_equal(out, image)
