"""Synthetic motion scenes: the demo camera (``synthetic://``) and the demo model's data set, written once.

A scene is 1-3 randomly shaped, randomly textured objects (noise, stripes, checkers; random colours)
over a random textured background, seen by a slightly shaky camera with sensor noise. Every object
of a clip moves with the clip's class motion (:data:`CLASSES`), each at its own speed:

- ``static``: objects stay put (only camera shake and sensor noise change the picture);
- ``left`` / ``right`` / ``up`` / ``down``: translation in image coordinates; the view wraps around
  (an object leaving one edge re-enters at the opposite one), so motion is endless and continuous;
- ``approach`` / ``recede``: the object grows / shrinks about its centre at a constant log rate; it
  cycles through the radius range, fading out at one end while a new object fades in at the other;
- ``rotate_cw`` / ``rotate_ccw``: rotation about the object's centre, clockwise / counter-clockwise as
  seen on screen (image y pointing down).

Appearance is drawn from the seed alone, never from the class: for one seed, frame 0 is the same
picture whatever the class, so only motion tells the classes apart. Sizes are fractions of
``S = min(height, width)``; motion is defined per frame at :data:`REFERENCE_FPS` and is a continuous
function of time, so a scene at another frame rate samples the same motion in time. Camera shake is
a smooth, zero-mean sub-pixel wobble, several times slower than the slowest object.

Two styles (:data:`STYLES`). ``classic`` is the above. ``photo`` cuts the objects, with soft masks,
from photographs and lays them over a photograph (:data:`PHOTO_DIR`; seeds of the test split use
only the ``test`` pictures, every other seed only the ``train`` ones, so held-out pictures are
never seen in training), places the moving objects in the centred square that a square model input
keeps of the frame, often partly outside it (translations wrap around that square, so a moving object
never travels through the cropped margins unseen), adds 0-2 small distractor objects
swinging slowly to and fro, a slow camera pan and stronger shake, motion blur (a shutter open for
part of the frame interval), lighting flicker and drift, and more sensor noise. The class motions
are the same. :func:`h264_roundtrip` puts frames through an H.264 encode and decode.

Everything is numpy + OpenCV and deterministic: the same arguments give the same pixels.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emim_stream.engines.data.classes import SYNTHETIC_CLASSES
from emim_stream.engines.errors import ConfigError, EmimError

__all__ = [
    "CLASSES",
    "PHOTO_DIR",
    "REFERENCE_FPS",
    "SEGMENT_S",
    "SPLITS",
    "STYLES",
    "SyntheticScene",
    "clip_seed",
    "h264_roundtrip",
    "label_index",
    "label_of",
    "render_clip",
]

CLASSES = SYNTHETIC_CLASSES
REFERENCE_FPS = 30.0
"""Frame rate at which the motion constants below are defined (and at which clips are rendered)."""
SEGMENT_S = 4.0
"""Default length of a scene segment in seconds (one class per segment): the live source's and the data sets'."""
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
"""Data-set split -> block of clip seeds; blocks are disjoint (see :func:`clip_seed`)."""
STYLES: tuple[str, ...] = ("classic", "photo")
"""Scene appearance: drawn textures (``classic``) or photographs seen by a realistic camera (``photo``)."""
PHOTO_DIR = Path(__file__).with_name("photos")
"""The ``photo`` style's pictures: ``train/`` and ``test/`` JPEGs (sources and licences in its README.md)."""

_SEEDS_PER_SPLIT = 1 << 40
_CLIP_TAG, _SCENE_TAG, _SCHEDULE_TAG = 0x5EC11B, 0x5E5CE7, 0x5E5C4D  # keep the random streams apart
_MIN_SIZE = 8

# Scene constants. Lengths are fractions of S = min(height, width), times are reference frames.
_RADIUS = (0.10, 0.34)  # object radius range (log-uniform); zooming objects cycle through it
_LOG_SPAN = math.log(_RADIUS[1] / _RADIUS[0])
_FADE = 0.12  # log-radius band at each end of the range over which an object fades in / out
_SPEED = (0.015, 0.03)  # a clip's base speed, S per frame (translations, and the rims of spinning objects)
_OBJECT_SPEED = (0.8, 1.25)  # per-object factor on the base speed
_ZOOM_GAIN = 2.0  # log-radius change per frame per unit of speed
_MAX_SPIN = 0.35  # rad per frame; far below the 45 degrees at which a 4-fold texture would alias
_SHAKE = 0.003  # largest shake amplitude, S; shake speed <= 0.0015 S per frame, 8x below the slowest object
_SHAKE_FREQ = (0.01, 0.08)  # shake frequencies, cycles per frame
_NOISE = (1.0, 5.0)  # sensor-noise standard deviation, uint8 levels
_NOISE_PAD = 32  # the noise field is this much larger than a frame; each frame reads a shifted window

