"""Benchmarks of the streaming path without the model.

- :func:`frame_overhead`: per-frame cost of ring write -> ring read -> VMP prompt -> clip window, in one
  process, for several clip lengths T (the cost must not grow with T: windows are views, not copies).
- :func:`ring_throughput`: frames/s through a ring between two processes and the p50/p99 time of one write and of
  one read, with the ring's memory fences or (x86-64 only, for comparison) without.
- :func:`camera_cost`: ring writes per second and CPU of a real camera process (and of draining its ring) for a
  clip sampling: what sampling in the camera saves.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, cast

import numpy as np
import psutil
import torch

from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.sampling import SamplingRequest
from emim_stream.pipeline.capture.ordering import MemoryOrdering
from emim_stream.pipeline.capture.ring import RingReader, SharedRing
from emim_stream.pipeline.capture.supervisor import CameraSupervisor
from emim_stream.pipeline.config import CameraConfig, SupervisorConfig
from emim_stream.pipeline.errors import PipelineError
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow

__all__ = ["camera_cost", "frame_overhead", "ring_throughput"]


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


def _throughput_writer(
    name: str, frames: int, reader_next: ctypes.c_longlong, conn: Connection, ordering: MemoryOrdering
) -> None:
    """Benchmark writer process: write ``frames`` frames, staying less than a ring behind the reader; sends the
    elapsed ns and each write's duration in ns."""
    ring = SharedRing.attach(name, ordering)
    try:
        images = [np.full((ring.height, ring.width, 3), i, dtype=np.uint8) for i in range(251)]
        write_ns = np.zeros(frames, dtype=np.int64)
        conn.send("ready")
        conn.recv()
        start_ns = time.monotonic_ns()
        for seq in range(frames):
            while seq - reader_next.value >= ring.slots - 1:  # benchmark flow control only
                time.sleep(0)
            t0 = time.perf_counter_ns()
            ring.write(images[seq % 251], seq, time.monotonic_ns(), time.time_ns())
            write_ns[seq] = time.perf_counter_ns() - t0
        conn.send((time.monotonic_ns() - start_ns, write_ns))
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
    frames: int,
    height: int,
    width: int,
    slots: int,
    timeout_s: float = 60.0,
    ordering: MemoryOrdering = MemoryOrdering.FENCED,
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
        ordering: the ring's memory ordering (PLAIN: x86-64 only, to measure what the fences cost).

    Returns:
        ``{"frames", "height", "width", "slots", "ordering", "delivered", "dropped", "torn", "corrupt", "fps",
        "mb_per_s", "elapsed_s", "write_p50_us", "write_p99_us", "read_p50_us", "read_p99_us"}``: ``fps`` = frames
        delivered per second from the writer's start to the last frame read; ``corrupt`` = delivered frames whose
        payload was wrong (must be 0); write and read times are per frame (a read: ``read_next`` that delivered).

    Raises:
        PipelineError: the writer process failed or the run timed out.
    """
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    reader_next = ctx.Value("q", 0, lock=False)
    with SharedRing.create(slots, height, width, ordering=ordering) as ring:
        writer = ctx.Process(
            target=_throughput_writer, args=(ring.name, frames, reader_next, child_conn, ordering), daemon=True
        )
        writer.start()
        try:
            _recv_from(writer, parent_conn, timeout_s)  # "ready"
            reader = RingReader(ring, start_seq=0)
            out = np.empty((height, width, 3), dtype=np.uint8)
            delivered = corrupt = 0
            read_ns = np.zeros(frames, dtype=np.int64)
            parent_conn.send("go")
            start_ns = end_ns = time.monotonic_ns()
            deadline_ns = start_ns + int(timeout_s * 1e9)
            while reader.next_seq < frames:
                t0 = time.perf_counter_ns()
                frame = reader.read_next(out)
                t1 = time.perf_counter_ns()
                if frame is None:
                    if time.monotonic_ns() > deadline_ns or (not writer.is_alive() and ring.latest_seq < frames - 1):
                        raise PipelineError(f"ring benchmark stopped at seq {ring.latest_seq} of {frames}")
                    continue
                reader_next.value = reader.next_seq
                read_ns[delivered] = t1 - t0
                delivered += 1
                value = frame.seq % 251
                corrupt += int(frame.image[0, 0, 0] != value or frame.image[-1, -1, -1] != value)
                end_ns = time.monotonic_ns()
            _, write_ns = cast("tuple[int, np.ndarray]", _recv_from(writer, parent_conn, timeout_s))
        finally:
            writer.join(timeout=5)
            if writer.is_alive():
                writer.terminate()
                writer.join()
    elapsed_s = max(end_ns - start_ns, 1) / 1e9
    write_us = np.percentile(write_ns, [50, 99]) / 1e3
    read_us = np.percentile(read_ns[:delivered], [50, 99]) / 1e3 if delivered else np.zeros(2)
    return {
        "frames": frames,
        "height": height,
        "width": width,
        "slots": slots,
        "ordering": ordering.value,
        "delivered": delivered,
        "dropped": reader.dropped,
        "torn": reader.torn,
        "corrupt": corrupt,
        "fps": delivered / elapsed_s,
        "mb_per_s": delivered * height * width * 3 / elapsed_s / 1e6,
        "elapsed_s": elapsed_s,
        "write_p50_us": float(write_us[0]),
        "write_p99_us": float(write_us[1]),
        "read_p50_us": float(read_us[0]),
        "read_p99_us": float(read_us[1]),
    }


def camera_cost(
    source: str, size: int, sampling: SamplingRequest, seconds: float, all_frames: bool = False, slots: int = 64
) -> dict[str, float]:
    """What one camera costs with a sampling: a real camera process on ``source``, drained as the inference loop
    drains it (ring read, VMP stage, clip window; no model).

    Measured for ``seconds`` from the first frame: frames decoded and frames written to the ring per second, the
    camera process's CPU (decode, sampling, resize and crop, ring write) and the draining side's CPU, each in
    seconds per second (1.0 = one core).

    Args:
        source: a camera source (a file loops, paced at its frame rate).
        size: the model's square input size.
        sampling: what the camera delivers (the checkpoint's sampling, or a fixed interval).
        seconds: measuring time.
        all_frames: write every frame (the recorder's mode), not only the model's samples.
        slots: ring size.

    Raises:
        PipelineError: the camera gave no frame within 30 s.
    """
    torch.set_num_threads(1)
    camera = CameraConfig("bench", source, loop=True)
    stage = VmpStage(VmpLayer())
    window = ClipWindow(sampling.frames, sampling.stride, size, size)
    everything = ("bench",) if all_frames else ()
    with CameraSupervisor((camera,), slots, size, size, SupervisorConfig(), {"bench": sampling}, everything) as cams:
        cams.start()
        handle = cams.cameras["bench"]
        reader = RingReader(handle.ring, start_seq=0)
        out = np.empty((size, size, 3), dtype=np.uint8)
        deadline = time.monotonic() + 30
        while handle.ring.latest_seq < 0:
            if time.monotonic() > deadline or cams.all_finished():
                raise PipelineError(f"camera benchmark: {source} gave no frame ({handle.detail or 'no note'})")
            cams.poll()
            time.sleep(0.01)
        if handle.process is None:  # pragma: no cover - start() spawned it
            raise PipelineError("camera benchmark: the camera process was not started")
        ring, camera_cpu = handle.ring, psutil.Process(handle.process.pid)
        start_seq, start_frame = ring.latest_seq, ring.latest_frame_seq
        start_cpu, start_mine, start = sum(camera_cpu.cpu_times()[:2]), time.process_time(), time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            frame = reader.read_next(out)
            if frame is None:
                time.sleep(0.002)
                continue
            for sample in range(frame.sample_seq, frame.sample_seq + frame.samples):
                prompt = stage.push(frame.image, sample)
                if prompt is not None:
                    window.push(prompt, sample)
        writes, frames = ring.latest_seq - start_seq, ring.latest_frame_seq - start_frame
        cpu, mine = sum(camera_cpu.cpu_times()[:2]) - start_cpu, time.process_time() - start_mine
    return {
        "frames_per_s": frames / elapsed,
        "writes_per_s": writes / elapsed,
        "camera_cpu": cpu / elapsed,
        "drain_cpu": mine / elapsed,
    }
