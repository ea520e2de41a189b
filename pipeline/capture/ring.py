"""Shared-memory frame ring: one writer (the camera process), any number of readers.

The writer never waits for a reader. When a reader falls behind, the oldest slots are overwritten and the reader
finds out from sequence numbers; a slot overwritten *while* it is being copied is caught by a per-slot seqlock
and reported as torn, never returned.

Segment layout (one ``multiprocessing.shared_memory`` block, named ``emim_<owner pid>_<random hex>``, all integers
int64 native-endian)::

    header   256 B   magic, layout version, slots, height, width, latest_seq, heartbeat_mono_ns,
                     writer status (state, fps, reconnects, frames_lost, source_width, source_height),
                     latest frame_seq, latest sample_seq
    meta     slots x 128 B  per slot: version, seq, capture_mono_ns, capture_wall_ns, source_pts_ns,
                            ring_mono_ns (when the frame was written), frame_seq, sample_seq, samples
    images   slots x H*W*3 B (each rounded up to 64 B)   uint8 RGB, HWC

Three numbers per frame: ``seq`` orders the ring's writes (a gap is a frame written but lost to the reader);
``frame_seq`` is the camera's frame number (every decoded frame counts, and frames lost upstream); ``sample_seq``
numbers the model's samples (:class:`emim_stream.engines.sampling.FrameSampler`): the frame is samples
``sample_seq .. sample_seq + samples - 1``, and ``samples`` 0 marks a frame written for the recorder only.

Seqlock: the writer makes a slot's ``version`` odd, writes the slot's meta and image, makes it even again, then
publishes ``latest_seq``, with a release fence between each two of these steps. A reader loads ``latest_seq``,
the slot's ``version``, the slot's meta and image, and ``version`` again, with an acquire fence between each
two; it keeps the copy only when both versions are equal and even. The fences
(:mod:`emim_stream.pipeline.capture.ordering`) make this hold on weakly ordered CPUs (aarch64) as on x86-64: if
any load of the copy saw a store of a later write, the second version load sees that write's odd version (the
writer's fence puts the odd version before its data; the reader's puts its data before the second version
load); and the meta and image are never older than the first version load says.

Resource tracking: the creating process owns the segment and unlinks it (its resource tracker also unlinks it
if the owner dies). Attaching processes never register the segment with their resource tracker, so a reader
or writer that exits neither unlinks the owner's segment nor prints "leaked shared_memory" warnings
(Python 3.10-3.12 register every attach; 3.13 has ``track=False``).

Stale rings: when the owner and its resource tracker are killed together (SIGKILL to the process group), nothing
unlinks the segment. Its name carries the owner's pid, so :func:`stale_rings` finds segments whose owner is gone
and :func:`reclaim_stale_rings` (called at every pipeline start) removes them.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Sized
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from emim_stream.pipeline.capture.ordering import MemoryOrdering, fences
from emim_stream.pipeline.errors import PipelineError

__all__ = [
    "ReadResult",
    "ReadStatus",
    "RingFrame",
    "RingReader",
    "RingStatus",
    "SharedRing",
    "reclaim_stale_rings",
    "stale_rings",
]

_LOG = logging.getLogger(__name__)

NAME_PREFIX = "emim_"
SHM_DIR = "/dev/shm"
_OWNED_NAME = re.compile(rf"{NAME_PREFIX}(?P<pid>\d+)_[0-9a-f]+")
_MAGIC = int.from_bytes(b"EMIMRING", "little")
_LAYOUT_VERSION = 3
_ALIGN = 64

# Header: 32 int64 words (fps is stored as float64 in its word).
_HEADER_WORDS = 32
_H_MAGIC, _H_LAYOUT, _H_SLOTS, _H_HEIGHT, _H_WIDTH, _H_LATEST_SEQ, _H_HEARTBEAT = range(7)
_H_STATE, _H_FPS, _H_RECONNECTS, _H_FRAMES_LOST, _H_SOURCE_WIDTH, _H_SOURCE_HEIGHT = range(7, 13)
_H_LATEST_FRAME_SEQ, _H_LATEST_SAMPLE_SEQ = 13, 14

# Per-slot meta: 16 int64 words.
_META_WORDS = 16
_M_VERSION, _M_SEQ, _M_CAPTURE_MONO, _M_CAPTURE_WALL, _M_SOURCE_PTS, _M_RING_MONO = range(6)
_M_FRAME_SEQ, _M_SAMPLE_SEQ, _M_SAMPLES = 6, 7, 8

_TRACKER_LOCK = threading.Lock()


def _round_up(n: int, align: int = _ALIGN) -> int:
    return (n + align - 1) // align * align


def _layout(slots: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Byte offsets: (meta offset, images offset, image stride, total size)."""
    meta_offset = _HEADER_WORDS * 8
    images_offset = meta_offset + slots * _META_WORDS * 8
    image_stride = _round_up(height * width * 3)
    return meta_offset, images_offset, image_stride, images_offset + slots * image_stride


