"""Crash-safe recording files: fragmented MP4 segments encoded with PyAV (FFmpeg), write errors, retention.

Why fragmented MP4: a plain MP4 writes its index (``moov``) at close, so after a SIGKILL or a power loss the file
being written does not play. A fragmented MP4 (``movflags=frag_keyframe+empty_moov``) writes an empty index first
and then one self-contained fragment per :data:`FRAGMENT_S` (and per keyframe, one a second), so a crash loses at
most the last half second of the segment being written and everything before it plays, in any MP4 player or
browser.
Matroska survives a crash too, but browsers play MP4 and not Matroska. A camera's recording is a series of such
segments, ``<camera>_<UTC start>.mp4``, each ``segment_s`` long (or ``max_mb``): retention deletes whole segments.

Write errors (full disk, a removed directory, a read-only file system) raise from the muxer at the write that
fails. :class:`SegmentWriter` then logs one ERROR line, closes the file (removing it when not a single frame of it
plays), counts the frames that did not reach the disk (``lost``) and tries a new segment every ``retry_s``;
recording resumes by itself when the disk has room again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import time
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import av
import numpy as np
from av.video.stream import VideoStream

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.outputs.filenames import safe_name, unique_path

__all__ = [
    "ENCODERS",
    "FRAGMENT_S",
    "WRITE_ERRORS",
    "CopiedFile",
    "FragmentedFile",
    "SegmentFiles",
    "SegmentSeries",
    "SegmentWriter",
    "VideoFile",
    "cut_to_whole_fragments",
    "playable_frames",
    "probe_codec",
    "prune",
    "utc_stamp",
]

_log = logging.getLogger(__name__)

ENCODERS = {"h264": "libx264", "mpeg4": "mpeg4"}
"""Codec name (``record.codec``) -> the FFmpeg encoder."""
WRITE_ERRORS = (OSError, av.FFmpegError)
"""What a failing write raises (PyAV's errors carry FFmpeg's errno; ``av.error.OSError`` is an OSError)."""
FRAGMENT_S = 0.5
"""Longest fragment: at most this much of the segment being written is lost in a crash, and a full disk is
noticed within it (the muxer writes a fragment when it ends)."""
_FRAGMENTED = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": str(int(FRAGMENT_S * 1e6)),
    "flush_packets": "1",  # each fragment goes to the kernel when it ends, not when FFmpeg's 32 KB buffer fills
}
_ENCODER_OPTIONS = {"libx264": {"preset": "ultrafast", "tune": "zerolatency"}, "mpeg4": {"qscale": "4"}}
"""The cheapest settings: recording must not take the cameras' CPU (and no lookahead keeps frames out of the
fragments, so a crash loses less)."""
_FPS_FRAMES = 8
"""Frames whose capture times set a new segment's frame rate."""
_SIZE_CHECK_FRAMES = 30


def utc_stamp(wall_s: float | None = None) -> str:
    """``20261207T183400Z`` for ``wall_s`` (default now): file names sort in time order."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_s))


def probe_codec(choice: str) -> str:
    """The codec to record with: ``h264`` or ``mpeg4``, checked by asking FFmpeg for its encoder.

    Args:
        choice: ``auto`` (H.264 when it can be encoded, else MPEG-4 part 2), ``h264`` or ``mpeg4``.

    Raises:
        ConfigError: the asked codec (or, for ``auto``, neither) has no encoder in this FFmpeg.
    """
    for codec in ["h264", "mpeg4"] if choice == "auto" else [choice]:
        if ENCODERS[codec] in av.codecs_available:
            return codec
    raise ConfigError(
        f"record.codec: {choice!r} cannot be encoded by this FFmpeg (PyAV {av.__version__})"
        + ("; use auto or mpeg4" if choice == "h264" else "")
    )


class FragmentedFile:
    """A fragmented MP4 being written (playable up to its last whole fragment at any moment): what the encoded
    and the copied segment files share.

    Raises:
        OSError, av.FFmpegError: the file cannot be created.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.frames = path, 0
        self.header_bytes: int | None = None
        """Bytes on disk after the first frame: the header (a fragment is written when it ends)."""
        self._container: Any = av.open(str(path), "w", format="mp4", options=_FRAGMENTED)

    def _counted(self) -> None:
        """One frame more handed to the muxer."""
        self.frames += 1
        if self.frames == 1:
            self.header_bytes = self.size()

    def size(self) -> int:
        """Bytes on disk so far."""
        return self.path.stat().st_size

    def fragment_on_disk(self) -> bool:
        """Whether a fragment has reached the disk: the file grew past the header its first write put there."""
        return self.header_bytes is not None and self.size() > self.header_bytes

    def close(self) -> None:
        """Write the last fragment and sync the file to disk. Raises on a write error."""
        self._container.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abandon(self) -> None:
        """Close after a write error, ignoring further errors (what reached the disk stays)."""
        with contextlib.suppress(*WRITE_ERRORS):
            self._container.close()


