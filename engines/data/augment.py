"""Motion symmetries: mirror, transpose or reverse a clip and name the motion it then shows.

A clip of the nine motions (:data:`emim_stream.engines.data.synthetic.CLASSES`) stays a clip of one of them under a
mirror about either axis, a transpose (for square clips) and time reversal: a mirrored ``left`` moves
``right``, a reversed ``approach`` recedes, and every mirror or reversal turns a clockwise rotation
counter-clockwise. :class:`SymmetricClips` draws one of these (up to 16) per training item, which
multiplies what a fixed set of rendered clips teaches without rendering more.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from emim_stream.engines.clip import ClipSampling
from emim_stream.engines.data.datasets import ClipDataset
from emim_stream.engines.data.synthetic import CLASSES
from emim_stream.engines.errors import ConfigError

__all__ = ["SYMMETRIES", "SymmetricClips", "Symmetry"]

# Each step's label swaps, in the order Symmetry.apply performs the steps.
_TRANSPOSE = {"left": "up", "right": "down", "rotate_cw": "rotate_ccw"}
_FLIP_X = {"left": "right", "rotate_cw": "rotate_ccw"}
_FLIP_Y = {"up": "down", "rotate_cw": "rotate_ccw"}
_REVERSE = {"left": "right", "up": "down", "approach": "recede", "rotate_cw": "rotate_ccw"}
_AUGMENT_TAG = 0x5E7A09


def _swap(table: dict[str, str], name: str) -> str:
    both = {**table, **{b: a for a, b in table.items()}}
    return both.get(name, name)


@dataclass(frozen=True, slots=True)
class Symmetry:
    """Transpose (x <-> y), then mirror left-right, then mirror top-bottom, then reverse time."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False
    reverse: bool = False

    def apply(self, clip: torch.Tensor) -> torch.Tensor:
        """The clip ``[T, H, W, C]`` (any dtype) seen through this symmetry."""
        if self.transpose:
            clip = clip.transpose(1, 2)
        dims = [d for d, on in ((2, self.flip_x), (1, self.flip_y), (0, self.reverse)) if on]
        return clip.flip(dims).contiguous() if dims else clip.contiguous()

    def label(self, name: str) -> str:
        """The motion a clip of ``name`` shows after :meth:`apply`.

        Raises:
            ConfigError: ``name`` is not one of the nine motions.
        """
        if name not in CLASSES:
            raise ConfigError(f"label {name!r} is not a motion with a known mirror image")
        for on, table in ((self.transpose, _TRANSPOSE), (self.flip_x, _FLIP_X), (self.flip_y, _FLIP_Y),
                          (self.reverse, _REVERSE)):
            if on:
                name = _swap(table, name)
        return name


SYMMETRIES: tuple[Symmetry, ...] = tuple(Symmetry(*bits) for bits in itertools.product((False, True), repeat=4))
"""All 16: the 8 symmetries of a square, each forwards and reversed."""


class SymmetricClips(ClipDataset):
    """``base`` with a seeded random symmetry per item and epoch (transposes only for square clips).

    Raises:
        ConfigError: a label of ``base`` has no known mirror image (only the nine motions do).
    """

    def __init__(self, base: ClipDataset, seed: int) -> None:
        self.base, self.seed, self.epoch = base, seed, 0
        self.labels, self.frames, self.height, self.width = base.labels, base.frames, base.height, base.width
        self.symmetries = tuple(s for s in SYMMETRIES if base.height == base.width or not s.transpose)
        try:
            self._maps = [[self.labels.index(s.label(name)) for name in self.labels] for s in self.symmetries]
        except (ConfigError, ValueError) as error:
            raise ConfigError(
                f"--augment needs a data set of the nine motion classes and their mirror images; {error}"
            ) from None

    def __len__(self) -> int:
        return len(self.base)

    @property
    def targets(self) -> list[int]:
        return self.base.targets

    @property
    def sampling(self) -> ClipSampling:
        return self.base.sampling

    @property
    def fixed_items(self) -> bool:
        return False  # a new symmetry every epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        clip, label = self.base[i]
        pick = int(np.random.default_rng([_AUGMENT_TAG, self.seed, self.epoch, i]).integers(len(self.symmetries)))
        return self.symmetries[pick].apply(clip), self._maps[pick][label]

    def describe(self) -> str:
        ways = len(self.symmetries)
        return f"{self.base.describe()}, each clip mirrored / transposed / reversed at random ({ways} ways)"
