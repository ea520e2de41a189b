"""Benchmarks of the streaming path without the model.

- :func:`frame_overhead`: per-frame cost of ring write -> ring read -> VMP prompt -> clip window, in one
  process, for several clip lengths T (the cost must not grow with T: windows are views, not copies).
- :func:`ring_throughput`: frames/s through a ring between two processes.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import torch

from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.pipeline.capture.ring import RingReader, SharedRing
from emim_stream.pipeline.errors import PipelineError
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow

__all__ = ["frame_overhead", "ring_throughput"]


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
            assert frame is not None  # written just above
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


def _throughput_writer(name: str, frames: int, reader_next: ctypes.c_longlong, conn: Connection) -> None:
    """Benchmark writer process: write ``frames`` frames, staying less than a ring behind the reader."""
    ring = SharedRing.attach(name)
    try:
        images = [np.full((ring.height, ring.width, 3), i, dtype=np.uint8) for i in range(251)]
        conn.send("ready")
        conn.recv()
        start_ns = time.monotonic_ns()
        for seq in range(frames):
            while seq - reader_next.value >= ring.slots - 1:  # benchmark flow control only
                time.sleep(0)
            ring.write(images[seq % 251], seq, time.monotonic_ns(), time.time_ns())
        conn.send(time.monotonic_ns() - start_ns)
    finally:
        ring.close()


def _recv_from(process: BaseProcess, conn: Connection, timeout_s: float) -> object:
    """The next object ``process`` sends on ``conn``; PipelineError if it dies or stays silent."""
    deadline = time.monotonic() + timeout_s
    while not conn.poll(0.05):
        if not process.is_alive():
            raise PipelineError(f"ring benchmark writer exited with code {process.exitcode}")
        if time.monotonic() > deadline:
            raise PipelineError(f"ring benchmark writer silent for {timeout_s} s")
    return conn.recv()


def ring_throughput(
    frames: int, height: int, width: int, slots: int, timeout_s: float = 60.0
) -> dict[str, Any]:
    """Sustained frames/s through a ring between two processes: a spawned writer, the reader in the caller.

    The reader follows with ``read_next`` into a reused array and checks each frame's payload. For the
    measurement only, the writer waits while it is ``slots - 1`` frames ahead of the reader, so the figure is
    the rate both sides sustain without loss (the pipeline's camera writer never waits).

    Args:
        frames: frames to write.
        height, width: frame size in pixels.
        slots: ring size (>= 2).
        timeout_s: give up after this long.

    Returns:
        ``{"frames", "height", "width", "slots", "delivered", "dropped", "torn", "corrupt", "fps", "mb_per_s",
        "elapsed_s"}``: ``fps`` = frames delivered per second from the writer's start to the last frame read;
        ``corrupt`` = delivered frames whose payload was wrong (must be 0).

    Raises:
        PipelineError: the writer process failed or the run timed out.
    """
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    reader_next = ctx.Value("q", 0, lock=False)
    with SharedRing.create(slots, height, width) as ring:
        writer = ctx.Process(
            target=_throughput_writer, args=(ring.name, frames, reader_next, child_conn), daemon=True
        )
        writer.start()
        try:
            _recv_from(writer, parent_conn, timeout_s)  # "ready"
            reader = RingReader(ring, start_seq=0)
            out = np.empty((height, width, 3), dtype=np.uint8)
            delivered = corrupt = 0
            parent_conn.send("go")
            start_ns = end_ns = time.monotonic_ns()
            deadline_ns = start_ns + int(timeout_s * 1e9)
            while reader.next_seq < frames:
                frame = reader.read_next(out)
                if frame is None:
                    if time.monotonic_ns() > deadline_ns or (not writer.is_alive() and ring.latest_seq < frames - 1):
                        raise PipelineError(f"ring benchmark stopped at seq {ring.latest_seq} of {frames}")
                    continue
                reader_next.value = reader.next_seq
                delivered += 1
                value = frame.seq % 251
                corrupt += int(frame.image[0, 0, 0] != value or frame.image[-1, -1, -1] != value)
                end_ns = time.monotonic_ns()
            _recv_from(writer, parent_conn, timeout_s)  # the writer's elapsed ns
        finally:
            writer.join(timeout=5)
            if writer.is_alive():
                writer.terminate()
                writer.join()
    elapsed_s = max(end_ns - start_ns, 1) / 1e9
    return {
        "frames": frames,
        "height": height,
        "width": width,
        "slots": slots,
        "delivered": delivered,
        "dropped": reader.dropped,
        "torn": reader.torn,
        "corrupt": corrupt,
        "fps": delivered / elapsed_s,
        "mb_per_s": delivered * height * width * 3 / elapsed_s / 1e6,
        "elapsed_s": elapsed_s,
    }
