"""Clip data sets for training and evaluation: synthetic motion scenes, class-per-folder videos, list files.

Every data set yields ``(clip, label)``: ``clip`` is ``[T+1, H, W, 3]`` uint8 RGB (T+1 consecutive frames,
because the VMP layer turns T+1 frames into T prompts) and ``label`` an index into the data set's
``labels``. Frames are prepared as the camera process prepares them, by the same function
(:func:`emim_stream.engines.transforms.fit_frame`: resized to cover ``H x W`` and centre-cropped, with the
camera's resize method). Normalisation happens on batches (:func:`emim_stream.engines.transforms.normalise`).

Data set specs (:func:`open_dataset`):

- ``synthetic://?split=train&n=3600`` renders :mod:`emim_stream.engines.data.synthetic` clips at the synthetic camera's
  size (320x240 unless ``size=WxH``) and prepares them like camera frames. Parameters: ``split``
  (train / val / test: disjoint seeds), ``n`` (clips), ``start`` (first clip index), ``size``,
  ``method`` (area / linear / pyramid), ``window`` (``first``: the clip opens a scene, exactly
  :func:`emim_stream.engines.data.synthetic.render_clip`; ``any``: a seeded window anywhere in a 4 s scene of the live
  :class:`~emim_stream.engines.data.synthetic.SyntheticScene`, as a camera sees it), ``fresh`` (1: every epoch draws
  ``n`` new clips) and ``style`` (``classic``; ``photo``: photographs seen by a realistic camera, each
  clip at a seeded frame rate of 15-30 fps and a third of them through H.264; ``mix``: classic and
  photo in turn, every 9 clips).
- a directory: ``DIR/<class name>/<video file>``; class names are the sorted sub-folder names.
- a file: one ``<video path> <label>`` per line (paths relative to the list file; ``#`` comments).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from emim_stream.engines.data.synthetic import (
    CLASSES,
    REFERENCE_FPS,
    SEGMENT_S,
    STYLES,
    SyntheticScene,
    clip_seed,
    h264_roundtrip,
    label_of,
    render_clip,
)
from emim_stream.engines.errors import ConfigError, EmimError
from emim_stream.engines.transforms import check_resize, fit_frame
from emim_stream.engines.uris import SYNTHETIC_SIZE, SyntheticQuery, is_synthetic

__all__ = [
    "VIDEO_SUFFIXES",
    "ClipDataset",
    "DatasetError",
    "SyntheticClips",
    "VideoClips",
    "VideoItem",
    "open_dataset",
    "split_validation",
]

VIDEO_SUFFIXES: frozenset[str] = frozenset(
    {".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp", ".mjpeg"}
)
_SYNTHETIC_PARAMETERS = ("split", "n", "start", "size", "method", "window", "fresh", "style")
_SYNTHETIC_STYLES = (*STYLES, "mix")
_WINDOW_TAG = 0x5EC1A5  # seeds the start frame of ``window=any`` clips
_CAMERA_TAG = 0x5EC1CA  # seeds a photo clip's frame rate and compression
_PHOTO_FPS = (15.0, 20.0, 24.0, 25.0, 30.0)
_H264_SHARE = 1 / 3  # share of photo clips put through H.264
_H264_CRF = (18, 36)  # x264 quality range (inclusive)


class DatasetError(EmimError):
    """A data set cannot be used: bad layout, unreadable video, unknown label. The message names the file."""


# ---------------------------------------------------------------------------------------------------------
# Data sets


class ClipDataset(Dataset[tuple[torch.Tensor, int]]):
    """Base of the clip data sets: ``labels``, ``frames`` (T+1), ``height``, ``width``, ``targets``.

    ``set_epoch(epoch)`` lets a data set vary with the epoch (synthetic ``fresh=1``; random clip
    starts in videos); the training loop calls it before each epoch.
    """

    labels: tuple[str, ...]
    frames: int
    height: int
    width: int

    @property
    def targets(self) -> list[int]:
        """Label index of every item, in order (for stratified splits and class counts)."""
        raise NotImplementedError

    @property
    def fixed_items(self) -> bool:
        """Whether item ``i`` is the same in every epoch (so it can be rendered once and cached)."""
        return True

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def describe(self) -> str:
        """One line saying what the data set is."""
        raise NotImplementedError


class SyntheticClips(ClipDataset):
    """Clips of :mod:`emim_stream.engines.data.synthetic`, rendered at the synthetic camera's size and fitted to ``H
    x W``.

    Clip ``i`` of epoch ``e`` is clip index ``start + i`` (``+ e * n`` with ``fresh``) of ``split``:
    class :func:`~emim_stream.engines.data.synthetic.label_of` (classes in turn) and seed
    :func:`~emim_stream.engines.data.synthetic.clip_seed`, so the splits never share a seed.

    Args:
        split: ``'train'``, ``'val'`` or ``'test'``.
        n: clips per epoch.
        frames: frames per clip (T+1).
        height, width: output size (the model's H, W).
        source_size: ``(width, height)`` the scene is rendered at before :func:`fit_frame`.
        method: resize method (as the camera's ``resize`` setting).
        window: ``'first'`` (:func:`~emim_stream.engines.data.synthetic.render_clip`: the clip opens its scene) or
            ``'any'`` (a seeded start anywhere in a live scene segment).
        fresh: draw new clips every epoch.
        start: index of the first clip.
        style: ``'classic'``, ``'photo'`` or ``'mix'`` (classic for clip indices ``i`` with
            ``i // 9`` even, photo for odd). A photo clip gets a seeded frame rate (15-30 fps)
            and, for a third of the seeds, an H.264 encode and decode at a seeded quality.

    Raises:
        ConfigError: invalid argument.
    """

    def __init__(
        self,
        split: str,
        n: int,
        frames: int,
        height: int,
        width: int,
        source_size: tuple[int, int] = SYNTHETIC_SIZE,
        method: str = "area",
        window: str = "first",
        fresh: bool = False,
        start: int = 0,
        style: str = "classic",
    ) -> None:
        clip_seed(split, start)  # validates split and start
        if n < 1:
            raise ConfigError(f"synthetic data set needs n >= 1 clips, got {n}")
        if frames < 2:
            raise ConfigError(f"synthetic clips need at least 2 frames (T+1), got {frames}")
        method = check_resize(method, "synthetic data set: resize method")
        if window not in ("first", "any"):
            raise ConfigError(f"synthetic data set window {window!r} is not supported; expected 'first' or 'any'")
        if style not in _SYNTHETIC_STYLES:
            raise ConfigError(
                f"synthetic data set style {style!r} is not supported; expected one of {', '.join(_SYNTHETIC_STYLES)}"
            )
        self.style = style
        self.split, self.n, self.start = split, n, start
        self.frames, self.height, self.width = frames, height, width
        self.source_size, self.method, self.window, self.fresh = tuple(source_size), method, window, fresh
        self.labels = CLASSES
        self.epoch = 0
        segment_frames = round(SEGMENT_S * (REFERENCE_FPS if style == "classic" else min(_PHOTO_FPS)))
        if window == "any" and frames > segment_frames:
            raise ConfigError(f"window=any needs clips of at most {segment_frames} frames, got {frames}")

    def __len__(self) -> int:
        return self.n

    @property
    def targets(self) -> list[int]:
        return [label_of(self._index(i)) for i in range(self.n)]

    @property
    def fixed_items(self) -> bool:
        return not self.fresh

    def _index(self, i: int) -> int:
        return self.start + i + (self.epoch * self.n if self.fresh else 0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        index = self._index(i)
        label, seed = label_of(index), clip_seed(self.split, index)
        src_w, src_h = self.source_size
        style = self.style if self.style != "mix" else STYLES[(index // len(CLASSES)) % 2]
        fps, crf = REFERENCE_FPS, None
        if style == "photo":
            camera = np.random.default_rng([_CAMERA_TAG, seed])
            fps = float(camera.choice(_PHOTO_FPS))
            if camera.random() < _H264_SHARE:
                crf = int(camera.integers(_H264_CRF[0], _H264_CRF[1] + 1))
        if self.window == "first":
            raw = render_clip(label, seed, self.frames, src_h, src_w, style=style, fps=fps)
        else:
            scene = SyntheticScene(seed, src_h, src_w, fps=fps, label=label, segment_s=SEGMENT_S, style=style)
            first = int(np.random.default_rng([_WINDOW_TAG, seed]).integers(scene.segment_frames - self.frames + 1))
            raw = np.stack([scene.frame(first + k) for k in range(self.frames)])
        if crf is not None:
            raw = h264_roundtrip(raw, fps, crf)
        clip = np.stack([fit_frame(f, self.height, self.width, self.method) for f in raw])
        return torch.from_numpy(clip), label

    def describe(self) -> str:
        w, h = self.source_size
        style = "" if self.style == "classic" else f"{self.style} style, "
        fresh = " per epoch (fresh every epoch)" if self.fresh else ""
        return (
            f"synthetic {style}{self.split} split, {self.n} clips{fresh} "
            f"from index {self.start}, rendered at {w}x{h}, window={self.window}, {self.method} resize to "
            f"{self.width}x{self.height}, {self.frames} frames"
        )


@dataclass(frozen=True, slots=True)
class VideoItem:
    """One video of a data set: its path, label index and decodable frame count."""

    path: Path
    label: int
    frame_count: int


class VideoClips(ClipDataset):
    """Clips of T+1 consecutive frames from video files: a seeded random start in training, else the middle.

    Build one with :meth:`from_folder` (``root/<class>/<video>``) or :meth:`from_list`
    (``<video path> <label>`` lines). Every video is opened once up front, so a bad file fails
    before training starts, naming the file.

    Args:
        items: the videos.
        labels: label names, in logit order.
        frames: frames per clip (T+1).
        height, width: output size.
        method: resize method.
        train: random clip starts (varying with :meth:`set_epoch`) instead of the middle clip.
        seed: seeds the random starts.
        source: what the videos came from (for :meth:`describe`).
    """

    def __init__(
        self,
        items: Sequence[VideoItem],
        labels: Sequence[str],
        frames: int,
        height: int,
        width: int,
        method: str = "area",
        train: bool = True,
        seed: int = 0,
        source: str = "videos",
    ) -> None:
        method = check_resize(method, f"{source}: resize method")
        self.items, self.labels = tuple(items), tuple(labels)
        self.frames, self.height, self.width = frames, height, width
        self.method, self.train, self.seed, self.source = method, train, seed, source
        self.epoch = 0

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike[str],
        frames: int,
        height: int,
        width: int,
        method: str = "area",
        train: bool = True,
        labels: Sequence[str] | None = None,
        seed: int = 0,
    ) -> VideoClips:
        """Class-per-folder videos: ``root/<class>/<video>`` (class names = sorted sub-folder names).

        Args:
            labels: the label names to use (e.g. a checkpoint's); every class folder must be one
                of them. Default: the sorted sub-folder names.
            (others as the constructor)

        Raises:
            DatasetError: no class folders, a video outside any class folder, an empty class
                folder, an unknown class, an unreadable or too short video (naming the path).
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"data set folder '{root}' does not exist")
        loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if loose:
            raise DatasetError(
                f"data set folder '{root}' has video files directly inside it ({', '.join(loose[:3])}); "
                f"expected one sub-folder per class: '{root}/<class>/<video>'"
            )
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DatasetError(f"data set folder '{root}' has no class sub-folders; expected '{root}/<class>/<video>'")
        names = _resolve_labels(classes, labels, lambda c: f"class folder '{root / c}'")
        items = []
        for name in classes:
            folder = root / name
            videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not videos:
                others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
                detail = f" (found only {', '.join(others[:3])})" if others else ""
                raise DatasetError(
                    f"class folder '{folder}' has no video files{detail}; "
                    f"video suffixes: {', '.join(sorted(VIDEO_SUFFIXES))}"
                )
            items += [VideoItem(v, names.index(name), _probe(v, frames)) for v in videos]
        return cls(items, names, frames, height, width, method, train, seed, f"folder '{root}'")

    @classmethod
    def from_list(
        cls,
        path: str | os.PathLike[str],
        frames: int,
        height: int,
        width: int,
        method: str = "area",
        train: bool = True,
        labels: Sequence[str] | None = None,
        seed: int = 0,
    ) -> VideoClips:
        """Videos listed in a text file: ``<video path> <label>`` per line.

        Paths may contain spaces (the label is the last field); relative paths are relative to
        the list file; blank lines and lines starting with ``#`` are skipped.

        Args:
            labels: the label names to use; a line with another label is an error. Default: the
                sorted distinct labels of the file (numerically when all are integers).
            (others as the constructor)

        Raises:
            DatasetError: unreadable list, malformed line, missing/unreadable/too short video,
                unknown label (naming the list file and line).
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"cannot read list file '{path}': {err}") from None
        entries = []
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.rsplit(maxsplit=1)
            if len(fields) != 2:
                raise DatasetError(f"{path}:{number}: expected '<video path> <label>', got {text!r}")
            video = Path(fields[0])
            entries.append((number, video if video.is_absolute() else path.parent / video, fields[1]))
        if not entries:
            raise DatasetError(f"list file '{path}' lists no videos; expected '<video path> <label>' per line")
        found = sorted({label for _, _, label in entries})
        if all(label.isdigit() for label in found):
            found.sort(key=int)
        first_line = {label: number for number, _, label in reversed(entries)}
        names = _resolve_labels(found, labels, lambda label: f"{path}:{first_line[label]}: label {label!r}")
        items = []
        for number, video, label in entries:
            if not video.is_file():
                raise DatasetError(f"{path}:{number}: video '{video}' does not exist")
            items.append(VideoItem(video, names.index(label), _probe(video, frames, f"{path}:{number}: ")))
        return cls(items, names, frames, height, width, method, train, seed, f"list '{path}'")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def targets(self) -> list[int]:
        return [item.label for item in self.items]

    @property
    def fixed_items(self) -> bool:
        return not self.train

    def subset(self, indices: Sequence[int], train: bool) -> VideoClips:
        """The videos at ``indices`` (e.g. a validation split), sampled as ``train`` says."""
        items = [self.items[i] for i in indices]
        return VideoClips(
            items, self.labels, self.frames, self.height, self.width, self.method, train, self.seed, self.source
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.items[i]
        room = item.frame_count - self.frames
        rng = np.random.default_rng([self.seed, self.epoch, i])
        start = int(rng.integers(room + 1)) if self.train else room // 2
        raw = _read_window(item.path, start, self.frames)
        clip = np.stack([fit_frame(f, self.height, self.width, self.method) for f in raw])
        return torch.from_numpy(clip), item.label

    def describe(self) -> str:
        return f"{self.source}: {len(self.items)} videos, {len(self.labels)} classes, {self.frames}-frame clips"


def _resolve_labels(found: list[str], labels: Sequence[str] | None, where: Callable[[str], str]) -> tuple[str, ...]:
    """The label names: ``found`` itself, or ``labels`` after checking that it contains every name found."""
    if labels is None:
        return tuple(found)
    unknown = [name for name in found if name not in labels]
    if unknown:
        raise DatasetError(f"{where(unknown[0])} is not a known label; known labels: {', '.join(labels)}")
    return tuple(labels)


def _probe(path: Path, frames: int, prefix: str = "") -> int:
    """Decodable frame count of ``path``, checked to be at least ``frames``."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DatasetError(f"{prefix}cannot open video '{path}': OpenCV cannot read it (damaged or not a video)")
        if not cap.grab():
            raise DatasetError(f"{prefix}video '{path}' has no decodable frame (damaged or empty)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count < frames:  # a header that under-reports (or omits) the count: count by decoding
            count = 1
            while count < frames and cap.grab():
                count += 1
    finally:
        cap.release()
    if count < frames:
        raise DatasetError(
            f"{prefix}video '{path}' has {count} frames; a clip needs {frames} (T+1): use fewer --frames"
        )
    return count


def _read_window(path: Path, start: int, count: int) -> list[np.ndarray]:
    """RGB frames ``start .. start + count - 1`` of a video; the last ``count`` frames if it ends before.

    Raises:
        DatasetError: fewer than ``count`` frames decode.
    """
    cap = cv2.VideoCapture(str(path))
    window: deque[np.ndarray] = deque(maxlen=count)
    try:
        for _ in range(start + count):
            ok, bgr = cap.read()
            if not ok:
                break
            window.append(bgr)
    finally:
        cap.release()
    if len(window) < count:
        raise DatasetError(f"video '{path}' decoded only {len(window)} frames; a clip needs {count}")
    return [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for bgr in window]


# ---------------------------------------------------------------------------------------------------------
# Specs


def open_dataset(
    spec: str,
    frames: int,
    height: int,
    width: int,
    *,
    train: bool,
    labels: Sequence[str] | None = None,
    method: str = "area",
    seed: int = 0,
    default_split: str = "train",
    default_n: int = 900,
) -> ClipDataset:
    """Open a data set from its spec: ``synthetic://?...``, a class-per-folder directory or a list file.

    Args:
        spec: the spec (see the module docstring).
        frames: frames per clip (T+1).
        height, width: the model's input size.
        train: training sampling (random video clip starts).
        labels: required label names (a checkpoint's, or the training set's for validation data).
        method: resize method for videos and the synthetic default.
        seed: seeds random clip starts.
        default_split, default_n: synthetic ``split`` and ``n`` when the spec omits them.

    Raises:
        ConfigError: malformed synthetic spec.
        DatasetError: missing path or bad data set (naming the file).
    """
    if is_synthetic(spec):
        dataset = _synthetic_from_uri(spec, frames, height, width, method, default_split, default_n)
        if labels is not None and tuple(labels) != CLASSES:
            raise DatasetError(
                f"data set {spec!r} has the synthetic classes ({', '.join(CLASSES)}); "
                f"the model's labels are {', '.join(labels)}"
            )
        return dataset
    path = Path(spec)
    if path.is_dir():
        return VideoClips.from_folder(path, frames, height, width, method, train, labels, seed)
    if path.is_file():
        return VideoClips.from_list(path, frames, height, width, method, train, labels, seed)
    raise DatasetError(f"data set '{spec}' does not exist (expected a folder, a list file or synthetic://?...)")


def _synthetic_from_uri(
    uri: str, frames: int, height: int, width: int, method: str, default_split: str, default_n: int
) -> SyntheticClips:
    query = SyntheticQuery(uri, _SYNTHETIC_PARAMETERS, "synthetic data set", "synthetic://?split=test&n=900")
    fresh = query.text("fresh", "0")
    if fresh not in ("0", "1"):
        raise ConfigError(f"synthetic data set parameter 'fresh'={fresh!r} must be 0 or 1")
    return SyntheticClips(
        split=query.text("split", default_split),
        n=int(query.number("n", int, default_n)),
        frames=frames,
        height=height,
        width=width,
        source_size=query.size("size", SYNTHETIC_SIZE),
        method=query.text("method", method),
        window=query.text("window", "first"),
        fresh=fresh == "1",
        start=int(query.number("start", int, 0)),
        style=query.text("style", "classic"),
    )


def split_validation(dataset: ClipDataset, fraction: float, seed: int) -> tuple[ClipDataset, ClipDataset | None]:
    """Hold out ``round(fraction * n_c)`` videos of each class ``c`` (seeded) as a validation set.

    Returns:
        ``(train, val)``; ``val`` is None when nothing is held out.
    """
    if not isinstance(dataset, VideoClips) or fraction <= 0:
        return dataset, None
    rng = np.random.default_rng([seed, 0x5A11D])
    targets = np.array(dataset.targets)
    held: list[int] = []
    for label in range(len(dataset.labels)):
        members = np.flatnonzero(targets == label)
        take = min(len(members) - 1, math.floor(fraction * len(members) + 0.5))
        if take > 0:
            held += rng.choice(members, take, replace=False).tolist()
    if not held:
        return dataset, None
    keep = sorted(set(range(len(dataset))) - set(held))
    return dataset.subset(keep, train=True), dataset.subset(sorted(held), train=False)
