"""SharedRing / RingReader with real shared memory and real (spawned) processes."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pytest

from emim_stream.pipeline.capture.ring import ReadStatus, RingFrame, RingReader, SharedRing
from emim_stream.pipeline.errors import PipelineError

SPAWN = mp.get_context("spawn")
SHM_DIR = Path("/dev/shm")
H, W = 24, 32


def _image(seq: int, height: int = H, width: int = W) -> np.ndarray:
    return np.full((height, width, 3), seq % 251, dtype=np.uint8)


def _write_frames(name: str, seqs: list[int]) -> None:
    """Writer process: attach by name, write each seq with its payload and timestamps, detach."""
    ring = SharedRing.attach(name)
    try:
        for seq in seqs:
            ring.write(_image(seq, ring.height, ring.width), seq, time.monotonic_ns(), time.time_ns(), seq * 1000)
    finally:
        ring.close()


@contextmanager
def _process(target: Callable[..., None], *args: object) -> Iterator[mp.Process]:
    proc = SPAWN.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        yield proc
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join()


@pytest.fixture
def make_ring() -> Iterator[Callable[..., SharedRing]]:
    """Create owned rings; at teardown close and unlink them and check /dev/shm has none left."""
    rings: list[SharedRing] = []

    def make(slots: int, height: int = H, width: int = W, cls: type[SharedRing] = SharedRing) -> SharedRing:
        ring = cls.create(slots, height, width)
        rings.append(ring)
        return ring

    yield make
    for ring in rings:
        name = ring.name
        ring.close()
        ring.unlink()
        assert not (SHM_DIR / name).exists()


def _collect(reader: RingReader, until_seq: int, writer: mp.Process, timeout_s: float = 10.0) -> list[RingFrame]:
    """read_next until ``until_seq`` was passed (delivered or dropped); each frame is kept as a copy."""
    frames = []
    deadline = time.monotonic() + timeout_s
    while reader.next_seq <= until_seq:
        frame = reader.read_next()
        if frame is not None:
            frames.append(frame)
            continue
        assert time.monotonic() < deadline, f"stuck at seq {reader.next_seq}"
        assert writer.is_alive() or writer.exitcode == 0, f"writer exited with {writer.exitcode}"
    return frames


def test_frames_arrive_in_order_from_writer_process(make_ring):
    ring = make_ring(slots=256)
    reader = RingReader(ring)
    assert reader.next_seq == 0 and ring.latest_seq == -1
    t0_mono, t0_wall = time.monotonic_ns(), time.time_ns()
    with _process(_write_frames, ring.name, list(range(200))) as writer:
        frames = _collect(reader, 199, writer)
    assert [f.seq for f in frames] == list(range(200))
    for f in frames:
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
        assert np.all(f.image == f.seq % 251)
        assert f.source_pts_ns == f.seq * 1000
        assert t0_mono < f.capture_mono_ns < time.monotonic_ns()
        assert t0_wall - 10**9 < f.capture_wall_ns < time.time_ns() + 10**9
    assert all(a.capture_mono_ns <= b.capture_mono_ns for a, b in itertools.pairwise(frames))
    assert reader.dropped == 0 and reader.torn == 0
    assert ring.latest_seq == 199


def test_concurrent_writer_never_yields_torn_or_mixed_frames(make_ring):
    """A 2-slot ring under a free-running writer: every delivered frame is whole and accounted for."""
    ring = make_ring(slots=2, height=64, width=64)
    reader = RingReader(ring, start_seq=0)
    out = np.empty((64, 64, 3), dtype=np.uint8)
    delivered = []
    with _process(_write_frames, ring.name, list(range(3000))) as writer:
        deadline = time.monotonic() + 10
        while reader.next_seq < 3000:
            frame = reader.read_next(out)
            if frame is None:
                assert time.monotonic() < deadline and (writer.is_alive() or writer.exitcode == 0)
                continue
            assert frame.image is out
            assert np.all(out == frame.seq % 251), f"mixed payload in frame {frame.seq}"
            delivered.append(frame.seq)
    assert delivered == sorted(set(delivered))
    assert delivered[-1] == 2999
    assert len(delivered) + reader.dropped == 3000


def test_slow_reader_sees_overwritten_and_counts_drops(make_ring):
    ring = make_ring(slots=4)
    with _process(_write_frames, ring.name, list(range(50))) as writer:
        pass
    assert writer.exitcode == 0
    reader = RingReader(ring, start_seq=0)
    result = reader.read(0)
    assert result.status is ReadStatus.OVERWRITTEN and result.frame is None and result.slot_seq == 48
    assert reader.read(49).status is ReadStatus.OK
    assert reader.read(50).status is ReadStatus.NOT_YET
    seqs = []
    while (frame := reader.read_next()) is not None:
        seqs.append(frame.seq)
        assert np.all(frame.image == frame.seq % 251)
    assert seqs == [46, 47, 48, 49]
    assert reader.dropped == 46 and reader.torn == 0


def test_writer_gaps_are_missing_and_counted(make_ring):
    ring = make_ring(slots=8)
    for seq in (0, 1, 2, 5, 6):
        ring.write(_image(seq), seq, time.monotonic_ns(), time.time_ns())
    reader = RingReader(ring, start_seq=0)
    assert reader.read(3).status is ReadStatus.MISSING
    seqs = []
    while (frame := reader.read_next()) is not None:
        seqs.append(frame.seq)
    assert seqs == [0, 1, 2, 5, 6]
    assert reader.dropped == 2 and reader.next_seq == 7


class _OverwritingReader(RingReader):
    """Lets the writer overwrite the slot between the reader's two version checks (once)."""

    def __init__(self, ring: SharedRing, **kwargs: object) -> None:
        super().__init__(ring, **kwargs)
        self.interfere = True

    def _copy_out(self, slot: int, out: np.ndarray) -> None:
        if self.interfere:
            self.interfere = False
            seq = self._ring.latest_seq + 1
            self._ring.write(_image(seq), seq, time.monotonic_ns(), time.time_ns())
        super()._copy_out(slot, out)