class VideoFile(FragmentedFile):
    """A fragmented MP4 segment encoded from frames.

    Args:
        path: the file to create.
        codec: ``h264`` or ``mpeg4``.
        fps: its frame rate (a keyframe, so a fragment, every second).
        width, height: frame size in pixels (even).

    Raises:
        OSError, av.FFmpegError: the file cannot be created.
    """

    def __init__(self, path: Path, codec: str, fps: float, width: int, height: int) -> None:
        super().__init__(path)
        self.fps = fps
        try:
            encoder = ENCODERS[codec]
            rate = Fraction(round(fps * 100), 100)
            stream = self._container.add_stream(encoder, rate=rate, options=_ENCODER_OPTIONS[encoder])
            self._stream = cast(VideoStream, stream)  # a video encoder makes a video stream
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
            self._stream.codec_context.gop_size = max(1, round(fps))
        except BaseException:
            self.abandon()
            raise

    def write(self, image_bgr: np.ndarray) -> None:
        """Encode one BGR frame (HxWx3 uint8). Raises OSError / av.FFmpegError when the write fails."""
        frame = av.VideoFrame.from_ndarray(image_bgr, format="bgr24")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._counted()

    def close(self) -> None:
        """Flush the encoder, write the last fragment and sync the file to disk. Raises on a write error."""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        super().close()


class CopiedFile(FragmentedFile):
    """A fragmented MP4 segment written from a stream's compressed video packets as they come: no decoding, no
    encoding (see :mod:`emim_stream.pipeline.outputs.stream_copy`).

    Args:
        path: the file to create.
        template: the input video stream whose packets are copied (its codec and parameters are the file's).
        first: the segment's first packet, a key frame: time 0 of the file.

    Raises:
        OSError, av.FFmpegError: the file cannot be created.
    """

    def __init__(self, path: Path, template: VideoStream, first: av.Packet[Any]) -> None:
        super().__init__(path)
        try:
            self._stream = self._container.add_stream_from_template(template)
        except BaseException:
            self.abandon()
            raise
        self._time_base = template.time_base or Fraction(1, 90000)
        self._origin = first.dts if first.dts is not None else 0
        self._last_dts: int | None = None

    @property
    def seconds(self) -> float:
        """Video time written so far."""
        return float((self._last_dts or 0) * self._time_base)

    def write(self, packet: av.Packet[Any]) -> bool:
        """Copy one packet of the template stream; False (nothing written) when its time does not move forward,
        which a muxer refuses. Raises OSError / av.FFmpegError when the write fails."""
        if packet.dts is None:
            return False
        dts = packet.dts - self._origin
        if self._last_dts is not None and dts <= self._last_dts:
            return False
        pts = (packet.pts if packet.pts is not None else packet.dts) - self._origin
        packet.dts, packet.pts = dts, max(pts, dts)
        packet.stream = self._stream
        self._container.mux(packet)
        self._last_dts = dts
        self._counted()
        return True


