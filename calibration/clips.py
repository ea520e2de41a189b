"""Calibration clips: the prompts the engine sees at run time, collected into shards with a manifest.

Calibration takes frames already prepared as the camera process prepares them (uint8 RGB
``[H, W, 3]`` at the model's size, :func:`emim_stream.engines.transforms.fit_frame` with the camera's resize
method) and builds its clips of T+1 frames itself:

- :func:`collect_from_frames`: consecutive frames of a source (``emim-stream calibrate`` opens the
  camera, file or stream and prepares each frame), one clip every ``stride`` frames (default T:
  clips share no prompt), as the runtime's clip window serves them;
- :func:`collect_from_dataset`: one clip per item of a data set (:func:`emim_stream.engines.data.datasets.open_dataset`:
  a class-per-folder directory, a list file or ``synthetic://?...``).

A clip's T+1 frames are normalised with the checkpoint's clip spec and turned into T prompts by its VMP
layer, or are its last T normalised frames without one (:func:`emim_stream.engines.layers.vmp.clip_inputs`, as
training and evaluation make them): the values the runtime's streaming VMP stage gives the engine for the same
frames.
Clips are split into a calibration set and a held-out set (for the accuracy report) by
interleaving, so both span the whole footage. A clips folder holds::

    manifest.json                 model hash, input spec, source (redacted), counts, shards, created
    calibration-000.npy ...       float32 [n, 3, T, H, W] prompts
    held_out-000.npy ...

and is tied to the model's weights hash: :func:`load_clips` refuses clips made for another model.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from emim_stream.calibration.errors import CalibrationError
from emim_stream.engines.backends.model_source import ModelSource
from emim_stream.engines.data.datasets import open_dataset
from emim_stream.engines.files import atomic_write
from emim_stream.engines.layers.vmp import clip_inputs
from emim_stream.engines.transforms import check_resize
from emim_stream.engines.uris import redact_uri

__all__ = [
    "FORMAT",
    "MANIFEST",
    "ClipManifest",
    "ClipSet",
    "Progress",
    "Shard",
    "Split",
    "clip_windows",
    "collect_from_dataset",
    "collect_from_frames",
    "load_clips",
    "prompts",
]

log = logging.getLogger(__name__)

FORMAT = "emim-stream.calibration-clips/1"
MANIFEST = "manifest.json"
SHARD_BYTES = 256 << 20
"""Largest shard file (a clip of emim_xs at 8x128x128 is 1.5 MiB, of emim_s at 16x224x224 9.2 MiB)."""

Progress = Callable[[int, int], None]
"""Called with (clips done, clips wanted) after each clip."""


class Split(str, Enum):
    """What a clip is for."""

    CALIBRATION = "calibration"
    HELD_OUT = "held_out"


@dataclass(frozen=True, slots=True)
class Shard:
    """One ``.npy`` file of a clips folder: ``count`` clips of one split."""

    file: str
    split: str
    count: int


@dataclass(frozen=True, slots=True)
class ClipManifest:
    """What a clips folder holds, for which model, from where."""

    model_name: str
    weights_sha256: str
    input_shape: tuple[int, int, int, int]
    """One clip: (3, T, H, W)."""
    dtype: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    vmp: bool
    """The prompts went through the checkpoint's VMP layer (False: normalised frames)."""
    resize: str
    source: str
    """The source URI or data set spec, credentials redacted."""
    counts: dict[str, int]
    """Clips per split."""
    shards: tuple[Shard, ...]
    created_wall: str
    """ISO 8601 UTC time of writing."""
    seconds: float
    """Collection time."""

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str, where: Path) -> ClipManifest:
        """Parse a manifest.

        Raises:
            CalibrationError: not JSON, another format, or fields missing.
        """
        try:
            data = json.loads(text)
            if data.pop("format", None) != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            data["shards"] = tuple(Shard(**s) for s in data["shards"])
            for key in ("input_shape", "mean", "std"):
                data[key] = tuple(data[key])
            return cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise CalibrationError(f"'{where}' is not a calibration clips manifest ({err})") from None