# Photo style (same units). Camera motion stays well below the slowest object (0.012 S per frame).
_PAN = 0.06  # largest pan excursion per axis, S: a slow sinusoid, at most 0.002 S per frame
_PAN_PERIOD = (190.0, 400.0)  # reference frames
_PHOTO_SHAKE = 0.006  # largest shake amplitude, S
_PHOTO_SHAKE_FREQ = (0.01, 0.1)
_PHOTO_NOISE = (1.0, 8.0)
_FLICKER = 0.06  # largest fast gain ripple (mains flicker beating with the frame rate)
_FLICKER_FREQ = (0.05, 0.45)  # cycles per frame
_DRIFT = 0.12  # largest slow exposure drift
_DRIFT_PERIOD = (60.0, 240.0)  # reference frames
_SHUTTER = (0.0, 0.8)  # exposure as a share of the frame interval (motion blur)
_BLUR_TAPS = 3  # most sub-frame renders averaged for motion blur
_DISTRACTORS = 3  # 0..2 distractor objects
_DISTRACTOR_RADIUS = (0.04, 0.09)
_SWING = (0.01, 0.04)  # distractor swing amplitude, S; with _SWING_RATE at most 0.006 S per frame
_SWING_RATE = (0.03, 0.15)  # rad per frame
_MIN_LUMA_GAP = 15.0  # an object's mean luma differs from the background's by at least this
_PHOTO_TAG = 0x9407

_TRANSLATIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_ZOOMS = {"approach": 1.0, "recede": -1.0}
_SPINS = {"rotate_cw": 1.0, "rotate_ccw": -1.0}


def label_index(label: int | str) -> int:
    """The index in :data:`CLASSES` of a class given by index or name.

    Raises:
        ConfigError: unknown name or index out of range.
    """
    if isinstance(label, str):
        if label in CLASSES:
            return CLASSES.index(label)
        raise ConfigError(f"unknown synthetic class {label!r}; expected one of {', '.join(CLASSES)}")
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(CLASSES):
        return int(label)
    raise ConfigError(f"synthetic class index {label!r} out of range 0..{len(CLASSES) - 1}")


def label_of(index: int) -> int:
    """Class index of clip ``index`` of a data set: classes in turn, so any 9 consecutive clips are balanced."""
    return index % len(CLASSES)


def clip_seed(split: str, index: int) -> int:
    """Seed of clip ``index`` of ``split`` ('train', 'val' or 'test'); the splits' seeds never overlap.

    Raises:
        ConfigError: unknown split, or ``index`` outside ``[0, 2**40)``.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown data-set split {split!r}; expected one of {', '.join(SPLITS)}")
    if not 0 <= index < _SEEDS_PER_SPLIT:
        raise ConfigError(f"clip index {index} out of range 0..{_SEEDS_PER_SPLIT - 1}")
    return SPLITS[split] * _SEEDS_PER_SPLIT + index


def render_clip(
    label: int | str, seed: int, frames: int, height: int, width: int,
    style: str = "classic", fps: float = REFERENCE_FPS,
) -> np.ndarray:
    """Render one clip of class ``label``.

    Args:
        label: class index or name (:data:`CLASSES`).
        seed: non-negative seed; the appearance depends on it alone, the motion on it and the class.
        frames: number of frames T.
        height, width: frame size in pixels (at least 8).
        style: ``'classic'`` or ``'photo'`` (:data:`STYLES`).
        fps: frame rate the motion is sampled at (defined per second at :data:`REFERENCE_FPS`).

    Returns:
        ``[T, height, width, 3]`` uint8 RGB, C-contiguous; the same arguments give the same array.

    Raises:
        ConfigError: invalid class, seed or size.
    """
    index = label_index(label)
    _check_seed(seed)
    _check_size(height, width)
    if frames < 1:
        raise ConfigError(f"a clip needs at least 1 frame, got frames={frames}")
    _check_fps(fps)
    step = REFERENCE_FPS / fps
    segment = _segment(style, (_CLIP_TAG, seed), index, height, width, seed, step)
    clip = np.empty((frames, height, width, 3), np.uint8)
    for k in range(frames):
        segment.render(k * step, k, clip[k])
    return clip


def h264_roundtrip(frames: np.ndarray, fps: float, crf: int) -> np.ndarray:
    """Frames after an H.264 encode (libx264 by the ffmpeg command, yuv420p) and an OpenCV decode.

    Args:
        frames: ``[T, H, W, 3]`` uint8 RGB.
        fps: frame rate written into the stream.
        crf: x264 constant rate factor (higher: stronger compression).

    Returns:
        ``[T, H, W, 3]`` uint8 RGB; deterministic (one encoder thread).

    Raises:
        EmimError: no ffmpeg command, or the encode or decode failed.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise EmimError("H.264 clips need the ffmpeg command, which is not installed (make system-deps)")
    count, height, width = frames.shape[:3]
    with tempfile.TemporaryDirectory(prefix="emim-h264-") as folder:
        path = Path(folder) / "clip.mp4"
        command = [
            ffmpeg, "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-r", f"{fps:g}", "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264",
            "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p", "-threads", "1", str(path),
        ]
        done = subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
        if done.returncode:
            reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise EmimError(f"ffmpeg could not encode an H.264 clip: {reason[0]}")
        capture = cv2.VideoCapture(str(path))
        decoded: list[np.ndarray] = []
        while len(decoded) < count:
            ok, bgr = capture.read()
            if not ok:
                break
            decoded.append(cv2.cvtColor(bgr[:height, :width], cv2.COLOR_BGR2RGB))
        capture.release()
    if len(decoded) != count:
        raise EmimError(f"an H.264 clip of {count} frames decoded to {len(decoded)} frames")
    return np.stack(decoded)