def test_torn_read_when_slot_changes_during_copy(make_ring):
    ring = make_ring(slots=4)
    for seq in range(4):
        ring.write(_image(seq), seq, time.monotonic_ns(), time.time_ns())
    reader = _OverwritingReader(ring, start_seq=0)
    assert reader.read(0).status is ReadStatus.TORN  # seq 4 landed in slot 0 during the copy
    reader = _OverwritingReader(ring, start_seq=1)
    seqs = []
    while (frame := reader.read_next()) is not None:
        assert np.all(frame.image == frame.seq % 251)
        seqs.append(frame.seq)
    assert seqs == [2, 3, 4, 5]  # seq 1 was torn (seq 5 overwrote it mid-copy) and never returned
    assert reader.torn == 1 and reader.dropped == 1


class _PausingRing(SharedRing):
    """Calls ``during_write(seq)`` while a slot's version is odd (a writer caught mid-copy)."""

    during_write: Callable[[], None] | None = None

    def _copy_in(self, slot: int, image: np.ndarray) -> None:
        if self.during_write is not None:
            self.during_write()
        super()._copy_in(slot, image)


def test_torn_read_when_version_is_odd(make_ring):
    ring = make_ring(slots=4, cls=_PausingRing)
    for seq in range(4):
        ring.write(_image(seq), seq, time.monotonic_ns(), time.time_ns())
    reader = RingReader(ring, start_seq=0)
    seen = {}

    def read_during_write() -> None:
        seen["old"] = reader.read(0).status  # slot 0 is being rewritten with seq 4
        seen["new"] = reader.read(4).status
        seen["next"] = reader.read_next().seq  # skips the torn seq 0

    ring.during_write = read_during_write
    ring.write(_image(4), 4, time.monotonic_ns(), time.time_ns())
    assert seen == {"old": ReadStatus.TORN, "new": ReadStatus.NOT_YET, "next": 1}
    assert reader.torn == 1 and reader.dropped == 1 and reader.next_seq == 2  # read() counts nothing
    ring.during_write = None
    assert reader.read(4).status is ReadStatus.OK


