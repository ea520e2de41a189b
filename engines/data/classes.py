"""The classes of the synthetic motion scenes: the demo model's labels, in its output order.

A module of its own so that the model zoo (the ``emim_xs`` preset's label names) does not import the scene
generator.
"""

from __future__ import annotations

__all__ = ["SYNTHETIC_CLASSES"]

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "static", "left", "right", "up", "down", "approach", "recede", "rotate_cw", "rotate_ccw",
)