@dataclass(frozen=True, slots=True)
class ClipSet:
    """A checked clips folder; clips are read shard by shard (memory-mapped)."""

    root: Path
    manifest: ClipManifest

    def count(self, split: Split) -> int:
        return self.manifest.counts.get(split.value, 0)

    def batches(self, split: Split, batch_size: int) -> Iterator[torch.Tensor]:
        """Clips of ``split`` as float32 ``[b, 3, T, H, W]`` batches, b <= ``batch_size``, in order."""
        for shard in self.manifest.shards:
            if shard.split != split.value:
                continue
            data = np.load(self.root / shard.file, mmap_mode="r")
            for start in range(0, shard.count, batch_size):
                yield torch.from_numpy(np.array(data[start : start + batch_size]))


def _held_out(i: int, total: int, held_out: int) -> bool:
    """Whether clip ``i`` of ``total`` is held out: ``held_out`` of them, evenly spread."""
    return (i + 1) * held_out // total > i * held_out // total


def clip_windows(frames: Iterable[np.ndarray], length: int, stride: int) -> Iterator[np.ndarray]:
    """Windows of ``length`` consecutive frames, ``[length, H, W, 3]``, as the runtime's clip window serves them.

    The first window comes once ``length`` frames are in, then one every ``stride`` frames (a
    stride above ``length`` skips the frames between windows).
    """
    window: deque[np.ndarray] = deque(maxlen=length)
    for count, frame in enumerate(frames, 1):
        window.append(frame)
        if count >= length and (count - length) % stride == 0:
            yield np.stack(window)


@torch.no_grad()
def prompts(model: ModelSource, frames: np.ndarray) -> torch.Tensor:
    """T+1 prepared frames ``[T+1, H, W, 3]`` uint8 RGB -> the clip the engine takes, float32 ``[3, T, H, W]``.

    The frames are normalised with the checkpoint's clip spec; its VMP layer turns them into T prompts, or,
    without one, the last T normalised frames are the clip.
    """
    clip = model.clip
    return clip_inputs(torch.from_numpy(frames)[None], model.vmp, clip.mean, clip.std)[0][0]


