"""What decoding and preparing one camera's frames costs, per decoder and resize method (``emim-stream bench-decode``).

- :func:`make_test_video`: an H.264 file made with the ``ffmpeg`` command (moving test pattern, constant bitrate).
- :func:`decode_cost`: CPU per frame and frames per second of a decoder reading a file as fast as it can, in this
  process, preparing (resize, crop, RGB) every N-th frame as a camera does for the frames the model samples.
- :func:`pixel_difference`: how far the FFmpeg decoder's frames are from the OpenCV path's, on the same frames.
- :func:`copy_cost`: CPU per frame of recording a stream as it comes (``cameras[].record_source``: its packets
  copied into a segment, never decoded).

- :func:`camera_process_costs`: real camera processes, one per decoder, on the same file at the same time: the CPU
  of each over the same interval.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import psutil

from emim_stream.engines.sampling import SamplingRequest
from emim_stream.engines.transforms import ResizeMethod
from emim_stream.engines.uris import redact_uri
from emim_stream.pipeline.capture.preprocess import Preprocessor
from emim_stream.pipeline.capture.sources import DECODERS, PreparedFrame, SourceFrame, open_source
from emim_stream.pipeline.capture.supervisor import CameraSupervisor
from emim_stream.pipeline.config import CameraConfig, Decoder, SupervisorConfig
from emim_stream.pipeline.errors import EndOfStream, PipelineError
from emim_stream.pipeline.outputs.segments import CopiedFile

__all__ = ["DecodeCost", "camera_process_costs", "copy_cost", "decode_cost", "make_test_video", "pixel_difference"]


@dataclass(frozen=True, slots=True)
class DecodeCost:
    """One decoder and resize method on one file."""

    frames: int
    """Frames decoded."""
    prepared: int
    """Frames prepared (resized, cropped, converted) among them."""
    cpu_ms_per_frame: float
    """CPU time of this process (all its threads) per decoded frame."""
    fps: float
    """Decoded frames per second of wall time."""

    def cameras_per_core(self, camera_fps: float) -> float:
        """How many cameras of ``camera_fps`` one core would decode and prepare at this cost."""
        return 1000.0 / (self.cpu_ms_per_frame * camera_fps)


def make_test_video(path: Path, width: int, height: int, fps: int, seconds: float, bitrate: str) -> Path:
    """Write an H.264 (yuv420p) file of FFmpeg's moving ``testsrc2`` pattern at a constant ``bitrate`` (``6M``).

    Raises:
        PipelineError: no ``ffmpeg`` command, or it failed.
    """
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise PipelineError("bench-decode makes its videos with the ffmpeg command; install ffmpeg")
    cmd = [
        exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}", "-t", f"{seconds:g}",
        "-c:v", "libx264", "-preset", "veryfast", "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
        "-pix_fmt", "yuv420p", "-g", str(2 * fps), str(path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise PipelineError(f"ffmpeg could not make {path}: {done.stderr.strip()[-300:]}")
    return path


def _image(frame: SourceFrame | PreparedFrame, pre: Preprocessor) -> np.ndarray:
    return frame.image if isinstance(frame, PreparedFrame) else pre(frame.image, bgr=True)


def decode_cost(path: Path, decoder: str, resize: str, size: int, frames: int, every: int = 1) -> DecodeCost:
    """Decode ``frames`` frames of ``path`` (looping, unpaced) and prepare one in ``every`` to ``size x size`` RGB.

    Raises:
        PipelineError: the file gave no frame.
    """
    pre = Preprocessor(size, size, resize)
    source = open_source(str(path), loop=True, pace=False, decoder=decoder, size=(size, size), resize=resize)
    with source:
        for _ in range(5):  # warm up: the first frames set up decoder threads and the scaler
            if (frame := source.read()) is not None:
                _image(frame, pre)
        decoded = prepared = 0
        cpu, wall = time.process_time(), time.perf_counter()
        while decoded < frames:
            frame = source.read()
            if frame is None:
                raise PipelineError(f"decode benchmark: {path} gave no frame")
            if decoded % every == 0:
                _image(frame, pre)
                prepared += 1
            decoded += 1
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return DecodeCost(decoded, prepared, 1000 * cpu / decoded, decoded / wall)


def copy_cost(path: Path, frames: int, folder: Path) -> float:
    """CPU milliseconds per frame of recording ``path``'s video as ``record_source`` does: its packets read and
    copied into a fragmented MP4 segment in ``folder`` (the file read again from its start until ``frames``)."""
    copied, cpu = 0, time.process_time()
    while copied < frames:
        with av.open(str(path)) as source:
            stream = source.streams.video[0]
            segment: CopiedFile | None = None
            for packet in source.demux(stream):
                if packet.dts is None or copied >= frames:
                    continue
                if segment is None:
                    segment = CopiedFile(folder / f"copy{copied}.mp4", stream, packet)
                copied += segment.write(packet)
            if segment is None:
                raise PipelineError(f"copy benchmark: {path} has no video packet")
            segment.close()
    return 1000 * (time.process_time() - cpu) / copied


def pixel_difference(path: Path, resize: str, size: int, frames: int = 30) -> tuple[float, float, int]:
    """``(mean, 99th percentile, max)`` absolute difference in levels (0-255) between the FFmpeg decoder's frames and
    the OpenCV path's (decode, :class:`Preprocessor`) on the first ``frames`` frames of ``path``."""
    pre = Preprocessor(size, size, resize)
    diffs = []
    ffmpeg = open_source(str(path), pace=False, decoder="ffmpeg", size=(size, size), resize=resize)
    opencv = open_source(str(path), pace=False)
    with ffmpeg, opencv:
        try:
            for _ in range(frames):
                a, b = ffmpeg.read(), opencv.read()
                if a is None or b is None:
                    break
                diffs.append(np.abs(_image(a, pre).astype(np.int16) - _image(b, pre).astype(np.int16)))
        except EndOfStream:
            pass
    if not diffs:
        raise PipelineError(f"pixel difference: {path} gave no frame")
    d = np.stack(diffs)
    return float(d.mean()), float(np.percentile(d, 99)), int(d.max())


