"""emim_stream.engines.data.augment: every symmetry against geometry, and the SymmetricClips training wrapper.

The reference is independent of the label tables: a textured picture is moved by a known affine
motion per frame (translation, log-scale, rotation about the centre), and the symmetry's effect on that
motion is worked out from the matrices (a mirror ``P`` turns the motion ``M`` into ``P M P^-1``; time
reversal inverts it). The transformed clip must equal the clip rendered with that motion (pixels, by
OpenCV flips) and its label must be the class of that motion (by the signs of its parameters).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from emim_stream.engines.data.augment import SYMMETRIES, SymmetricClips, Symmetry
from emim_stream.engines.data.datasets import SyntheticClips
from emim_stream.engines.data.synthetic import CLASSES
from emim_stream.engines.errors import ConfigError

SIZE, FRAMES = 48, 5
CENTRE = (SIZE - 1) / 2.0
# class -> per-frame (dx, dy, log-scale, angle); angle > 0 turns clockwise on screen (image y down)
MOTION = {
    "static": (0.0, 0.0, 0.0, 0.0), "left": (-1.5, 0.0, 0.0, 0.0), "right": (1.5, 0.0, 0.0, 0.0),
    "up": (0.0, -1.5, 0.0, 0.0), "down": (0.0, 1.5, 0.0, 0.0), "approach": (0.0, 0.0, 0.06, 0.0),
    "recede": (0.0, 0.0, -0.06, 0.0), "rotate_cw": (0.0, 0.0, 0.0, 0.08), "rotate_ccw": (0.0, 0.0, 0.0, -0.08),
}


def picture(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    image[8:14, 8:30] = 255  # an asymmetric mark
    return image


def frame_matrix(motion: np.ndarray, k: int) -> np.ndarray:
    """The 3x3 motion after k frames: about the centre, scale and rotate, then translate."""
    dx, dy, log_scale, angle = motion
    s, a = np.exp(k * log_scale), k * angle
    rs = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([CENTRE, CENTRE])
    out = np.eye(3)
    out[:2, :2] = rs
    out[:2, 2] = c - rs @ c + k * np.array([dx, dy])
    return out


def render(image: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    return np.stack([cv2.warpAffine(image, m[:2], (SIZE, SIZE), flags=cv2.INTER_LINEAR) for m in matrices])


def mirror(symmetry: Symmetry) -> np.ndarray:
    """The spatial part of ``symmetry`` as a 3x3 map of pixel coordinates (x, y, 1)."""
    steps = []
    if symmetry.transpose:
        steps.append(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float))
    if symmetry.flip_x:
        steps.append(np.array([[-1, 0, SIZE - 1], [0, 1, 0], [0, 0, 1]], float))
    if symmetry.flip_y:
        steps.append(np.array([[1, 0, 0], [0, -1, SIZE - 1], [0, 0, 1]], float))
    out = np.eye(3)
    for step in steps:
        out = step @ out
    return out


def mirror_pixels(image: np.ndarray, symmetry: Symmetry) -> np.ndarray:
    if symmetry.transpose:
        image = cv2.transpose(image)
    if symmetry.flip_x:
        image = cv2.flip(image, 1)
    if symmetry.flip_y:
        image = cv2.flip(image, 0)
    return image


def class_of(step: np.ndarray) -> str:
    """The class of a one-frame motion matrix, by the signs of its translation, scale and rotation."""
    rs = step[:2, :2]
    scale = np.sqrt(abs(np.linalg.det(rs)))
    angle = np.arctan2(rs[1, 0], rs[0, 0])
    shift = step[:2, 2] - (np.eye(2) - rs) @ np.array([CENTRE, CENTRE])
    if abs(np.log(scale)) > 1e-6:
        return "approach" if scale > 1 else "recede"
    if abs(angle) > 1e-6:
        return "rotate_cw" if angle > 0 else "rotate_ccw"
    if np.abs(shift).max() < 1e-6:
        return "static"
    if abs(shift[0]) > abs(shift[1]):
        return "right" if shift[0] > 0 else "left"
    return "down" if shift[1] > 0 else "up"


def _name(s: Symmetry) -> str:
    return f"t{s.transpose:d}x{s.flip_x:d}y{s.flip_y:d}r{s.reverse:d}"


@pytest.mark.parametrize("symmetry", SYMMETRIES, ids=_name)
def test_each_symmetry_shows_the_motion_its_label_names(symmetry):
    image = picture()
    p = mirror(symmetry)
    for name, motion in MOTION.items():
        matrices = [frame_matrix(np.array(motion), k) for k in range(FRAMES)]
        clip = torch.from_numpy(render(image, matrices))
        seen = symmetry.apply(clip).numpy()

        conjugated = [p @ m @ np.linalg.inv(p) for m in matrices]
        expected = render(mirror_pixels(image, symmetry), conjugated)
        if symmetry.reverse:
            expected = expected[::-1]
        assert np.abs(seen.astype(int) - expected.astype(int)).max() <= 1, (symmetry, name)

        step = p @ matrices[1] @ np.linalg.inv(p)  # one frame of the mirrored motion
        if symmetry.reverse:
            step = np.linalg.inv(step)
        assert class_of(matrices[1]) == name
        assert symmetry.label(name) == class_of(step), (symmetry, name)


def test_symmetries_form_a_group_on_the_labels():
    identity = Symmetry()
    assert all(identity.label(n) == n for n in CLASSES)
    for s in SYMMETRIES:
        assert sorted(s.label(n) for n in CLASSES) == sorted(CLASSES)  # a permutation
        assert s.label("static") == "static"
    assert len(set(SYMMETRIES)) == 16
    with pytest.raises(ConfigError, match="wave"):
        identity.label("wave")


def test_symmetric_clips_are_seeded_per_item_and_epoch_and_use_every_symmetry():
    base = SyntheticClips("train", 9, 3, 32, 32, source_size=(40, 40))
    data = SymmetricClips(base, seed=4)
    first = [data[i] for i in range(9)]
    again = [data[i] for i in range(9)]
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again, strict=True))
    picks = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        for i in range(9):
            clip, label = data[i]
            raw, raw_label = base[i]
            match = [s for s in data.symmetries if torch.equal(s.apply(raw), clip)
                     and CLASSES.index(s.label(CLASSES[raw_label])) == label]
            assert match, (epoch, i)
            picks.update(match)
    assert len(picks) == 16
    assert data.targets == base.targets


def test_non_square_clips_are_never_transposed_and_unknown_labels_are_refused():
    wide = SymmetricClips(SyntheticClips("train", 2, 3, 32, 64, source_size=(64, 32)), seed=0)
    assert len(wide.symmetries) == 8 and not any(s.transpose for s in wide.symmetries)

    waves = SyntheticClips("train", 2, 3, 32, 32)
    waves.labels = ("static", "wave")
    with pytest.raises(ConfigError, match="nine motion classes.*wave"):
        SymmetricClips(waves, seed=0)
