"""Render a fixed clip data set once into a ``.npy`` file and read it back memory-mapped.

Rendering a photographic synthetic clip costs more CPU than a training step on it, so a run of
several epochs over the same clips renders them once: :func:`cache_clips` fills
``<folder>/clips-<key>.npy`` (``[N, T+1, H, W, 3]`` uint8, written under a temporary name and renamed
when complete), named by a digest of what the data set is, and later runs with the same data set
find it. The file is read with ``allow_pickle=False``: it can hold only numbers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from emim_stream.engines import transforms
from emim_stream.engines.clip import ClipSampling
from emim_stream.engines.data import synthetic
from emim_stream.engines.data.datasets import ClipDataset
from emim_stream.engines.errors import ConfigError

__all__ = ["CachedClips", "cache_clips", "cache_path"]

_log = logging.getLogger(__name__)
_FORMAT = "emim-stream.clips/1"


class CachedClips(ClipDataset):
    """The items of a fixed data set, read from a ``[N, T+1, H, W, 3]`` uint8 array."""

    def __init__(self, base: ClipDataset, clips: np.ndarray, path: Path) -> None:
        self.base, self.clips, self.path, self.epoch = base, clips, path, 0
        self.labels, self.frames, self.height, self.width = base.labels, base.frames, base.height, base.width
        self._targets = base.targets

    def __len__(self) -> int:
        return len(self._targets)

    @property
    def targets(self) -> list[int]:
        return self._targets

    @property
    def sampling(self) -> ClipSampling:
        return self.base.sampling

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.clips[i])), self._targets[i]

    def describe(self) -> str:
        return f"{self.base.describe()} (rendered once, cached in {self.path})"


def cache_path(dataset: ClipDataset, folder: Path) -> Path:
    """Where the clips of ``dataset`` are cached in ``folder``: named by a digest of what it is and of the code
    that renders it (the data set's module, the synthetic scenes, the frame transforms), so a changed renderer
    never serves clips it would no longer make."""
    code = hashlib.sha256()
    for module in (sys.modules[type(dataset).__module__], synthetic, transforms):
        code.update(Path(inspect.getfile(module)).read_bytes())
    what = {
        "format": _FORMAT, "kind": type(dataset).__name__, "describe": dataset.describe(), "labels": dataset.labels,
        "shape": [len(dataset), dataset.frames, dataset.height, dataset.width, 3], "code": code.hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return folder / f"clips-{digest[:20]}.npy"


def cache_clips(dataset: ClipDataset, folder: Path, workers: int = 0) -> CachedClips:
    """``dataset`` served from its cache file in ``folder``, rendering the file first when missing or unreadable.

    Args:
        dataset: a data set whose items do not change with the epoch.
        folder: the cache folder (created when missing).
        workers: processes that render the items.

    Raises:
        ConfigError: ``dataset`` varies with the epoch (synthetic ``fresh=1``, training clips of videos).
    """
    if not dataset.fixed_items:
        raise ConfigError(f"--cache-clips needs a data set that is the same every epoch; {dataset.describe()} is not")
    path = cache_path(dataset, folder)
    shape = (len(dataset), dataset.frames, dataset.height, dataset.width, 3)
    if path.exists():
        try:
            clips = np.load(path, mmap_mode="r", allow_pickle=False)
            if clips.shape == shape and clips.dtype == np.uint8:
                _log.info("clip cache: %s (%d clips)", path, len(clips))
                return CachedClips(dataset, clips, path)
            _log.warning("clip cache %s holds %s %s, expected %s uint8: rendering it again", path, clips.shape,
                         clips.dtype, shape)
        except (OSError, ValueError) as error:
            _log.warning("clip cache %s is unreadable (%s): rendering it again", path, error)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
    _log.info("clip cache: rendering %d clips (%.1f GB) into %s with %d worker(s)", shape[0],
              np.prod(shape) / 1e9, path, workers)
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers)
        start, every = time.monotonic(), max(1, shape[0] // 20)
        for i, (clip, _) in enumerate(loader):
            out[i] = clip.numpy()
            if (i + 1) % every == 0 or i + 1 == shape[0]:
                rate = (i + 1) / max(time.monotonic() - start, 1e-9)
                _log.info("clip cache: %d/%d clips, %.1f clips/s, eta %.0f s", i + 1, shape[0], rate,
                          (shape[0] - i - 1) / rate)
        out.flush()
        del out
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return CachedClips(dataset, np.load(path, mmap_mode="r", allow_pickle=False), path)