def _attach_untracked(segment: str) -> SharedMemory:
    """Open an existing segment without registering it with this process's resource tracker."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name=segment, track=False)
    # 3.10-3.12 register every attach, and the tracker would unlink the owner's segment when this process exits.
    with _TRACKER_LOCK:
        register = resource_tracker.register

        def _skip_shared_memory(name: Sized, rtype: str) -> None:  # register's signature
            if rtype != "shared_memory":
                register(name, rtype)

        resource_tracker.register = _skip_shared_memory
        try:
            return SharedMemory(name=segment)
        finally:
            resource_tracker.register = register


@dataclass(frozen=True, slots=True)
class RingStatus:
    """The writer's status as stored in the ring header.

    ``state`` is the integer code of the source state (the enum lives with the sources); ``heartbeat_mono_ns``
    is the CLOCK_MONOTONIC time of the writer's last ``write`` or ``set_status`` (0 = never).
    """

    state: int
    fps: float
    reconnects: int
    frames_lost: int
    source_width: int
    source_height: int
    heartbeat_mono_ns: int
    latest_seq: int
    latest_frame_seq: int
    """The camera's frame number of the newest frame written (-1: none yet)."""


@dataclass(frozen=True, slots=True)
class RingFrame:
    """One frame read out of the ring. ``image``: [H, W, 3] uint8 RGB, owned by the reader (a copy).

    ``ring_mono_ns`` is when the writer finished writing it (CLOCK_MONOTONIC). ``frame_seq``, ``sample_seq``,
    ``samples``: see the module docstring.
    """

    seq: int
    image: np.ndarray
    capture_mono_ns: int
    capture_wall_ns: int
    source_pts_ns: int
    ring_mono_ns: int = 0
    frame_seq: int = -1
    sample_seq: int = -1
    samples: int = 1