def cut_to_whole_fragments(path: Path) -> None:
    """Truncate a fragmented MP4 after its last whole fragment (``moof`` and its ``mdat``).

    A write that failed (full disk) or a process killed while writing can leave part of a fragment at the end,
    which players may stop at or decode into garbage; cut there, every frame left in the file decodes. A file
    without one whole fragment keeps only its header (no frame plays). Raises OSError (e.g. read-only file system).
    """
    size = path.stat().st_size
    whole = offset = 0
    with path.open("r+b") as file:
        while offset + 8 <= size:
            file.seek(offset)
            header = file.read(16)
            box_size, kind = struct.unpack(">I4s", header[:8])
            if box_size == 1 and len(header) == 16:  # a 64-bit size follows the type
                box_size = struct.unpack(">Q", header[8:])[0]
            elif box_size == 0:  # the box runs to the end of the file
                box_size = size - offset
            if box_size < 8 or offset + box_size > size:
                break
            offset += box_size
            if kind != b"moof":  # a moof is whole only with the mdat after it
                whole = offset
        if whole < size:
            file.truncate(whole)


def playable_frames(path: Path) -> int:
    """Video frames a player can read from ``path`` (0 for a missing or unreadable file)."""
    try:
        with av.open(str(path)) as container:
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except (*WRITE_ERRORS, ValueError, IndexError):
        return 0


def _fps_of(capture_mono_ns: list[int]) -> float:
    """Frame rate from capture times (30 when they cannot tell), in 1..240."""
    span_ns = capture_mono_ns[-1] - capture_mono_ns[0]
    fps = (len(capture_mono_ns) - 1) * 1e9 / span_ns if span_ns > 0 else 30.0
    return round(min(max(fps, 1.0), 240.0), 2)


def segment_pattern(camera_id: str) -> re.Pattern[str]:
    """File names of ``camera_id``'s segments (``cam1_...`` never matches camera ``cam1_x``'s)."""
    return re.compile(re.escape(safe_name(camera_id)) + r"_\d{8}T\d{6}Z(_\d+)?\.mp4")


def prune(files: Iterable[Path], max_bytes: float | None, max_age_s: float | None) -> list[Path]:
    """Delete the oldest of ``files`` (by modification time) while they take more than ``max_bytes``, and those
    last written more than ``max_age_s`` ago; returns the deleted ones."""
    sized = []
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            sized.append((path, st.st_size, st.st_mtime))
    sized.sort(key=lambda item: item[2])
    total = sum(size for _, size, _ in sized)
    deleted = []
    for path, size, mtime in sized:
        too_big = max_bytes is not None and total > max_bytes
        too_old = max_age_s is not None and time.time() - mtime > max_age_s
        if not (too_big or too_old):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        total -= size
        deleted.append(path)
    return deleted


