"""Benchmarks of the streaming path without the model.

- :func:`frame_overhead`: per-frame cost of ring write -> ring read -> VMP prompt -> clip window, in one
  process, for several clip lengths T (the cost must not grow with T: windows are views, not copies).
- :func:`pipeline.ring.ring_throughput`: frames/s through a ring between two processes.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from engines.layers.vmp import VmpLayer
from pipeline.ring import RingReader, SharedRing
from pipeline.vmp_stage import VmpStage
from pipeline.window import ClipWindow

__all__ = ["frame_overhead"]


def frame_overhead(
    frames: int, size: int, clip_frames: int, stride: int = 4, slots: int = 64, threads: int = 1
) -> dict[str, float]:
    """Time each stage per frame on the CPU (float32 prompts, batch VMP parameters).

    Returns:
        ``{"T", "frames", "write_us", "read_us", "vmp_us", "window_us", "total_us"}``: medians per frame in
        microseconds, after a warm-up of ``2 * clip_frames`` frames.
    """
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, size, size, 3), dtype=np.uint8)
    torch.manual_seed(0)
    stage = VmpStage(VmpLayer())
    window = ClipWindow(clip_frames, stride, size, size)
    out = np.empty((size, size, 3), dtype=np.uint8)
    times = np.zeros((frames, 4), dtype=np.int64)
    warm = 2 * clip_frames
    with SharedRing.create(slots, size, size) as ring:
        reader = RingReader(ring, start_seq=0)
        for seq in range(frames + warm):
            t0 = time.perf_counter_ns()
            ring.write(images[seq % len(images)], seq, t0, 0)
            t1 = time.perf_counter_ns()
            frame = reader.read_next(out)
            t2 = time.perf_counter_ns()
            prompt = stage.push(frame.image, frame.seq)
            t3 = time.perf_counter_ns()
            if prompt is not None:
                window.push(prompt, frame.seq)
            t4 = time.perf_counter_ns()
            if seq >= warm:
                times[seq - warm] = (t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        ring.unlink()
    med = np.median(times, axis=0) / 1e3
    return {
        "T": clip_frames,
        "frames": frames,
        "write_us": float(med[0]),
        "read_us": float(med[1]),
        "vmp_us": float(med[2]),
        "window_us": float(med[3]),
        "total_us": float(np.median(times.sum(axis=1)) / 1e3),
    }