class ReadStatus(str, enum.Enum):
    """Outcome of :meth:`RingReader.read`."""

    OK = "ok"
    NOT_YET = "not_yet"
    """The writer has not written this seq yet."""
    OVERWRITTEN = "overwritten"
    """The slot already holds a newer seq: the frame is lost to this reader."""
    TORN = "torn"
    """The writer was in the slot during the copy (version odd or changed); the copy was discarded."""
    MISSING = "missing"
    """The writer moved past this seq without writing it (frames lost upstream)."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    """``frame`` is set only when ``status`` is OK; ``slot_seq`` is the seq the slot held (-1 = none)."""

    status: ReadStatus
    frame: RingFrame | None = None
    slot_seq: int = -1


class SharedRing:
    """A ring of ``slots`` frames of [height, width, 3] uint8 in one shared-memory segment.

    Build it with :meth:`create` (the owner, which unlinks) or :meth:`attach` (any other process). Exactly one
    process writes; readers use :class:`RingReader`. A context manager: on exit an attacher closes, the owner
    closes and unlinks.
    """

    def __init__(
        self, shm: SharedMemory, *, owner: bool, ordering: MemoryOrdering = MemoryOrdering.FENCED
    ) -> None:
        """Wrap an open segment; use :meth:`create` or :meth:`attach` instead."""
        self._acquire, self._release = fences(ordering)
        self._shm = shm
        self._owner = owner
        self._unlinked = False
        header = np.ndarray((_HEADER_WORDS,), dtype=np.int64, buffer=shm.buf)
        slots, height, width = (int(v) for v in header[[_H_SLOTS, _H_HEIGHT, _H_WIDTH]])
        meta_offset, images_offset, image_stride, _ = _layout(slots, height, width)
        self._slots, self._height, self._width = slots, height, width
        self._header = header
        self._header_f64 = header.view(np.float64)
        self._meta = np.ndarray((slots, _META_WORDS), dtype=np.int64, buffer=shm.buf, offset=meta_offset)
        self._images = np.ndarray(
            (slots, height, width, 3),
            dtype=np.uint8,
            buffer=shm.buf,
            offset=images_offset,
            strides=(image_stride, width * 3, 3, 1),
        )

    @classmethod
    def create(
        cls,
        slots: int,
        height: int,
        width: int,
        name: str | None = None,
        ordering: MemoryOrdering = MemoryOrdering.FENCED,
    ) -> SharedRing:
        """Create and own a new ring segment.

        Args:
            slots: number of frames kept (>= 2).
            height, width: frame size in pixels (frames are [height, width, 3] uint8).
            name: segment name; default ``emim_<pid>_<random hex>`` (the pid lets a later run reclaim it).
            ordering: PLAIN only to measure the fences' cost (x86-64); every process of a ring uses the same.

        Raises:
            PipelineError: a segment of that name exists, the size is invalid, or this CPU cannot order the ring's
                memory accesses (:func:`~emim_stream.pipeline.capture.ordering.fences`).
        """
        fences(ordering)  # fail before creating anything
        if slots < 2 or height < 1 or width < 1:
            raise PipelineError(
                f"invalid ring geometry slots={slots}, height={height}, width={width}; "
                "need slots >= 2 and a positive frame size"
            )
        if name is None:
            name = f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
        size = _layout(slots, height, width)[3]
        try:
            shm = SharedMemory(name=name, create=True, size=size)
        except FileExistsError as err:
            raise PipelineError(
                f"shared-memory segment {name!r} already exists; pick another name or remove /dev/shm/{name}"
            ) from err
        except OSError as err:
            raise PipelineError(f"cannot create shared-memory ring {name!r} ({size} bytes): {err}") from err
        header = np.ndarray((_HEADER_WORDS,), dtype=np.int64, buffer=shm.buf)
        header[_H_LAYOUT], header[_H_SLOTS], header[_H_HEIGHT], header[_H_WIDTH] = (
            _LAYOUT_VERSION, slots, height, width
        )
        header[[_H_LATEST_SEQ, _H_LATEST_FRAME_SEQ, _H_LATEST_SAMPLE_SEQ]] = -1
        del header
        ring = cls(shm, owner=True, ordering=ordering)
        ring._meta[:, _M_SEQ] = -1
        ring._release()
        ring._header[_H_MAGIC] = _MAGIC  # last: an attacher that sees the magic sees a complete ring
        _LOG.debug("created ring %s: %d slots of %dx%d (%d bytes)", name, slots, height, width, size)
        return ring

    @classmethod
    def attach(cls, name: str, ordering: MemoryOrdering = MemoryOrdering.FENCED) -> SharedRing:
        """Attach to an existing ring by segment name; geometry comes from its header.

        Args:
            name: the segment's name (:attr:`name` of the owner's ring).
            ordering: as the owner's (:meth:`create`).

        Raises:
            PipelineError: no such segment, it is not an emim-stream ring of this layout version, or this CPU
                cannot order the ring's memory accesses.
        """
        fences(ordering)
        try:
            shm = _attach_untracked(name)
        except FileNotFoundError as err:
            raise PipelineError(
                f"no shared-memory ring named {name!r}; is the pipeline that owns it running?"
            ) from err
        except (OSError, ValueError) as err:
            raise PipelineError(f"cannot attach shared-memory ring {name!r}: {err}") from err
        try:
            cls._check_header(shm)
            return cls(shm, owner=False, ordering=ordering)
        except BaseException:
            shm.close()
            raise

    @staticmethod
    def _check_header(shm: SharedMemory) -> None:
        if shm.size < _HEADER_WORDS * 8:
            raise PipelineError(f"shared-memory segment {shm.name!r} is not an emim-stream ring (too small)")
        header = np.ndarray((_HEADER_WORDS,), dtype=np.int64, buffer=shm.buf).copy()
        if header[_H_MAGIC] != _MAGIC:
            raise PipelineError(f"shared-memory segment {shm.name!r} is not an emim-stream ring (bad magic)")
        if header[_H_LAYOUT] != _LAYOUT_VERSION:
            raise PipelineError(
                f"ring {shm.name!r} has layout version {header[_H_LAYOUT]}, this code reads "
                f"{_LAYOUT_VERSION}; run the same emim-stream version in all processes"
            )
        slots, height, width = (int(v) for v in header[[_H_SLOTS, _H_HEIGHT, _H_WIDTH]])
        needed = _layout(slots, height, width)[3]
        if slots < 2 or height < 1 or width < 1 or shm.size < needed:
            raise PipelineError(
                f"ring {shm.name!r} header says {slots} slots of {height}x{width} ({needed} bytes) "
                f"but the segment has {shm.size} bytes"
            )

    @property
    def name(self) -> str:
        """Segment name (pass it to :meth:`attach` in another process)."""
        return self._shm.name

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def height(self) -> int:
        return self._height

    @property
    def width(self) -> int:
        return self._width

    @property
    def owner(self) -> bool:
        """True for the process that created (and unlinks) the segment."""
        return self._owner

    @property
    def latest_seq(self) -> int:
        """Seq of the newest completely written frame; -1 before the first write."""
        return int(self._header[_H_LATEST_SEQ])

    @property
    def latest_frame_seq(self) -> int:
        """The camera's frame number of the newest frame written; -1 before the first write."""
        return int(self._header[_H_LATEST_FRAME_SEQ])

    @property
    def latest_sample_seq(self) -> int:
        """The number of the newest sample written; -1 before the first."""
        return int(self._header[_H_LATEST_SAMPLE_SEQ])

    def write(
        self,
        image: np.ndarray,
        seq: int,
        capture_mono_ns: int,
        capture_wall_ns: int,
        source_pts_ns: int = -1,
        frame_seq: int | None = None,
        sample_seq: int | None = None,
        samples: int = 1,
    ) -> None:
        """Write one frame into slot ``seq % slots`` (writer process only; never waits for readers).

        Args:
            image: [height, width, 3] uint8 RGB.
            seq: write sequence number, > every seq written before (gaps: frames lost to the readers).
            capture_mono_ns: capture time, ``time.monotonic_ns()``.
            capture_wall_ns: capture time, ``time.time_ns()``.
            source_pts_ns: the source's presentation timestamp in ns, -1 when unknown.
            frame_seq: the camera's frame number (default ``seq``).
            sample_seq: the number of the frame's first sample (default ``seq``).
            samples: how many of the model's samples the frame is (0: written for the recorder only).

        Raises:
            ValueError: wrong image shape/dtype or a seq that does not increase (caller bugs).
        """
        if image.shape != (self._height, self._width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"ring {self.name!r} takes [{self._height}, {self._width}, 3] uint8 frames, "
                f"got {list(image.shape)} {image.dtype}"
            )
        header = self._header
        if seq <= header[_H_LATEST_SEQ]:
            raise ValueError(f"seq must increase: got {seq} after {int(header[_H_LATEST_SEQ])}")
        slot = seq % self._slots
        meta = self._meta
        version = int(meta[slot, _M_VERSION]) | 1  # odd: write in progress
        meta[slot, _M_VERSION] = version
        self._release()  # the odd version before any of the slot's new contents
        frame_seq = seq if frame_seq is None else frame_seq
        sample_seq = seq if sample_seq is None else sample_seq
        meta[slot, _M_SEQ : _M_SOURCE_PTS + 1] = (seq, capture_mono_ns, capture_wall_ns, source_pts_ns)
        meta[slot, _M_FRAME_SEQ : _M_SAMPLES + 1] = (frame_seq, sample_seq, samples)
        self._copy_in(slot, image)
        now = time.monotonic_ns()
        meta[slot, _M_RING_MONO] = now
        self._release()  # the slot's contents before the even version
        meta[slot, _M_VERSION] = version + 1  # even: slot consistent
        self._release()  # the even version before latest_seq
        header[_H_LATEST_SEQ] = seq
        header[_H_LATEST_FRAME_SEQ] = frame_seq
        if samples:
            header[_H_LATEST_SAMPLE_SEQ] = sample_seq + samples - 1
        header[_H_HEARTBEAT] = now

    def _copy_in(self, slot: int, image: np.ndarray) -> None:
        """Copy the pixels of a frame into ``slot`` (the step the seqlock protects)."""
        np.copyto(self._images[slot], image)

    def set_status(
        self,
        state: int,
        fps: float,
        reconnects: int,
        frames_lost: int,
        source_width: int,
        source_height: int,
    ) -> None:
        """Store the writer's status for the supervisor and ``status/`` messages; also beats the heartbeat.

        Args:
            state: integer code of the source state.
            fps: measured frames per second of the source.
            reconnects: reconnections since start.
            frames_lost: frames lost upstream (decode failures, skipped seq) since start.
            source_width, source_height: native size of the source in pixels (before preprocessing).
        """
        header = self._header
        header[[_H_STATE, _H_RECONNECTS, _H_FRAMES_LOST, _H_SOURCE_WIDTH, _H_SOURCE_HEIGHT]] = (
            state, reconnects, frames_lost, source_width, source_height
        )
        self._header_f64[_H_FPS] = fps
        header[_H_HEARTBEAT] = time.monotonic_ns()

    def status(self) -> RingStatus:
        """The writer's status (fields are read one by one; a concurrent ``set_status`` may mix old and new)."""
        header = self._header
        return RingStatus(
            state=int(header[_H_STATE]),
            fps=float(self._header_f64[_H_FPS]),
            reconnects=int(header[_H_RECONNECTS]),
            frames_lost=int(header[_H_FRAMES_LOST]),
            source_width=int(header[_H_SOURCE_WIDTH]),
            source_height=int(header[_H_SOURCE_HEIGHT]),
            heartbeat_mono_ns=int(header[_H_HEARTBEAT]),
            latest_seq=int(header[_H_LATEST_SEQ]),
            latest_frame_seq=int(header[_H_LATEST_FRAME_SEQ]),
        )

    def close(self) -> None:
        """Detach this process from the segment (idempotent); the segment stays until the owner unlinks."""
        if self._images is None:
            return
        # Views must go before the buffer they export can be released.
        self._header = self._header_f64 = self._meta = self._images = None
        self._shm.close()

    def unlink(self) -> None:
        """Remove the segment from the system (owner only; idempotent). Attached processes keep their mapping.

        Raises:
            PipelineError: called on an attached (non-owner) ring.
        """
        if not self._owner:
            raise PipelineError(f"ring {self.name!r} is attached, not owned; only its creator unlinks it")
        if self._unlinked:
            return
        self._unlinked = True
        try:
            self._shm.unlink()
        except FileNotFoundError:  # removed behind our back; still drop the resource tracker's entry
            resource_tracker.unregister(f"/{self.name}", "shared_memory")  # POSIX names, as registered
            _LOG.warning("ring %s was already removed from /dev/shm", self.name)
            return
        _LOG.debug("unlinked ring %s", self.name)

    def __enter__(self) -> SharedRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self._owner:
            self.unlink()

    def __repr__(self) -> str:
        role = "owner" if self._owner else "attached"
        return f"SharedRing({self.name!r}, slots={self._slots}, {self._height}x{self._width}, {role})"


