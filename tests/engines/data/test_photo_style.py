"""The synthetic scenes' ``photo`` style: determinism, disjoint pictures, class motions, H.264, specs.

Motion is measured as in test_synthetic.py (dense optical flow per moving region): the photo style's
camera pan, shake, flicker, blur and distractors must not hide which way the objects move.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

import emim_stream.engines.data.synthetic as synthetic
from emim_stream.engines.data.datasets import SyntheticClips, open_dataset
from emim_stream.engines.data.synthetic import (
    CLASSES,
    PHOTO_DIR,
    SyntheticScene,
    clip_seed,
    h264_roundtrip,
    render_clip,
)
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import fit_frame
from emim_stream.pipeline.capture.sources import SyntheticSource
from tests.engines.data.test_synthetic import _mean, _motion

SEEDS = [clip_seed("test", i) for i in range(4)]
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg command is not installed")


def test_photo_clip_is_deterministic_and_differs_from_classic():
    clip = render_clip("left", 5, 4, 60, 80, style="photo")
    assert clip.shape == (4, 60, 80, 3) and clip.dtype == np.uint8 and clip.flags.c_contiguous
    np.testing.assert_array_equal(clip, render_clip("left", 5, 4, 60, 80, style="photo"))
    assert not np.array_equal(clip, render_clip("left", 5, 4, 60, 80))
    assert not np.array_equal(clip, render_clip("left", 6, 4, 60, 80, style="photo"))
    assert clip.std() > 10


def test_photo_scene_frames_are_deterministic_in_any_order():
    scene = SyntheticScene(7, 48, 64, fps=20, segment_s=0.5, style="photo")
    frames = [scene.frame(i) for i in range(12)]
    again = SyntheticScene(7, 48, 64, fps=20, segment_s=0.5, style="photo")
    for i in (11, 2, 0, 7):
        np.testing.assert_array_equal(again.frame(i), frames[i])


def test_test_seeds_use_only_test_pictures_and_the_pools_share_no_picture(monkeypatch):
    digests = {
        pool: {hashlib.sha256(p.read_bytes()).hexdigest() for p in (PHOTO_DIR / pool).glob("*.jpg")}
        for pool in ("train", "test")
    }
    assert len(digests["train"]) >= 6 and len(digests["test"]) >= 3
    assert not digests["train"] & digests["test"]
    asked: list[str] = []
    real = synthetic._pictures
    monkeypatch.setattr(synthetic, "_pictures", lambda pool: asked.append(pool) or real(pool))
    for split in ("train", "val", "test"):
        render_clip("up", clip_seed(split, 3), 1, 32, 32, style="photo")
    SyntheticScene(1, 32, 32, style="photo").frame(0)
    assert asked == ["train", "train", "test", "train"]


@pytest.fixture(scope="module")
def photo_motion() -> dict[str, list[dict[str, float]]]:
    return {name: [_motion(render_clip(name, seed, 8, 96, 96, style="photo")) for seed in SEEDS] for name in CLASSES}


@pytest.mark.parametrize(("name", "axis", "sign"), [("left", "vx", -1), ("right", "vx", 1), ("up", "vy", -1),
                                                    ("down", "vy", 1)])
def test_photo_translation_moves_the_named_way(photo_motion, name, axis, sign):
    other = "vy" if axis == "vx" else "vx"
    for stats in photo_motion[name]:
        assert sign * stats[axis] > 0.5  # px per frame, every clip
        assert abs(stats[other]) < 0.3 * abs(stats[axis])


@pytest.mark.parametrize(("name", "key", "sign"), [("approach", "expansion", 1), ("recede", "expansion", -1),
                                                   ("rotate_cw", "spin", 1), ("rotate_ccw", "spin", -1)])
def test_photo_zoom_and_rotation_have_the_named_sign(photo_motion, name, key, sign):
    assert all(sign * stats[key] > 0.003 for stats in photo_motion[name])


def test_photo_static_moves_less_than_every_other_class(photo_motion):
    """Static photo scenes still move a little: camera pan and shake, swinging distractors."""
    slowest_moving = min(_mean(stats, "speed") for name, stats in photo_motion.items() if name != "static")
    assert _mean(photo_motion["static"], "speed") < 0.8 * slowest_moving
    for stats in photo_motion["static"]:
        assert abs(stats["vx"]) < 0.4 and abs(stats["vy"]) < 0.4  # px per frame; translations exceed 0.5


def _moving_objects_in_view(name: str, seed: int, times: np.ndarray, height: int = 240, width: int = 320) -> np.ndarray:
    """Per time, the share of the centred square view (what a square model input keeps) that the class's
    moving objects cover: the objects alone, drawn white on black, no camera, distractors or noise."""
    segment = synthetic._segment("photo", (seed,), CLASSES.index(name), height, width, seed, 1.0)
    paste = synthetic._paste

    def white(canvas, levels, *args):
        paste(canvas, tuple(np.dstack([np.full((*lv.shape[:2], 3), 255, np.uint8), lv[..., 3]]) for lv in levels),
              *args)

    side, margin = min(height, width), segment._margin
    top, left = margin + (height - side) // 2, margin + (width - side) // 2
    shares = []
    for t in times:
        canvas = np.zeros_like(segment._background)
        synthetic._paste = white
        try:
            for slot, obj in enumerate(segment._objects):
                segment._draw(canvas, slot, obj, float(t))
        finally:
            synthetic._paste = paste
        shares.append(canvas[top : top + side, left : left + side, 0].mean() / 255.0)
    return np.array(shares)


@pytest.mark.slow  # 30 s of six scenes per class
@pytest.mark.parametrize("name", CLASSES)
def test_photo_moving_objects_stay_in_the_square_view(name):
    """Objects start in the view and translations wrap around it: however long a scene runs, its moving objects
    are in view (a label whose motion the model cannot see would be noise in the data and the test split).
    Zooming objects fade out at the end of a cycle while the next fades in: a moment with little in view."""
    times = np.arange(0.0, 900.0, 3.0)  # 30 s at 30 fps: several crossings of the view
    for seed in range(6):
        shares = _moving_objects_in_view(name, clip_seed("test", seed), times)
        in_view = (shares > 0.002).mean()
        assert in_view > (0.95 if name in ("approach", "recede") else 0.999), (name, seed, in_view)
        assert shares[0] > 0.005  # in view from the start


@needs_ffmpeg
@pytest.mark.parametrize(("height", "width"), [(48, 64), (37, 51)])
def test_h264_roundtrip_keeps_the_picture_and_compresses(height, width):
    clip = render_clip("right", 2, 6, height, width, style="photo")
    out = h264_roundtrip(clip, 25.0, 30)
    assert out.shape == clip.shape and out.dtype == np.uint8
    error = np.abs(out.astype(np.int16) - clip).mean()
    assert 0.5 < error < 12.0, error  # lossy, but the same picture
    np.testing.assert_array_equal(out, h264_roundtrip(clip, 25.0, 30))
    stronger = np.abs(h264_roundtrip(clip, 25.0, 45).astype(np.int16) - clip).mean()
    assert stronger > error


@pytest.mark.parametrize(
    "call",
    [
        lambda: render_clip("left", 0, 2, 32, 32, style="painting"),
        lambda: render_clip("left", 0, 2, 32, 32, fps=0),
        lambda: SyntheticScene(0, 32, 32, style="Photo"),
        lambda: open_dataset("synthetic://?style=sketch", 3, 32, 32, train=False),
        lambda: SyntheticSource("synthetic://?style=sketch"),
    ],
)
def test_unknown_style_or_fps_raises_config_error(call):
    with pytest.raises(ConfigError, match="style|fps"):
        call()


@needs_ffmpeg
def test_mix_alternates_classic_and_photo_every_nine_clips():
    data = open_dataset("synthetic://?style=mix&split=val&n=18", 3, 32, 32, train=False)
    assert isinstance(data, SyntheticClips) and data.style == "mix" and "mix style" in data.describe()
    assert data.targets == [i % 9 for i in range(18)]
    for i in (0, 8):  # classic: exactly render_clip's clip prepared like camera frames
        raw = render_clip(i % 9, clip_seed("val", i), 3, 240, 320)
        expected = np.stack([fit_frame(f, 32, 32) for f in raw])
        np.testing.assert_array_equal(data[i][0].numpy(), expected)
    for i in (9, 17):  # photo: another picture of the same seed
        raw = render_clip(i % 9, clip_seed("val", i), 3, 240, 320)
        assert not np.array_equal(data[i][0].numpy(), np.stack([fit_frame(f, 32, 32) for f in raw]))


@needs_ffmpeg
def test_photo_data_set_is_deterministic_with_any_window():
    spec = "synthetic://?style=photo&split=test&n=9&window=any&size=160x120"
    one = open_dataset(spec, 9, 32, 32, train=False)
    two = open_dataset(spec, 9, 32, 32, train=False)
    for i in range(9):
        clip, label = one[i]
        assert clip.shape == (9, 32, 32, 3) and label == i
        np.testing.assert_array_equal(clip.numpy(), two[i][0].numpy())


def test_photo_source_films_the_photo_scene():
    source = SyntheticSource("synthetic://?seed=2&size=64x48&style=photo&label=down", pace=False)
    with source:
        frame = source.read().image
    expected = SyntheticScene(2, 48, 64, label="down", style="photo").frame(0)
    np.testing.assert_array_equal(frame[..., ::-1], expected)
