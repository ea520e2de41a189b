"""The ring's memory ordering: the seqlock's fences come from libatomic and sit between the right steps, and a
free-running writer process never gets a wrong frame to a reader process (checked by checksum, frame by frame).

Also run on aarch64 under emulation (tools/test-arm64), where the fences are libatomic's aarch64 ones.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import zlib
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest

from emim_stream.pipeline.capture import ordering
from emim_stream.pipeline.capture.ordering import MemoryOrdering, fences, strongly_ordered
from emim_stream.pipeline.capture.ring import ReadStatus, RingReader, SharedRing
from emim_stream.pipeline.errors import PipelineError

SPAWN = mp.get_context("spawn")
H, W = 48, 64
IMAGES = 61  # distinct random payloads, a prime so that no ring size lines up with them


def _payloads(height: int, width: int) -> np.ndarray:
    """[IMAGES, H, W, 3] uint8 random images, the same in every process."""
    return np.random.default_rng(25).integers(0, 256, size=(IMAGES, height, width, 3), dtype=np.uint8)


def _write_stream(name: str, frames: int) -> None:
    """Writer process: frames as fast as it can, payload ``seq % IMAGES``, meta numbers derived from seq. A
    checksum per frame stands in for decoding, so the writer runs at about the readers' pace."""
    ring = SharedRing.attach(name)
    try:
        images = _payloads(ring.height, ring.width)
        for seq in range(frames):
            zlib.crc32(images[seq % IMAGES])
            ring.write(images[seq % IMAGES], seq, 3 * seq, 5 * seq, 7 * seq, frame_seq=2 * seq, sample_seq=seq)
    finally:
        ring.close()


def _read_stream(name: str, frames: int, results: mp.Queue) -> None:
    """Reader process: follow the stream and check each delivered frame; sends (delivered, bad, dropped, torn)."""
    ring = SharedRing.attach(name)
    try:
        checksums = [zlib.crc32(image) for image in _payloads(ring.height, ring.width)]
        reader = RingReader(ring, start_seq=0)
        out = np.empty((ring.height, ring.width, 3), dtype=np.uint8)
        delivered = bad = 0
        deadline = time.monotonic() + 60
        while reader.next_seq < frames and time.monotonic() < deadline:
            frame = reader.read_next(out)
            if frame is None:
                continue
            delivered += 1
            seq = frame.seq
            meta = (frame.capture_mono_ns, frame.capture_wall_ns, frame.source_pts_ns, frame.frame_seq)
            bad += zlib.crc32(out) != checksums[seq % IMAGES] or meta != (3 * seq, 5 * seq, 7 * seq, 2 * seq)
        results.put((delivered, bad, reader.dropped, reader.torn, reader.next_seq))
    finally:
        ring.close()


def test_fences_are_libatomics_where_it_is_installed():
    fence = ordering._libatomic_fence()
    if fence is None:
        pytest.skip("libatomic.so.1 is not installed here")
    acquire, release = fences()
    assert isinstance(acquire, partial) and isinstance(release, partial)
    assert (acquire.func, acquire.args) == (fence, (2,)) and (release.func, release.args) == (fence, (3,))
    acquire(), release()  # callable on this CPU
    with SharedRing.create(2, H, W) as ring:
        assert isinstance(ring._acquire, partial) and isinstance(ring._release, partial)
        assert (ring._acquire.func, ring._acquire.args) == (fence, (2,))
        assert (ring._release.func, ring._release.args) == (fence, (3,))