def camera_process_costs(
    source: str,
    size: int,
    sampling: SamplingRequest,
    seconds: float,
    decoders: Sequence[Decoder] = DECODERS,
    all_frames: bool = False,
    resize: ResizeMethod = ResizeMethod.AREA,
) -> dict[str, dict[str, float]]:
    """One real camera process per decoder on the same ``source``, side by side, each process's CPU over the same
    ``seconds`` (so the load of the machine weighs on every decoder alike).

    Returns:
        Per decoder: ``frames_per_s`` (decoded), ``writes_per_s`` (ring writes), ``cpu`` (seconds per second, 1.0 =
        one core) and ``cpu_ms_per_frame``.

    Raises:
        PipelineError: a camera gave no frame within 30 s.
    """
    cameras = tuple(CameraConfig(decoder, source, loop=True, resize=resize, decoder=decoder) for decoder in decoders)
    requests: dict[str, SamplingRequest] = {decoder: sampling for decoder in decoders}
    everything = decoders if all_frames else ()
    with CameraSupervisor(cameras, 16, size, size, SupervisorConfig(), requests, everything) as cams:
        cams.start()
        deadline = time.monotonic() + 30
        while any(h.ring.latest_seq < 0 for h in cams.cameras.values()):
            if time.monotonic() > deadline or cams.all_finished():
                notes = "; ".join(f"{k}: {h.detail or 'no note'}" for k, h in cams.cameras.items())
                raise PipelineError(f"camera benchmark: {redact_uri(source)} gave no frame ({notes})")
            cams.poll()
            time.sleep(0.01)
        procs = {k: psutil.Process(h.process.pid) for k, h in cams.cameras.items() if h.process is not None}
        start = {k: (sum(p.cpu_times()[:2]), h.ring.latest_seq, h.ring.latest_frame_seq)
                 for (k, p), h in zip(procs.items(), cams.cameras.values(), strict=True)}  # fmt: skip
        began = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - began
        results = {}
        for (k, p), h in zip(procs.items(), cams.cameras.values(), strict=True):
            cpu0, seq0, frame0 = start[k]
            cpu, frames = sum(p.cpu_times()[:2]) - cpu0, h.ring.latest_frame_seq - frame0
            results[k] = {
                "frames_per_s": frames / elapsed,
                "writes_per_s": (h.ring.latest_seq - seq0) / elapsed,
                "cpu": cpu / elapsed,
                "cpu_ms_per_frame": 1000 * cpu / max(frames, 1),
            }
    return results