class SegmentFiles:
    """One camera's segment files in ``directory``: their names, retention, and the leftover of a killed run.

    Args:
        camera_id: the camera (sanitised into the file names).
        directory: where the segments go (created again if it is removed).
        retain_bytes, retain_s: retention of this camera's closed segments (None = keep).

    ``files`` lists the segments started by this run, in order (retention may have deleted the oldest since).
    """

    def __init__(
        self, camera_id: str, directory: Path, retain_bytes: float | None = None, retain_s: float | None = None
    ) -> None:
        self.camera_id, self.directory = camera_id, directory
        self.retain_bytes, self.retain_s = retain_bytes, retain_s
        self.files: list[Path] = []
        self._pattern = segment_pattern(camera_id)

    def new_path(self) -> Path:
        """A fresh ``<camera>_<UTC now>.mp4`` (the directory made again if need be), added to ``files``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = unique_path(self.directory / f"{safe_name(self.camera_id)}_{utc_stamp()}", ".mp4")
        self.files.append(path)
        return path

    def forget(self, path: Path) -> None:
        """Remove ``path``, a segment of which nothing plays, from the disk and from ``files``."""
        with contextlib.suppress(OSError):
            path.unlink()
        if path in self.files:
            self.files.remove(path)

    def salvage(self, file: FragmentedFile) -> int:
        """After a write error: close ``file``, keep its whole fragments (removed when none); its frames lost."""
        file.abandon()
        with contextlib.suppress(OSError):  # a read-only file system keeps the file as it is
            cut_to_whole_fragments(file.path)
        playable = playable_frames(file.path)
        if playable == 0:
            self.forget(file.path)
        return file.frames - playable

    def apply_retention(self) -> None:
        """Delete this camera's oldest segments beyond ``retain_bytes`` and those older than ``retain_s``."""
        if self.retain_bytes is None and self.retain_s is None:
            return
        closed = [p for p in self.directory.iterdir() if self._pattern.fullmatch(p.name)]
        for path in prune(closed, self.retain_bytes, self.retain_s):
            _log.info("recording %s: deleted %s (retention)", self.camera_id, path.name)

    def remove_unplayable_leftover(self) -> None:
        """At start: the newest segment of a previous run (the one being written when it was killed) is cut to its
        whole fragments, and removed when not one frame of it plays."""
        if not self.directory.is_dir():
            return
        mine = sorted(
            (p for p in self.directory.iterdir() if self._pattern.fullmatch(p.name)), key=lambda p: p.stat().st_mtime
        )
        if mine:
            with contextlib.suppress(OSError):
                cut_to_whole_fragments(mine[-1])
        if mine and playable_frames(mine[-1]) == 0:
            with contextlib.suppress(OSError):
                mine[-1].unlink()
                _log.warning("recording %s: removed %s, left unplayable by an earlier run", self.camera_id, mine[-1])


SegmentFile = TypeVar("SegmentFile", VideoFile, CopiedFile)


class SegmentSeries(Generic[SegmentFile]):
    """What every camera's series of segments shares, however its frames get into the files: the counters, the
    state, closing a segment, and write errors (logged once, counted, retried every ``retry_s``).

    Args:
        segments: the camera's segment files (names, retention).
        retry_s: after a write error, how often a new segment is tried.

    Counters: ``written`` (frames in segments), ``lost`` (frames that did not reach the disk because of write
    errors), ``write_errors``; ``files`` (the segments written, in order; retention may have deleted the oldest
    since); ``state`` (``recording`` or ``write_error``, and what a subclass adds) and ``detail`` the last problem.
    """

    def __init__(self, segments: SegmentFiles, retry_s: float) -> None:
        self.segments, self.camera_id, self.retry_s = segments, segments.camera_id, retry_s
        self.written = self.lost = self.write_errors = 0
        self.state, self.detail = "recording", ""
        self._current: SegmentFile | None = None
        self._retry_at: float | None = None

    @property
    def files(self) -> list[Path]:
        """The segments written, in order."""
        return self.segments.files

    def _waiting_to_retry(self) -> bool:
        """True while a write error's retry is not due (the caller's frame is then counted lost)."""
        if self._retry_at is None:
            return False
        if time.monotonic() < self._retry_at:
            self.lost += 1
            return True
        self._retry_at = None
        return False

    def _opened(self) -> None:
        """A segment was opened: the state is ``recording``, unless a write error is not over yet."""
        if self.state != "write_error":
            self.state, self.detail = "recording", ""

    def _wrote(self, current: SegmentFile) -> None:
        """One frame more in ``current``; after a write error, recording has resumed once a fragment of the new
        segment reached the disk (a full disk often takes a new segment's header and first frames, then fails)."""
        self.written += 1
        if self.state == "write_error" and current.fragment_on_disk():
            self._resumed()

    def _resumed(self) -> None:
        _log.info("recording %s resumed after %d frame(s) lost to write errors", self.camera_id, self.lost)
        self.state, self.detail = "recording", ""

    def _finish(self) -> None:
        """Close the current segment, then apply retention to the closed ones."""
        current, self._current = self._current, None
        if current is None:
            return
        try:
            current.close()
        except WRITE_ERRORS as err:
            self._current = current
            self._fail(err)
            return
        if self.state == "write_error":  # a whole segment reached the disk
            self._resumed()
        self.segments.apply_retention()

    def _fail(self, err: BaseException) -> None:
        """A write failed: report it (the first at once), keep what plays of the segment, retry later."""
        detail = f"write error: {err}"
        if self.state != "write_error":
            _log.error("recording %s: %s; retrying every %g s", self.camera_id, detail, self.retry_s)
        else:
            _log.debug("recording %s: still failing: %s", self.camera_id, detail)
        self.state, self.detail = "write_error", detail
        self.write_errors += 1
        current, self._current = self._current, None
        if current is not None:
            unplayable = self.segments.salvage(current)
            self.lost += unplayable
            self.written -= unplayable
        self._retry_at = time.monotonic() + self.retry_s

    def stats(self) -> dict[str, Any]:
        """``state``, ``written``, ``lost`` (to write errors), ``write_errors``, ``files`` (count), ``detail``."""
        return {
            "state": self.state,
            "written": self.written,
            "lost": self.lost,
            "write_errors": self.write_errors,
            "files": len(self.files),
            "detail": self.detail,
        }


