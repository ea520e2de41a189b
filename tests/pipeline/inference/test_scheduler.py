"""The scheduler is fair: every camera with a ready window is served within ceil(cameras / max_batch) calls."""

from __future__ import annotations

import math
import random

import pytest

from emim_stream.pipeline.config import load_config
from emim_stream.pipeline.inference.scheduler import Scheduler
from emim_stream.pipeline.measure.capacity import with_cameras


@pytest.mark.parametrize(("cameras", "max_batch"), [(1, 1), (3, 1), (5, 2), (4, 4), (7, 3), (2, 8)])
def test_no_camera_waits_longer_than_the_bound(cameras, max_batch):
    ids = [f"cam{i}" for i in range(cameras)]
    sched = Scheduler(ids, max_batch)
    bound = math.ceil(cameras / max_batch)
    rng = random.Random(cameras * 10 + max_batch)
    waiting: dict[str, int] = {}  # camera -> calls since its window became ready
    for _ in range(2000):
        for c in ids:  # windows become ready at random; a ready camera stays ready until served
            if c not in waiting and rng.random() < 0.6:
                waiting[c] = 0
        chosen = sched.pick(set(waiting))
        assert len(chosen) == min(max_batch, len(waiting)) and len(set(chosen)) == len(chosen)
        assert set(chosen) <= set(waiting)
        for c in chosen:
            del waiting[c]
        for c in waiting:
            waiting[c] += 1
            assert waiting[c] < bound, f"{c} waited {waiting[c]} calls (bound {bound})"


def test_all_cameras_always_ready_are_served_equally():
    sched = Scheduler(["a", "b", "c", "d", "e"], 2)
    served = {c: 0 for c in "abcde"}
    for _ in range(500):
        for c in sched.pick(set("abcde")):
            served[c] += 1
    assert max(served.values()) - min(served.values()) <= 1


def test_capacity_copies_the_first_camera_with_its_own_seed():
    cfg = load_config(None, ["cameras=[{id: x, source: 'synthetic://?seed=9&fps=20&size=64x48', stride: 3}]"])
    many = with_cameras(cfg, 3)
    assert [c.id for c in many.cameras] == ["cam1", "cam2", "cam3"]
    assert [c.source for c in many.cameras] == [f"synthetic://?seed={i}&fps=20&size=64x48" for i in (1, 2, 3)]
    assert all(c.stride == 3 for c in many.cameras) and many.engine == cfg.engine