class SyntheticScene:
    """An endless synthetic scene, frame by frame, as a live camera sees it.

    Time is cut into segments of ``segment_s`` seconds; each segment is a fresh scene (new seed-derived
    objects and background) whose class is ``label`` or, when ``label`` is None, the next entry of a
    seeded schedule that visits every class once per ``len(CLASSES)`` segments in shuffled order.
    Motion is continuous inside a segment; segment boundaries are cuts. ``frame(i)`` depends only on
    the constructor arguments and ``i`` (the current segment is cached, so sequential reads are cheap).

    Args:
        seed: non-negative scene seed.
        height, width: frame size in pixels (at least 8).
        fps: frame rate the scene is sampled at; motion speeds are per second (defined at 30 fps).
        label: class index or name for every segment; a sequence of them, taken in turn, one per segment (and
            repeated); or None to cycle through the classes.
        segment_s: segment length in seconds.
        style: ``'classic'`` or ``'photo'`` (:data:`STYLES`).

    Raises:
        ConfigError: invalid argument.
    """

    def __init__(
        self,
        seed: int,
        height: int,
        width: int,
        fps: float = REFERENCE_FPS,
        label: int | str | Sequence[int | str] | None = None,
        segment_s: float = SEGMENT_S,
        style: str = "classic",
    ) -> None:
        _check_seed(seed)
        _check_size(height, width)
        _check_fps(fps)
        _check_style(style)
        if not (math.isfinite(segment_s) and segment_s > 0):
            raise ConfigError(f"synthetic scene segment_s must be > 0, got {segment_s}")
        self.seed = seed
        self.height = height
        self.width = width
        self.fps = float(fps)
        self.style = style
        self.segment_frames = max(1, round(segment_s * fps))
        if label is None or (not isinstance(label, (str, int, np.integer)) and not len(label)):
            self._schedule = None
        else:
            self._schedule = tuple(map(label_index, [label] if isinstance(label, (str, int, np.integer)) else label))
        self._time_per_frame = REFERENCE_FPS / self.fps
        self._cached: tuple[int, _Segment] | None = None

    def class_at(self, i: int) -> int:
        """Class index of frame ``i``."""
        segment = i // self.segment_frames
        if self._schedule is not None:
            return self._schedule[segment % len(self._schedule)]
        block, slot = divmod(segment, len(CLASSES))
        order = np.random.default_rng([_SCHEDULE_TAG, self.seed, block]).permutation(len(CLASSES))
        return int(order[slot])

    def label_at(self, i: int) -> str:
        """Class name of frame ``i``."""
        return CLASSES[self.class_at(i)]

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` (``i >= 0``) as ``[height, width, 3]`` uint8 RGB."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        j, k = divmod(i, self.segment_frames)
        if self._cached is None or self._cached[0] != j:
            entropy = (_SCENE_TAG, self.seed, j)
            segment = _segment(self.style, entropy, self.class_at(i), self.height, self.width, self.seed,
                               self._time_per_frame)
            self._cached = (j, segment)
        out = np.empty((self.height, self.width, 3), np.uint8)
        self._cached[1].render(k * self._time_per_frame, k, out)
        return out


# ---------------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True, slots=True)
class _Object:
    """One textured object. ``levels``: RGBA patch [P, P, 4] uint8 (shape in alpha) and 2 pyrDown levels."""

    levels: tuple[np.ndarray, ...]
    x: float  # centre at t=0, view pixels
    y: float
    phase: float  # log-radius position in _RADIUS at t=0, in [0, 1)
    theta: float  # angle at t=0, radians, clockwise on screen


class _Segment:
    """One class, one set of objects; ``render(t)`` is a continuous function of time ``t`` (reference frames)."""

    def __init__(self, entropy: tuple[int, ...], label: int, height: int, width: int) -> None:
        self._entropy = entropy
        self._name = CLASSES[label]
        self._h, self._w = height, width
        self._s = min(height, width)
        # Patch half-size: the largest radius; a multiple of 4 pixels keeps pyrDown levels centred.
        self._patch_r = max(8, 4 * math.ceil(_RADIUS[1] * self._s / 4))
        self._margin = math.ceil(_SHAKE * self._s) + 2
        self._wrap = ((0.0, float(width)), (0.0, float(height)))  # per axis, (start, span) translations wrap in
        self._cycles: dict[tuple[int, int], _Object] = {}

        # Everything below is drawn in a fixed order that does not depend on the class.
        rng = np.random.default_rng([*entropy])
        bg_h, bg_w = height + 2 * self._margin, width + 2 * self._margin
        colours = _colours(rng, contrast=(15.0, 70.0))
        self._background = _paint(_pattern(rng, bg_h, bg_w, self._s * rng.uniform(0.03, 0.25)), colours)
        self._background_luma = _luma(colours).mean()
        self._shake_amp = rng.uniform(0.0, _SHAKE) * self._s / 3.0  # three sines: |shake| <= _SHAKE * S
        self._shake_freq = rng.uniform(*_SHAKE_FREQ, size=(2, 3)) * 2.0 * math.pi
        self._shake_phase = rng.uniform(0.0, 2.0 * math.pi, size=(2, 3))
        self._noise = _NoiseField(rng, _NOISE, height, width)
        self._start_objects(rng)

    def render(self, t: float, k: int, out: np.ndarray) -> None:
        """Write the frame at time ``t`` (reference frames) into ``out`` [H, W, 3] uint8; ``k`` keys the noise."""
        canvas = self._background.copy()
        for slot, obj in enumerate(self._objects):
            self._draw(canvas, slot, obj, t)
        shake = self._shake_amp * np.sin(self._shake_freq * t + self._shake_phase).sum(axis=1)
        move = np.array([[1.0, 0.0, self._margin + shake[0]], [0.0, 1.0, self._margin + shake[1]]])
        cv2.warpAffine(canvas, move, (self._w, self._h), dst=out, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        self._noise.add_to(out, k)

    def _draw(self, canvas: np.ndarray, slot: int, obj: _Object, t: float) -> None:
        speed = self._speeds[slot]
        x, y, phase, theta = obj.x, obj.y, obj.phase, obj.theta
        if self._name in _ZOOMS:
            u = phase + _ZOOMS[self._name] * _ZOOM_GAIN * speed * t / _LOG_SPAN
            cycle = math.floor(u)
            if cycle:
                obj = self._cycle_object(slot, cycle)
                x, y, theta = obj.x, obj.y, obj.theta
            phase = u - cycle
        radius = self._s * _RADIUS[0] * math.exp(phase * _LOG_SPAN)
        alpha = min(1.0, phase * _LOG_SPAN / _FADE, (1.0 - phase) * _LOG_SPAN / _FADE)
        if alpha <= 0.0:
            return
        if self._name in _SPINS:
            theta += _SPINS[self._name] * min(_MAX_SPIN, speed * self._s / radius) * t
        centres = [(x, y)]
        if self._name in _TRANSLATIONS:
            # The view wraps around along the motion: an object leaving one edge enters at the other.
            dx, dy = _TRANSLATIONS[self._name]
            (x_lo, x_span), (y_lo, y_span) = self._wrap
            if dx:
                x = x_lo + (x - x_lo + dx * speed * self._s * t) % x_span
                centres = [(x, y), (x - x_span if x > x_lo + x_span / 2 else x + x_span, y)]
            else:
                y = y_lo + (y - y_lo + dy * speed * self._s * t) % y_span
                centres = [(x, y), (x, y - y_span if y > y_lo + y_span / 2 else y + y_span)]
        for cx, cy in centres:
            _paste(canvas, obj.levels, cx + self._margin, cy + self._margin, radius / self._patch_r, theta, alpha)

    def _start_objects(self, rng: np.random.Generator) -> None:
        """Draw 1-3 objects, their speeds around one base speed, each starting fully visible."""
        count = int(rng.integers(1, 4))
        base_speed = rng.uniform(*_SPEED)
        self._speeds = base_speed * rng.uniform(*_OBJECT_SPEED, size=count)
        opaque = _FADE / _LOG_SPAN  # start every object fully visible, whatever the class
        self._objects = [self._new_object(rng, rng.uniform(opaque, 1.0 - opaque)) for _ in range(count)]

    def _cycle_object(self, slot: int, cycle: int) -> _Object:
        """The object that takes ``slot``'s place in zoom cycle ``cycle`` (seeded, drawn once)."""
        key = (slot, cycle)
        if key not in self._cycles:
            if len(self._cycles) >= 8:  # keep the few that are on screen, forget the oldest
                del self._cycles[next(iter(self._cycles))]
            rng = np.random.default_rng([*self._entropy, slot, cycle % (1 << 32)])
            self._cycles[key] = self._new_object(rng, 0.5)
        return self._cycles[key]

    def _new_object(self, rng: np.random.Generator, phase: float) -> _Object:
        size = 2 * self._patch_r
        radius = self._s * _RADIUS[0] * math.exp(phase * _LOG_SPAN)
        colours = _colours(rng, contrast=(50.0, 255.0), avoid_luma=self._background_luma)
        texture = _paint(_pattern(rng, size, size, self._patch_r * math.exp(rng.uniform(-2.8, -1.2))), colours)
        mask = _shape(rng, size, self._patch_r - 2)
        patch = np.dstack([texture, mask])
        levels = (patch, cv2.pyrDown(patch), cv2.pyrDown(cv2.pyrDown(patch)))
        x = rng.uniform(0.6 * radius, max(0.6 * radius, self._w - 0.6 * radius))
        y = rng.uniform(0.6 * radius, max(0.6 * radius, self._h - 0.6 * radius))
        return _Object(levels, x, y, phase, rng.uniform(0.0, 2.0 * math.pi))


def _segment(style: str, entropy: tuple[int, ...], label: int, height: int, width: int,
             seed: int, frame_time: float) -> _Segment:
    """A segment of ``style``; ``frame_time`` (reference frames per frame) sets the photo style's motion blur."""
    _check_style(style)
    if style == "classic":
        return _Segment(entropy, label, height, width)
    pool = "test" if seed // _SEEDS_PER_SPLIT == SPLITS["test"] else "train"
    return _PhotoSegment(entropy, label, height, width, _pictures(pool), frame_time)


@dataclass(frozen=True, slots=True)
class _Distractor:
    """A small object swinging to and fro about (x, y) on an ellipse; it never leaves its neighbourhood."""

    levels: tuple[np.ndarray, ...]
    x: float
    y: float
    scale: float  # radius / patch half-size
    swing: tuple[float, float]  # amplitudes, view pixels
    rate: float  # rad per reference frame
    phase: float
    theta: float
    front: bool  # drawn over the moving objects


class _PhotoSegment(_Segment):
    """The ``photo`` style: photographed objects and background, a realistic camera (see the module docstring)."""

    def __init__(self, entropy: tuple[int, ...], label: int, height: int, width: int,
                 pictures: tuple[np.ndarray, ...], frame_time: float) -> None:
        self._entropy = (*entropy, _PHOTO_TAG)
        self._name = CLASSES[label]
        self._h, self._w = height, width
        self._s = min(height, width)
        self._patch_r = max(8, 4 * math.ceil(_RADIUS[1] * self._s / 4))
        # The centred S x S square is what a square model input keeps of the frame (cover and centre-crop).
        # Objects start with their centre in it and translations wrap around it (leaving it at one edge while
        # entering at the other), so the moving objects are in the model's view, not in the cropped margins.
        self._view = ((width - self._s) / 2.0, (height - self._s) / 2.0)
        self._wrap = ((self._view[0], float(self._s)), (self._view[1], float(self._s)))
        self._pictures = pictures
        self._cycles: dict[tuple[int, int], _Object] = {}

        rng = np.random.default_rng([*self._entropy])
        self._pan_amp = rng.uniform(0.0, _PAN, size=2) * self._s
        self._pan_rate = 2.0 * math.pi / rng.uniform(*_PAN_PERIOD, size=2)
        self._pan_phase = rng.uniform(0.0, 2.0 * math.pi, size=2)
        self._shake_amp = rng.uniform(0.0, _PHOTO_SHAKE) * self._s / 3.0
        self._shake_freq = rng.uniform(*_PHOTO_SHAKE_FREQ, size=(2, 3)) * 2.0 * math.pi
        self._shake_phase = rng.uniform(0.0, 2.0 * math.pi, size=(2, 3))
        self._margin = math.ceil(_PAN * self._s + _PHOTO_SHAKE * self._s) + 2
        bg_h, bg_w = height + 2 * self._margin, width + 2 * self._margin
        self._background = _photo_crop(rng, pictures, bg_h, bg_w, (0.45, 1.0))
        if rng.random() < 0.3:  # out of focus
            cv2.GaussianBlur(self._background, (0, 0), rng.uniform(0.8, 2.5), dst=self._background)
        self._background_luma = float(_luma(self._background.reshape(-1, 3).mean(axis=0)))
        self._flicker = (rng.uniform(0.0, _FLICKER), rng.uniform(*_FLICKER_FREQ) * 2.0 * math.pi,
                         rng.uniform(0.0, 2.0 * math.pi))
        self._drift = (rng.uniform(0.0, _DRIFT), 2.0 * math.pi / rng.uniform(*_DRIFT_PERIOD),
                       rng.uniform(0.0, 2.0 * math.pi))
        self._shutter = rng.uniform(*_SHUTTER) * frame_time
        self._noise = _NoiseField(rng, _PHOTO_NOISE, height, width)
        self._start_objects(rng)
        self._distractors = [self._new_distractor(rng) for _ in range(int(rng.integers(_DISTRACTORS)))]
        blur_px = self._shutter * float(self._speeds.max()) * self._s  # longest streak, view pixels
        self._taps = min(_BLUR_TAPS, 1 + math.floor(blur_px / 2.0))

    def render(self, t: float, k: int, out: np.ndarray) -> None:
        """Write the frame at time ``t`` (reference frames) into ``out`` [H, W, 3] uint8; ``k`` keys the noise."""
        if self._taps == 1:
            canvas = self._compose(t)
        else:
            offsets = np.linspace(-0.5, 0.5, self._taps) * self._shutter
            total = sum(self._compose(t + d).astype(np.float32) for d in offsets)
            canvas = (total * np.float32(1.0 / self._taps) + np.float32(0.5)).astype(np.uint8)
        pan = self._pan_amp * (np.sin(self._pan_rate * t + self._pan_phase) - np.sin(self._pan_phase))
        shake = pan + self._shake_amp * np.sin(self._shake_freq * t + self._shake_phase).sum(axis=1)
        move = np.array([[1.0, 0.0, self._margin + shake[0]], [0.0, 1.0, self._margin + shake[1]]])
        cv2.warpAffine(canvas, move, (self._w, self._h), dst=out, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        (f_amp, f_rate, f_phase), (d_amp, d_rate, d_phase) = self._flicker, self._drift
        gain = 1.0 + f_amp * math.sin(f_rate * k + f_phase) + d_amp * math.sin(d_rate * t + d_phase)
        cv2.convertScaleAbs(out, dst=out, alpha=gain)
        self._noise.add_to(out, k)

    def _compose(self, t: float) -> np.ndarray:
        canvas = self._background.copy()
        for front in (False, True):
            for item in self._distractors:
                if item.front == front:
                    angle = item.rate * t + item.phase
                    x = item.x + item.swing[0] * math.cos(angle) + self._margin
                    y = item.y + item.swing[1] * math.sin(angle) + self._margin
                    _paste(canvas, item.levels, x, y, item.scale, item.theta + 0.1 * math.sin(angle), 1.0)
            if not front:
                for slot, obj in enumerate(self._objects):
                    self._draw(canvas, slot, obj, t)
        return canvas

    def _new_object(self, rng: np.random.Generator, phase: float) -> _Object:
        levels = self._photo_levels(rng)
        x, y = (rng.uniform(start, start + self._s) for start in self._view)  # up to half outside the view
        return _Object(levels, x, y, phase, rng.uniform(0.0, 2.0 * math.pi))

    def _new_distractor(self, rng: np.random.Generator) -> _Distractor:
        levels = self._photo_levels(rng)
        radius = rng.uniform(*_DISTRACTOR_RADIUS) * self._s
        swing = (rng.uniform(*_SWING) * self._s, rng.uniform(*_SWING) * self._s)
        rate = rng.uniform(*_SWING_RATE) * rng.choice([-1.0, 1.0])
        return _Distractor(levels, rng.uniform(0.0, self._w), rng.uniform(0.0, self._h), radius / self._patch_r,
                           swing, rate, rng.uniform(0.0, 2.0 * math.pi), rng.uniform(0.0, 2.0 * math.pi),
                           bool(rng.random() < 0.5))

    def _photo_levels(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """An RGBA patch cut from a photograph with a soft-edged random shape, and 2 pyrDown levels."""
        size = 2 * self._patch_r
        texture = _photo_crop(rng, self._pictures, size, size, (0.2, 0.8))
        luma = float(_luma(texture.reshape(-1, 3).mean(axis=0)))
        gap = luma - self._background_luma
        if abs(gap) < _MIN_LUMA_GAP:  # keep the object visible: lift or lower it away from the background
            lift = math.copysign(_MIN_LUMA_GAP, gap if gap else rng.uniform(-1.0, 1.0)) - gap
            texture = np.clip(texture.astype(np.int16) + round(lift), 0, 255).astype(np.uint8)
        soft = rng.uniform(0.5, 3.0)  # edge softness, patch pixels
        mask = _shape(rng, size, self._patch_r - 2 - 2.0 * soft)
        mask = cv2.GaussianBlur(mask, (0, 0), soft)
        patch = np.dstack([texture, mask])
        return patch, cv2.pyrDown(patch), cv2.pyrDown(cv2.pyrDown(patch))


def _photo_crop(rng: np.random.Generator, pictures: tuple[np.ndarray, ...], height: int, width: int,
                share: tuple[float, float]) -> np.ndarray:
    """A ``height x width`` RGB view of a random picture: a random window (``share`` of the largest
    window of that aspect), flipped at random, colour-jittered (white balance, exposure, contrast)."""
    picture = pictures[int(rng.integers(len(pictures)))]
    pic_h, pic_w = picture.shape[:2]
    fit = min(pic_h / height, pic_w / width) * rng.uniform(*share)
    crop_h, crop_w = max(2, round(height * fit)), max(2, round(width * fit))
    top, left = int(rng.integers(pic_h - crop_h + 1)), int(rng.integers(pic_w - crop_w + 1))
    window = picture[top : top + crop_h, left : left + crop_w]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    if rng.random() < 0.2:
        window = window[::-1]
    interpolation = cv2.INTER_AREA if crop_h > height else cv2.INTER_LINEAR
    image = cv2.resize(np.ascontiguousarray(window), (width, height), interpolation=interpolation).astype(np.float32)
    mean = image.reshape(-1, 3).mean(axis=0)
    contrast = rng.uniform(0.7, 1.3)
    gains = rng.uniform(0.75, 1.25, size=3) * rng.uniform(0.7, 1.3)
    image = ((image - mean) * np.float32(contrast) + mean) * gains.astype(np.float32) + np.float32(0.5)
    return np.clip(image, 0.0, 255.0).astype(np.uint8)


def _read_picture(path: Path) -> np.ndarray:
    """A picture's BGR pixels.

    Raises:
        ConfigError: the file cannot be read as an image.
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"synthetic style 'photo' cannot read the picture '{path}'")
    return bgr


@functools.cache
def _pictures(pool: str) -> tuple[np.ndarray, ...]:
    """The RGB pictures of :data:`PHOTO_DIR` / ``pool`` (read once per process)."""
    folder = PHOTO_DIR / pool
    paths = sorted(folder.glob("*.jpg"))
    pictures = tuple(cv2.cvtColor(_read_picture(p), cv2.COLOR_BGR2RGB) for p in paths)
    if not pictures:
        raise ConfigError(f"synthetic style 'photo' needs the pictures in '{folder}', which has none")
    return pictures


def _paste(canvas: np.ndarray, levels: tuple[np.ndarray, ...], cx: float, cy: float,
           scale: float, theta: float, alpha: float) -> None:
    """Alpha-blend an RGBA patch, scaled by ``scale`` and rotated by ``theta``, centred at (cx, cy)."""
    level = 0 if scale >= 0.5 else 1 if scale >= 0.25 else 2
    patch = levels[level]
    size = patch.shape[0]
    centre = (size - 1) / 2.0
    scale *= 2**level
    reach = scale * size / 2.0 + 1.0  # the shape lies inside the patch's inscribed circle
    x0, y0 = max(0, math.floor(cx - reach)), max(0, math.floor(cy - reach))
    x1, y1 = min(canvas.shape[1], math.ceil(cx + reach) + 1), min(canvas.shape[0], math.ceil(cy + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    a, b = scale * math.cos(theta), scale * math.sin(theta)
    # patch (u, v) -> canvas: x = a (u - c) - b (v - c) + cx, y = b (u - c) + a (v - c) + cy; theta > 0 turns clockwise.
    forward = np.array([
        [a, -b, cx - x0 - (a - b) * centre],
        [b, a, cy - y0 - (a + b) * centre],
    ])
    warped = cv2.warpAffine(patch, forward, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    weight = warped[..., 3].astype(np.float32) * np.float32(alpha / 255.0)
    roi = canvas[y0:y1, x0:x1]
    mixed = roi.astype(np.float32)
    mixed += (warped[..., :3] - mixed) * weight[..., None]
    mixed += 0.5
    roi[...] = mixed


def _pattern(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """A random texture [height, width] float32 in [0, 1]: noise blobs, stripes or checkers of size ``scale`` px."""
    kind = int(rng.integers(3))
    angle = rng.uniform(0.0, math.pi)
    scale = max(scale, 1.5)
    if kind == 0:
        grid = rng.random((round(height / scale) + 2, round(width / scale) + 2), dtype=np.float32)
        value = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        ys = np.arange(height, dtype=np.float32)[:, None]
        xs = np.arange(width, dtype=np.float32)[None, :]
        along = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
        if kind == 1:
            value = np.sin(along * np.float32(math.pi / scale) + np.float32(rng.uniform(0, 2 * math.pi)))
        else:
            across = ys * np.float32(math.cos(angle)) - xs * np.float32(math.sin(angle))
            value = (np.floor(along / scale) + np.floor(across / scale)) % 2
    low, high = float(value.min()), float(value.max())
    gain = rng.uniform(1.0, 3.0)  # > 1 hardens the pattern's edges
    value = (value - (low + high) / 2) * np.float32(gain / max(high - low, 1e-6)) + np.float32(0.5)
    return np.clip(value, 0.0, 1.0, out=value)


def _luma(colours: np.ndarray) -> np.ndarray:
    return colours @ np.array([0.299, 0.587, 0.114])


def _colours(rng: np.random.Generator, contrast: tuple[float, float], avoid_luma: float | None = None) -> np.ndarray:
    """Two RGB colours [2, 3] whose luma differs by ``contrast``; their mean luma stays 40 away from ``avoid_luma``."""
    for _ in range(64):
        colours = rng.uniform(0.0, 255.0, size=(2, 3))
        luma = _luma(colours)
        if not contrast[0] <= abs(luma[0] - luma[1]) <= contrast[1]:
            continue
        if avoid_luma is None or abs(luma.mean() - avoid_luma) >= 40.0:
            return colours
    return colours  # rare; the texture still differs from the background


def _paint(value: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Map a [H, W] pattern in [0, 1] onto the colour pair: [H, W, 3] uint8."""
    low = colours[0].astype(np.float32)
    step = (colours[1] - colours[0]).astype(np.float32)
    image = value[..., None] * step + (low + 0.5)
    return image.astype(np.uint8)


def _shape(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """An anti-aliased mask [size, size] uint8 of a random ellipse, rectangle or polygon within ``radius``."""
    mask = np.zeros((size, size), np.uint8)
    centre = (size - 1) / 2.0
    kind = int(rng.integers(3))
    if kind == 0:
        axes = np.array([1.0, rng.uniform(0.4, 0.75)]) * radius
        corners = np.array([[math.cos(a), math.sin(a)] for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)])
        points = corners * axes
    elif kind == 1:
        half_angle = rng.uniform(math.radians(20), math.radians(40))
        a, b = radius * math.cos(half_angle), radius * math.sin(half_angle)
        points = np.array([[a, b], [-a, b], [-a, -b], [a, -b]])
    else:
        count = int(rng.integers(3, 8))
        angles = (np.arange(count) + rng.uniform(-0.3, 0.3, count)) * (2 * math.pi / count)
        radii = rng.uniform(0.7, 1.0, count) * radius
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    fixed = np.round((points + centre) * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(mask, [fixed], 255, lineType=cv2.LINE_AA, shift=4)
    return mask


class _NoiseField:
    """Sensor noise: a field of uniform noise a little larger than the frame; frame ``k`` adds a window keyed by ``k``.

    Draws from ``rng`` in the order level, field, key: the scenes' later draws, and so every clip, depend on it.
    """

    def __init__(self, rng: np.random.Generator, std: tuple[float, float], height: int, width: int) -> None:
        half_width = round(rng.uniform(*std) * math.sqrt(3.0))  # uniform noise with a std drawn from ``std``
        shape = (height + _NOISE_PAD, width + _NOISE_PAD, 3)
        raw = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)
        self._field = ((raw.astype(np.int16) * (2 * half_width + 1)) >> 8) - half_width
        self._key = int(rng.integers(1 << 62))
        self._h, self._w = height, width

    def add_to(self, out: np.ndarray, k: int) -> None:
        """Add frame ``k``'s noise to ``out`` [H, W, 3] uint8 in place (saturating)."""
        key = _mix(self._key + k)
        oy, ox = key % _NOISE_PAD, (key >> 16) % _NOISE_PAD
        cv2.add(out, self._field[oy : oy + self._h, ox : ox + self._w], dst=out, dtype=cv2.CV_8U)


def _mix(value: int) -> int:
    """SplitMix64 finaliser: a well-spread 64-bit hash of ``value``."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synthetic seed must be an integer >= 0, got {seed!r}")


def _check_fps(fps: float) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ConfigError(f"synthetic scene fps must be > 0, got {fps}")


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ConfigError(f"synthetic style {style!r} is not supported; expected one of {', '.join(STYLES)}")


def _check_size(height: int, width: int) -> None:
    if height < _MIN_SIZE or width < _MIN_SIZE:
        raise ConfigError(f"synthetic frame size must be at least {_MIN_SIZE}x{_MIN_SIZE}, got {width}x{height}")