class SegmentWriter(SegmentSeries[VideoFile]):
    """One camera's series of encoded fragmented MP4 segments (see the module docstring).

    Args:
        segments: the camera's segment files (names, retention).
        codec: ``h264`` or ``mpeg4``.
        segment_s, max_bytes: a segment ends after this much video or this size.
        retry_s: after a write error, how often a new segment is tried.
    """

    def __init__(self, segments: SegmentFiles, codec: str, segment_s: float, max_bytes: float, retry_s: float) -> None:
        super().__init__(segments, retry_s)
        self.codec, self.segment_s, self.max_bytes = codec, segment_s, max_bytes
        self._first: list[tuple[np.ndarray, int]] = []

    def write(self, image_bgr: np.ndarray, capture_mono_ns: int) -> None:
        """Add one frame; never raises for a write error (it is logged and counted)."""
        if self._waiting_to_retry():
            return
        try:
            if self._current is None:
                self._first.append((image_bgr, capture_mono_ns))
                if len(self._first) >= _FPS_FRAMES:
                    self._start()
                return
            try:
                self._current.write(image_bgr)
            except WRITE_ERRORS:
                self.lost += 1  # the frame in hand
                raise
            self._wrote(self._current)
            if self._full(self._current):
                self._finish()
        except WRITE_ERRORS as err:
            self._fail(err)

    def _start(self) -> None:
        """Open the next segment at the frame rate of the first frames and write them."""
        first = self._first
        height, width = first[0][0].shape[:2]
        path = self.segments.new_path()
        try:
            self._current = VideoFile(path, self.codec, _fps_of([t for _, t in first]), width, height)
        except WRITE_ERRORS:
            self.segments.forget(path)
            raise
        self._first = []
        _log.info("recording %s to %s at %.2f fps", self.camera_id, path, self._current.fps)
        for i, (image, _) in enumerate(first):
            try:
                self._current.write(image)
            except WRITE_ERRORS:
                self.lost += len(first) - i
                raise
            self._wrote(self._current)
        self._opened()

    def _full(self, current: VideoFile) -> bool:
        if current.frames / current.fps >= self.segment_s:
            return True
        return current.frames % _SIZE_CHECK_FRAMES == 0 and current.size() >= self.max_bytes

    def _fail(self, err: BaseException) -> None:
        super()._fail(err)
        self.lost += len(self._first)  # frames waiting for a segment that did not open
        self._first = []

    def close(self) -> None:
        """Write the frames of a camera that ended within its first frames, close the segment. Idempotent."""
        if self._first and self._retry_at is None:
            try:
                self._start()
            except WRITE_ERRORS as err:
                self._fail(err)
        self.lost += len(self._first)  # waiting for a retry that will not come
        self._first = []
        self._finish()
        if self._current is not None:  # closing failed
            self._current.abandon()
            self._current = None