class _Writer:
    """Writes clips of both splits into shards of a folder, then the manifest."""

    def __init__(self, root: Path, model: ModelSource, total: int, held_out: int) -> None:
        clip = model.clip
        self.root, self.model, self.total, self.held_out = root, model, total, held_out
        self.shape = (3, clip.frames, clip.height, clip.width)
        self.written = 0
        self.shards: list[Shard] = []
        per_shard = max(1, SHARD_BYTES // (4 * int(np.prod(self.shape))))
        wanted = {Split.CALIBRATION: total - held_out, Split.HELD_OUT: held_out}
        self._buffers = {s: np.empty((min(per_shard, n), *self.shape), np.float32) for s, n in wanted.items()}
        self._filled = dict.fromkeys(Split, 0)
        self._counts = dict.fromkeys(Split, 0)
        root.mkdir(parents=True, exist_ok=True)
        for old in [root / MANIFEST, *root.glob("calibration-*.npy"), *root.glob("held_out-*.npy")]:
            old.unlink(missing_ok=True)

    def add(self, clip: torch.Tensor) -> None:
        split = Split.HELD_OUT if _held_out(self.written, self.total, self.held_out) else Split.CALIBRATION
        buf = self._buffers[split]
        buf[self._filled[split]] = clip.numpy()
        self._filled[split] += 1
        self._counts[split] += 1
        self.written += 1
        if self._filled[split] == len(buf):
            self._flush(split)

    def _flush(self, split: Split) -> None:
        n = self._filled[split]
        if not n:
            return
        index = sum(1 for s in self.shards if s.split == split.value)
        name = f"{split.value}-{index:03d}.npy"
        with atomic_write(self.root / name, suffix=".npy") as tmp:  # np.save appends .npy to other names
            np.save(tmp, self._buffers[split][:n])
        self.shards.append(Shard(name, split.value, n))
        self._filled[split] = 0

    def finish(self, source: str, resize: str, seconds: float) -> ClipManifest:
        for split in Split:
            self._flush(split)
        mean, std = self.model.clip.mean, self.model.clip.std
        manifest = ClipManifest(
            model_name=self.model.model_name,
            weights_sha256=self.model.weights_sha256,
            input_shape=self.shape,
            dtype="float32",
            mean=mean,
            std=std,
            vmp=self.model.vmp is not None,
            resize=resize,
            source=source,
            counts={s.value: self._counts[s] for s in Split},
            shards=tuple(self.shards),
            created_wall=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            seconds=round(seconds, 3),
        )
        with atomic_write(self.root / MANIFEST) as tmp:
            tmp.write_text(manifest.to_json())
        return manifest


def _check_counts(calibration: int, held_out: int) -> None:
    if calibration < 1:
        raise CalibrationError(f"calibration needs at least 1 clip, got {calibration}")
    if held_out < 0:
        raise CalibrationError(f"held-out clips must be >= 0, got {held_out}")


def _finish(writer: _Writer, source: str, resize: str, start: float) -> ClipManifest:
    manifest = writer.finish(source, resize, time.perf_counter() - start)
    got = manifest.counts
    if got[Split.CALIBRATION.value] == 0:
        raise CalibrationError(f"no calibration clips could be collected from {source}")
    if writer.written < writer.total:
        log.warning(
            "%s gave %d of %d clips (%d calibration, %d held out)",
            source,
            writer.written,
            writer.total,
            got[Split.CALIBRATION.value],
            got[Split.HELD_OUT.value],
        )
    log.info("collected %d clips from %s in %.1f s into %s", writer.written, source, manifest.seconds, writer.root)
    return manifest


def collect_from_frames(
    frames: Iterable[np.ndarray],
    model: ModelSource,
    out_dir: str | os.PathLike[str],
    calibration: int,
    held_out: int,
    *,
    source: str,
    resize: str = "area",
    stride: int | None = None,
    progress: Progress | None = None,
) -> ClipManifest:
    """Collect clips from consecutive frames of a source, one clip of T+1 frames every ``stride`` frames.

    Frames are taken until enough clips are collected; frames that end early give fewer clips (a
    warning).

    Args:
        frames: consecutive frames, uint8 RGB ``[H, W, 3]`` at the model's size, prepared as the
            camera process prepares them (with ``resize``).
        model: the model the clips are for (clip size, VMP layer, weights hash).
        out_dir: the clips folder (created; earlier clips in it are replaced).
        calibration, held_out: clips wanted for each split.
        source: where the frames come from, for the manifest (a URI: credentials are redacted).
        resize: the resize method the frames were prepared with (``cameras[i].resize``), for the manifest.
        stride: frames between clips (default T: consecutive clips share no prompt).
        progress: called after each clip.

    Returns:
        The manifest written to ``out_dir``.

    Raises:
        CalibrationError: bad counts or stride, frames of another size or type, or no frames for
            the first calibration clip.
    """
    _check_counts(calibration, held_out)
    resize = check_resize(resize, "calibration resize method")
    total = calibration + held_out
    clip = model.clip
    stride = stride or clip.frames
    if stride < 1:
        raise CalibrationError(f"clip stride must be >= 1 frame, got {stride}")
    source = redact_uri(source)
    writer = _Writer(Path(out_dir), model, total, held_out)
    start = time.perf_counter()
    for window in clip_windows(frames, clip.frames + 1, stride):
        if window.shape[1:] != (clip.height, clip.width, 3) or window.dtype != np.uint8:
            raise CalibrationError(
                f"frames from {source} are {window.dtype} {list(window.shape[1:])}; the model takes uint8 RGB "
                f"{[clip.height, clip.width, 3]} frames"
            )
        writer.add(prompts(model, window))
        if progress is not None:
            progress(writer.written, total)
        if writer.written == total:
            break
    return _finish(writer, source, resize, start)


def collect_from_dataset(
    spec: str,
    model: ModelSource,
    out_dir: str | os.PathLike[str],
    calibration: int,
    held_out: int,
    *,
    resize: str = "area",
    seed: int = 0,
    progress: Progress | None = None,
) -> ClipManifest:
    """Collect clips from a data set (:func:`emim_stream.engines.data.datasets.open_dataset` spec), each item's T+1
    frames -> one clip.

    Items are visited in a seeded random order; when more clips are wanted than the data set
    has items, it is visited again with the next epoch (videos: other random clip starts).

    Args:
        spec: a class-per-folder directory, a list file, or ``synthetic://?split=val...``
            (synthetic ``n`` defaults to the clips wanted).
        model, out_dir, calibration, held_out, progress: as :func:`collect_from_frames`.
        resize: the resize method the frames are prepared with.
        seed: the visiting order and the videos' clip starts.

    Raises:
        CalibrationError: bad counts or an empty data set.
        DatasetError, ConfigError: the data set cannot be opened or read (naming the file).
    """
    _check_counts(calibration, held_out)
    resize = check_resize(resize, "calibration resize method")
    total = calibration + held_out
    T = model.clip.frames
    dataset = open_dataset(
        spec,
        T + 1,
        model.clip.height,
        model.clip.width,
        train=True,
        method=resize,
        seed=seed,
        default_split="val",
        default_n=total,
    )
    if len(dataset) == 0:
        raise CalibrationError(f"data set {redact_uri(spec)} has no items")
    if total > len(dataset):
        log.warning("data set has %d items for %d clips: items are visited more than once", len(dataset), total)
    writer = _Writer(Path(out_dir), model, total, held_out)
    rng = np.random.default_rng([seed, 0xCA11B])
    start = time.perf_counter()
    order: list[int] = []
    for k in range(total):
        if not order:
            dataset.set_epoch(k // len(dataset))
            order = rng.permutation(len(dataset)).tolist()
        frames, _ = dataset[order.pop()]
        writer.add(prompts(model, frames.numpy()))
        if progress is not None:
            progress(writer.written, total)
    return _finish(writer, redact_uri(spec), resize, start)


def load_clips(root: str | os.PathLike[str], model: ModelSource) -> ClipSet:
    """Open a clips folder and check that it fits ``model``.

    Raises:
        CalibrationError: no manifest (no clips), a manifest for another model (weights hash) or
            another input shape, no calibration clip, or a shard missing or of the wrong shape.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise CalibrationError(
            f"no calibration clips in '{root}' (no {MANIFEST}); collect them with "
            "emim-stream calibrate --source URI or --data DIR"
        )
    manifest = ClipManifest.from_json(path.read_text(), path)
    if manifest.weights_sha256 != model.weights_sha256:
        raise CalibrationError(
            f"the clips in '{root}' were collected for {manifest.model_name} weights "
            f"{manifest.weights_sha256[:12]}, but the model is {model.model_name} weights "
            f"{model.weights_sha256[:12]}; collect clips for this checkpoint (the prompts depend on its VMP layer)"
        )
    clip = model.clip
    expected = (3, clip.frames, clip.height, clip.width)
    if manifest.input_shape != expected:
        raise CalibrationError(
            f"the clips in '{root}' are {list(manifest.input_shape)} (3, T, H, W) but the model takes "
            f"{list(expected)}; collect clips at this input size or set engine.frames/height/width"
        )
    if manifest.counts.get(Split.CALIBRATION.value, 0) < 1:
        raise CalibrationError(f"'{root}' holds no calibration clip")
    for shard in manifest.shards:
        file = root / shard.file
        try:
            data = np.load(file, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CalibrationError(f"clip shard '{file}' cannot be read ({err})") from None
        if data.shape != (shard.count, *expected) or data.dtype != np.float32:
            raise CalibrationError(
                f"clip shard '{file}' is {data.dtype} {list(data.shape)}, "
                f"expected float32 {[shard.count, *expected]} as its manifest says"
            )
    return ClipSet(root, manifest)
