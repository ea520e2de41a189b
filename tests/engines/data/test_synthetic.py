"""emim_stream.engines.data.synthetic: determinism, shapes, class names, splits, and that every class moves as its
name says.

The motion checks measure dense optical flow (cv2.calcOpticalFlowFarneback) between consecutive frames
and, per connected moving region, its mean velocity and its first moments about the region's centroid:
``sum(v . d) / sum(|d|^2)`` (expansion rate, > 0 when growing) and ``sum(d x v) / sum(|d|^2)`` (spin,
> 0 clockwise on screen with y down). Overall speed is weighted by image-gradient energy, because flow
in flat, noisy regions is guesswork.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from emim_stream.engines.data.synthetic import (
    CLASSES,
    SPLITS,
    SyntheticScene,
    clip_seed,
    label_index,
    label_of,
    render_clip,
)
from emim_stream.engines.errors import ConfigError

SEEDS = [clip_seed("test", i) for i in range(4)]


def test_class_names_in_order():
    assert CLASSES == (
        "static", "left", "right", "up", "down", "approach", "recede", "rotate_cw", "rotate_ccw",
    )
    assert [label_index(name) for name in CLASSES] == list(range(9))
    assert label_index(3) == 3


def test_render_clip_shape_dtype_and_determinism():
    clip = render_clip("left", 5, 6, 40, 56)
    assert clip.shape == (6, 40, 56, 3)
    assert clip.dtype == np.uint8 and clip.flags.c_contiguous
    np.testing.assert_array_equal(clip, render_clip(1, 5, 6, 40, 56))  # by index or by name
    assert not np.array_equal(clip, render_clip("left", 6, 6, 40, 56))
    assert clip.std() > 10  # a textured picture, not a blank frame


@pytest.mark.parametrize(("height", "width"), [(8, 8), (9, 13), (120, 40), (37, 200)])
def test_render_clip_odd_sizes(height, width):
    for label in CLASSES:
        assert render_clip(label, 3, 4, height, width).shape == (4, height, width, 3)


def test_first_frame_does_not_depend_on_class():
    """Appearance comes from the seed alone: only motion tells the classes apart."""
    clips = {name: render_clip(name, 11, 3, 48, 64) for name in CLASSES}
    for name in CLASSES:
        np.testing.assert_array_equal(clips[name][0], clips["static"][0], err_msg=name)
    for name in CLASSES[1:]:
        moved = np.abs(clips[name][2].astype(int) - clips["static"][2]).mean()
        assert moved > 0.05, name


@pytest.mark.parametrize(
    "call",
    [
        lambda: render_clip("jump", 0, 4, 32, 32),
        lambda: render_clip(9, 0, 4, 32, 32),
        lambda: render_clip(True, 0, 4, 32, 32),
        lambda: render_clip("left", -1, 4, 32, 32),
        lambda: render_clip("left", 0, 0, 32, 32),
        lambda: render_clip("left", 0, 4, 4, 32),
        lambda: SyntheticScene(0, 32, 32, fps=0),
        lambda: SyntheticScene(0, 32, 32, segment_s=-1),
        lambda: SyntheticScene(0, 32, 32, label="sideways"),
        lambda: clip_seed("holdout", 0),
        lambda: clip_seed("train", -1),
        lambda: clip_seed("train", 1 << 40),
    ],
)
def test_invalid_arguments_raise_config_error(call):
    with pytest.raises(ConfigError):
        call()


def test_clip_seeds_of_splits_are_disjoint_and_labels_balanced():
    seeds = {split: {clip_seed(split, i) for i in range(5000)} for split in SPLITS}
    assert all(len(s) == 5000 for s in seeds.values())
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"] and not seeds["val"] & seeds["test"]
    counts = np.bincount([label_of(i) for i in range(900)], minlength=len(CLASSES))
    assert counts.tolist() == [100] * len(CLASSES)


# --- scene ------------------------------------------------------------------------------------------


def test_scene_frames_are_deterministic_in_any_order():
    forward = SyntheticScene(7, 48, 64, fps=30, segment_s=0.5)
    frames = [forward.frame(i) for i in range(20)]
    backward = SyntheticScene(7, 48, 64, fps=30, segment_s=0.5)
    for i in (19, 3, 200, 16, 0):
        expected = frames[i] if i < 20 else SyntheticScene(7, 48, 64, fps=30, segment_s=0.5).frame(i)
        np.testing.assert_array_equal(backward.frame(i), expected)
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8


def test_scene_schedule_visits_every_class_and_cuts_only_at_segment_ends():
    scene = SyntheticScene(2, 48, 64, fps=20, segment_s=0.25)  # 5 frames per segment
    assert scene.segment_frames == 5
    labels = [scene.label_at(i) for i in range(45)]
    per_segment = [labels[j * 5 : j * 5 + 5] for j in range(9)]
    assert all(len(set(seg)) == 1 for seg in per_segment)
    assert sorted(seg[0] for seg in per_segment) == sorted(CLASSES)
    frames = [scene.frame(i).astype(np.int16) for i in range(45)]
    steps = [np.abs(frames[i + 1] - frames[i]).mean() for i in range(44)]
    inside = [step for i, step in enumerate(steps) if (i + 1) % 5]
    cuts = [step for i, step in enumerate(steps) if not (i + 1) % 5]
    assert max(inside) < min(cuts)


def test_scene_with_a_label_keeps_it():
    scene = SyntheticScene(4, 32, 32, fps=10, label="recede", segment_s=1.0)
    assert {scene.label_at(i) for i in range(50)} == {"recede"}
    assert scene.class_at(0) == CLASSES.index("recede")


def test_scene_motion_is_per_second():
    """At 15 fps, frame k shows the same scene instant as frame 2k at 30 fps (only sensor noise differs)."""
    slow = SyntheticScene(9, 64, 64, fps=15, label="right", segment_s=10)
    fast = SyntheticScene(9, 64, 64, fps=30, label="right", segment_s=10)
    same_instant = np.abs(slow.frame(5).astype(int) - fast.frame(10)).mean()
    other_instant = np.abs(slow.frame(5).astype(int) - fast.frame(5)).mean()
    assert same_instant < 6 < other_instant


# --- motion per class --------------------------------------------------------------------------------


def _motion(clip: np.ndarray, threshold_px: float = 0.3) -> dict[str, float]:
    """Flow statistics of a clip: mean velocity, expansion and spin of moving regions, mean speed."""
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in clip]
    ys, xs = np.mgrid[0 : grey[0].shape[0], 0 : grey[0].shape[1]].astype(np.float32)
    sums = dict(vx=0.0, vy=0.0, expansion=0.0, spin=0.0)
    moving, speeds = 0, []
    for before, after in itertools.pairwise(grey):
        flow = cv2.calcOpticalFlowFarneback(before, after, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        speed = np.hypot(flow[..., 0], flow[..., 1])
        smooth = cv2.GaussianBlur(before, (5, 5), 0)
        energy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(smooth, cv2.CV_32F, 0, 1) ** 2
        speeds.append(float((speed * energy).sum() / energy.sum()))
        count, regions = cv2.connectedComponents((speed > threshold_px).astype(np.uint8))
        for region in range(1, count):
            inside = regions == region
            n = int(inside.sum())
            if n < 20:
                continue
            u, v = flow[..., 0][inside], flow[..., 1][inside]
            dx, dy = xs[inside] - xs[inside].mean(), ys[inside] - ys[inside].mean()
            spread = float((dx * dx + dy * dy).sum())
            sums["vx"] += u.sum()
            sums["vy"] += v.sum()
            sums["expansion"] += (u * dx + v * dy).sum() / spread * n
            sums["spin"] += (dx * v - dy * u).sum() / spread * n
            moving += n
    stats = {key: value / max(moving, 1) for key, value in sums.items()}
    stats["speed"] = float(np.mean(speeds))
    return stats


@pytest.fixture(scope="module")
def motion_stats() -> dict[str, list[dict[str, float]]]:
    return {name: [_motion(render_clip(name, seed, 8, 96, 96)) for seed in SEEDS] for name in CLASSES}


def _mean(stats: list[dict[str, float]], key: str) -> float:
    return float(np.mean([s[key] for s in stats]))


@pytest.mark.parametrize(
    ("name", "axis", "sign"),
    [("left", "vx", -1), ("right", "vx", 1), ("up", "vy", -1), ("down", "vy", 1)],
)
def test_translation_moves_the_named_way(motion_stats, name, axis, sign):
    other = "vy" if axis == "vx" else "vx"
    for stats in motion_stats[name]:
        assert sign * stats[axis] > 0.5  # px per frame, every clip
        assert abs(stats[other]) < 0.3 * abs(stats[axis])


@pytest.mark.parametrize(("name", "sign"), [("approach", 1), ("recede", -1)])
def test_zoom_grows_or_shrinks(motion_stats, name, sign):
    assert all(sign * stats["expansion"] > 0 for stats in motion_stats[name])
    assert sign * _mean(motion_stats[name], "expansion") > 0.006  # per frame
    assert abs(_mean(motion_stats[name], "spin")) < 0.3 * abs(_mean(motion_stats[name], "expansion"))


@pytest.mark.parametrize(("name", "sign"), [("rotate_cw", 1), ("rotate_ccw", -1)])
def test_rotation_turns_the_named_way(motion_stats, name, sign):
    assert all(sign * stats["spin"] > 0 for stats in motion_stats[name])
    assert sign * _mean(motion_stats[name], "spin") > 0.006  # rad per frame
    assert abs(_mean(motion_stats[name], "expansion")) < 0.3 * abs(_mean(motion_stats[name], "spin"))


def test_static_moves_much_less_than_every_other_class(motion_stats):
    slowest_moving = min(_mean(stats, "speed") for name, stats in motion_stats.items() if name != "static")
    assert _mean(motion_stats["static"], "speed") < 0.3 * slowest_moving
    for stats in motion_stats["static"]:
        assert stats["speed"] < 0.25  # px per frame: camera shake and noise only
        assert abs(stats["vx"]) < 0.15 and abs(stats["vy"]) < 0.15