class RingReader:
    """Reads frames out of a :class:`SharedRing` without ever blocking its writer.

    ``read(seq)`` reads one given seq and counts nothing; ``read_next()`` follows the stream and keeps the
    counters (attributes): ``dropped`` = seqs it passed over without delivering them (overwritten before being
    read, torn, or never written: gaps from the writer); ``torn`` = copies it discarded because the writer
    entered the slot (each torn frame is also counted in ``dropped``).

    Args:
        ring: an open ring (owned or attached).
        start_seq: first seq ``read_next`` delivers; default ``ring.latest_seq + 1`` (only frames written
            from now on; 0 for a ring not yet written).
    """

    def __init__(self, ring: SharedRing, start_seq: int | None = None) -> None:
        self._ring = ring
        self.next_seq = ring.latest_seq + 1 if start_seq is None else start_seq
        self.dropped = 0
        self.torn = 0

    def read(self, seq: int, out: np.ndarray | None = None) -> ReadResult:
        """Copy out frame ``seq`` if the ring still holds it.

        Args:
            seq: frame sequence number (>= 0).
            out: optional [H, W, 3] uint8 array the image is copied into (it becomes ``frame.image``);
                on any status other than OK its contents are undefined.
        """
        ring = self._ring
        if seq > ring.latest_seq:
            return ReadResult(ReadStatus.NOT_YET)
        acquire = ring._acquire
        acquire()  # the slot no older than latest_seq
        slot = seq % ring.slots
        meta = ring._meta
        version = int(meta[slot, _M_VERSION])
        acquire()  # the slot's contents no older than this version
        slot_seq, capture_mono_ns, capture_wall_ns, source_pts_ns, ring_mono_ns, frame_seq, sample_seq, samples = (
            int(v) for v in meta[slot, _M_SEQ : _M_SAMPLES + 1]
        )
        if version & 1:
            return ReadResult(ReadStatus.TORN, slot_seq=slot_seq)
        if slot_seq != seq:
            status = ReadStatus.OVERWRITTEN if slot_seq > seq else ReadStatus.MISSING
            return ReadResult(status, slot_seq=slot_seq)
        if out is None:
            out = np.empty((ring.height, ring.width, 3), dtype=np.uint8)
        self._copy_out(slot, out)
        acquire()  # the copy before the second version load
        if int(meta[slot, _M_VERSION]) != version:
            return ReadResult(ReadStatus.TORN, slot_seq=slot_seq)
        frame = RingFrame(
            seq, out, capture_mono_ns, capture_wall_ns, source_pts_ns, ring_mono_ns, frame_seq, sample_seq, samples
        )
        return ReadResult(ReadStatus.OK, frame, seq)

    def _copy_out(self, slot: int, out: np.ndarray) -> None:
        """Copy the pixels of ``slot`` into ``out`` (the step the seqlock checks)."""
        np.copyto(out, self._ring._images[slot])

    def read_next(self, out: np.ndarray | None = None) -> RingFrame | None:
        """The next frame of the stream, or None when the reader has caught up with the writer.

        Skips forward to the oldest frame still held when the reader fell behind, and past seqs the writer
        never wrote, counting every skipped seq in ``dropped``. Never returns a torn frame.

        Args:
            out: optional [H, W, 3] uint8 array to copy into (reused by the caller to avoid allocation).
        """
        while True:
            seq = self.next_seq
            result = self.read(seq, out)
            if result.status is ReadStatus.OK:
                self.next_seq = seq + 1
                return result.frame
            if result.status is ReadStatus.NOT_YET:
                return None
            if result.status is ReadStatus.TORN:
                self.torn += 1
            self._skip_to(self._oldest_held_after(seq))

    def _oldest_held_after(self, seq: int) -> int:
        """The oldest seq the ring holds that is newer than ``seq`` (``seq + 1`` when none is)."""
        held = self._ring._meta[:, _M_SEQ]
        newer = held[held > seq]
        return int(newer.min()) if newer.size else seq + 1

    def _skip_to(self, seq: int) -> None:
        self.dropped += seq - self.next_seq
        self.next_seq = seq


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_rings(shm_dir: str = SHM_DIR) -> list[str]:
    """Names of ring segments whose owner process is gone (named ``emim_<pid>_...`` with no such pid).

    Segments of live owners and names without a pid are left alone. A pid reused by an unrelated process hides a
    stale segment (it is kept, never wrongly removed).
    """
    try:
        names = sorted(os.listdir(shm_dir))
    except FileNotFoundError:  # no /dev/shm (not Linux)
        return []
    return [n for n in names if (m := _OWNED_NAME.fullmatch(n)) and not _pid_alive(int(m["pid"]))]


def reclaim_stale_rings(shm_dir: str = SHM_DIR) -> list[str]:
    """Remove the segments :func:`stale_rings` finds; logs one line when there were any. Returns their names."""
    removed = []
    for name in stale_rings(shm_dir):
        try:
            os.unlink(os.path.join(shm_dir, name))
        except FileNotFoundError:  # another process reclaimed it first
            continue
        except OSError as err:
            _LOG.warning("cannot remove stale ring /dev/shm/%s: %s", name, err.strerror)
            continue
        removed.append(name)
    if removed:
        _LOG.warning(
            "reclaimed %d shared-memory ring(s) left by killed runs: %s", len(removed), ", ".join(removed)
        )
    return removed