def test_weakly_ordered_cpu_needs_libatomic_and_refuses_plain(monkeypatch):
    monkeypatch.setattr(ordering.platform, "machine", lambda: "aarch64")
    assert not strongly_ordered()
    with pytest.raises(PipelineError, match="only correct on x86-64, not on aarch64"):
        fences(MemoryOrdering.PLAIN)
    with pytest.raises(PipelineError, match="only correct on x86-64"):
        SharedRing.create(2, H, W, ordering=MemoryOrdering.PLAIN)
    monkeypatch.setattr(ordering, "_libatomic_fence", lambda: None)
    with pytest.raises(PipelineError, match=r"libatomic\.so\.1.*apt-get install libatomic1"):
        SharedRing.create(2, H, W)
    monkeypatch.setattr(ordering.platform, "machine", lambda: "x86_64")
    acquire, release = fences()  # TSO: no instruction needed, so no library either
    assert acquire is release is ordering._nothing


class _TracingRing(SharedRing):
    """Records the seqlock's steps: each fence with the slot's version and latest_seq at that moment, and the
    pixel copies (in and out)."""

    trace: list[tuple[str, int, int]]
    slot = 0

    def trace_fences(self) -> None:
        self.trace = []
        acquire, release = self._acquire, self._release

        def traced(name: str, fence: Callable[[], None]) -> Callable[[], None]:
            def call() -> None:
                self.trace.append((name, int(self._meta[self.slot, 0]), self.latest_seq))
                fence()

            return call

        self._acquire, self._release = traced("acquire", acquire), traced("release", release)

    def _copy_in(self, slot: int, image: np.ndarray) -> None:
        self.trace.append(("copy in", int(self._meta[slot, 0]), self.latest_seq))
        super()._copy_in(slot, image)


class _TracingReader(RingReader):
    def _copy_out(self, slot: int, out: np.ndarray) -> None:
        ring = self._ring
        assert isinstance(ring, _TracingRing)
        ring.trace.append(("copy out", int(ring._meta[slot, 0]), ring.latest_seq))
        super()._copy_out(slot, out)


def test_writer_and_reader_fence_between_the_seqlock_steps():
    with _TracingRing.create(2, H, W) as ring:
        image = _payloads(H, W)[0]
        ring.trace_fences()
        ring.write(image, 0, 1, 1)  # slot 0 at version 2
        ring.trace.clear()
        ring.write(image, 2, 1, 1)  # slot 0 again: version 3 while writing, 4 after
        assert ring.trace == [
            ("release", 3, 0),  # odd version, then the slot's contents
            ("copy in", 3, 0),
            ("release", 3, 0),  # the contents, then the even version
            ("release", 4, 0),  # the even version, then latest_seq
        ]
        assert ring.latest_seq == 2
        ring.trace.clear()
        result = _TracingReader(ring).read(2)
        assert result.status is ReadStatus.OK
        assert ring.trace == [
            ("acquire", 4, 2),  # latest_seq, then the version
            ("acquire", 4, 2),  # the version, then the slot's contents
            ("copy out", 4, 2),
            ("acquire", 4, 2),  # the contents, then the version again
        ]


@pytest.mark.parametrize("slots", [2, 3])
def test_free_running_writer_and_readers_never_deliver_a_wrong_frame(slots):
    """One writer and two reader processes on a small ring of frames large enough that copies overlap the
    writer's: every delivered frame's pixels (crc32) and meta match its seq, and every seq is delivered or
    counted as dropped."""
    frames = 2000
    results: mp.Queue = SPAWN.Queue()
    with SharedRing.create(slots, 270, 480) as ring:
        procs = [SPAWN.Process(target=_read_stream, args=(ring.name, frames, results), daemon=True) for _ in "ab"]
        procs.append(SPAWN.Process(target=_write_stream, args=(ring.name, frames), daemon=True))
        for proc in procs:
            proc.start()
        try:
            outcomes = [results.get(timeout=120) for _ in range(2)]
        finally:
            for proc in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
    for delivered, bad, dropped, torn, next_seq in outcomes:
        assert bad == 0, f"{bad} of {delivered} delivered frames had wrong pixels or meta"
        assert next_seq == frames and delivered + dropped == frames and delivered > 0
        assert torn <= dropped
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