def test_attach_from_fresh_interpreter_leaves_segment_and_no_warning(make_ring):
    """A process with its own resource tracker attaches, writes and exits: the owner's segment survives."""
    ring = make_ring(slots=4)
    script = textwrap.dedent(
        f"""
        import time, numpy as np
        from emim_stream.pipeline.capture.ring import SharedRing
        ring = SharedRing.attach({ring.name!r})
        assert (ring.slots, ring.height, ring.width) == (4, {H}, {W})
        ring.write(np.full(({H}, {W}, 3), 7, np.uint8), 0, time.monotonic_ns(), time.time_ns(), 123)
        ring.set_status(2, 29.5, 1, 3, 1920, 1080)
        ring.close()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[3], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert "leaked" not in proc.stderr and "resource_tracker" not in proc.stderr, proc.stderr
    assert (SHM_DIR / ring.name).exists()
    result = RingReader(ring, start_seq=0).read(0)
    assert result.status is ReadStatus.OK
    assert np.all(result.frame.image == 7) and result.frame.source_pts_ns == 123
    status = ring.status()
    assert (status.state, status.fps, status.reconnects, status.frames_lost) == (2, 29.5, 1, 3)
    assert (status.source_width, status.source_height, status.latest_seq) == (1920, 1080, 0)


def test_status_and_heartbeat(make_ring):
    ring = make_ring(slots=2)
    status = ring.status()
    assert status.latest_seq == -1 and status.heartbeat_mono_ns == 0
    with SharedRing.attach(ring.name) as other:
        assert not other.owner and (other.slots, other.height, other.width) == (2, H, W)
        before = time.monotonic_ns()
        other.set_status(state=1, fps=12.5, reconnects=0, frames_lost=0, source_width=640, source_height=480)
        beat = ring.status().heartbeat_mono_ns
        assert before <= beat <= time.monotonic_ns()
        other.write(_image(0), 0, time.monotonic_ns(), time.time_ns())
        assert ring.status().heartbeat_mono_ns >= beat
        assert ring.latest_seq == 0 and ring.status().fps == 12.5
        with pytest.raises(PipelineError, match="only its creator unlinks"):
            other.unlink()
    assert (SHM_DIR / ring.name).exists()


def test_write_rejects_bad_frames_and_non_increasing_seq(make_ring):
    ring = make_ring(slots=2)
    ring.write(_image(3), 3, 0, 0)
    with pytest.raises(ValueError, match="seq must increase"):
        ring.write(_image(3), 3, 0, 0)
    with pytest.raises(ValueError, match="uint8"):
        ring.write(np.zeros((H, W, 3), np.float32), 4, 0, 0)
    with pytest.raises(ValueError, match=r"\[24, 32, 3\]"):
        ring.write(np.zeros((W, H, 3), np.uint8), 4, 0, 0)


def test_unlink_removes_segment():
    with SharedRing.create(2, H, W) as ring:
        name = ring.name
        assert name.startswith("emim_") and (SHM_DIR / name).exists()
    assert not (SHM_DIR / name).exists()
    with pytest.raises(PipelineError, match=name):
        SharedRing.attach(name)


def test_attach_unknown_or_foreign_segment_is_a_clear_error():
    with pytest.raises(PipelineError, match="no shared-memory ring named 'emim_does_not_exist'"):
        SharedRing.attach("emim_does_not_exist")
    foreign = SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(PipelineError, match="not an emim-stream ring"):
            SharedRing.attach(foreign.name)
    finally:
        foreign.close()
        foreign.unlink()
    with pytest.raises(PipelineError, match="slots >= 2"):
        SharedRing.create(1, H, W)


def test_frames_carry_their_frame_and_sample_numbers(make_ring):
    """A sampled ring: written frames keep the camera's frame number, their first sample and how many samples
    they are (0: written for the recorder only, which leaves the newest sample where it was)."""
    ring = make_ring(slots=4)
    assert (ring.latest_frame_seq, ring.latest_sample_seq, ring.status().latest_frame_seq) == (-1, -1, -1)
    ring.write(_image(0), 0, 1, 2, frame_seq=40, sample_seq=10, samples=2)
    ring.write(_image(1), 1, 3, 4, frame_seq=41, sample_seq=12, samples=0)
    reader = RingReader(ring, start_seq=0)
    first, second = reader.read_next(), reader.read_next()
    assert (first.seq, first.frame_seq, first.sample_seq, first.samples) == (0, 40, 10, 2)
    assert (second.seq, second.frame_seq, second.sample_seq, second.samples) == (1, 41, 12, 0)
    assert (ring.latest_seq, ring.latest_frame_seq, ring.latest_sample_seq) == (1, 41, 11)
    assert ring.status().latest_frame_seq == 41
    ring.write(_image(2), 2, 5, 6)  # unsampled rings: every frame is one sample, numbered as it is written
    third = reader.read_next()
    assert (third.frame_seq, third.sample_seq, third.samples, ring.latest_sample_seq) == (2, 2, 1, 2)
