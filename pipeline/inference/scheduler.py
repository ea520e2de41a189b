"""The scheduler: which cameras' ready windows share the next engine call.

Each camera holds at most one ready window (its newest:
:meth:`emim_stream.pipeline.inference.stream.CameraStream.drain` skips and
counts the older ones when the loop is behind). The scheduler picks among the cameras holding one, round-robin,
up to the engine's max batch, so no camera starves while others keep their windows coming.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["Scheduler"]


class Scheduler:
    """Picks ready windows for one engine call: round-robin over cameras, at most ``max_batch``.

    Every camera with a ready window is served within ``ceil(cameras / max_batch)`` calls.

    Args:
        camera_ids: every camera, in the order the rotation starts from.
        max_batch: the engine's largest batch.
    """

    def __init__(self, camera_ids: Sequence[str], max_batch: int) -> None:
        self.order = list(camera_ids)
        self.max_batch = max_batch
        self._start = 0

    def pick(self, ready: Collection[str]) -> list[str]:
        """Camera ids to serve now, in a fair rotating order."""
        n = len(self.order)
        rotated = [self.order[(self._start + i) % n] for i in range(n)]
        chosen = [c for c in rotated if c in ready][: self.max_batch]
        if chosen:
            self._start = (self.order.index(chosen[-1]) + 1) % n
        return chosen
