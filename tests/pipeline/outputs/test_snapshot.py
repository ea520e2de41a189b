"""Event snapshots: the JPEG is the peak frame scaled up (checked against numpy's nearest-neighbour repeat) under a
band with the label; one JPEG per peak frame of an event; frames no longer wanted are forgotten; the recorder keeps
the snapshot beside the event clip."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from emim_stream.pipeline.comms.messages import EventMessage
from emim_stream.pipeline.config import RecordConfig
from emim_stream.pipeline.outputs.record import Recorder
from emim_stream.pipeline.outputs.snapshot import Snapshots
from tests.pipeline.outputs.test_record import cameras

H, W, HEIGHT = 48, 64, 96  # frames the model sees, scaled 2x


def frame(seed: int) -> np.ndarray:
    """A blocky grey RGB frame (4x4 blocks without colour survive JPEG's chroma subsampling) that differs per seed."""
    blocks = np.random.default_rng(seed).integers(0, 256, (H // 4, W // 4, 1), dtype=np.uint8)
    return blocks.repeat(4, axis=0).repeat(4, axis=1).repeat(3, axis=2)


def event(phase: str, peak_seq: int, event_id: str = "a" * 32) -> EventMessage:
    return EventMessage("cam1", event_id, phase, "left", 10, 40, 0, 1_700_000_000_000_000_000, 1, 1, 0.93, 0.8,
                        peak_seq, 5, "exit" if phase == "end" else None)  # fmt: skip


class Delivered:
    """The ``deliver`` callback: (event, JPEG) pairs, waitable."""

    def __init__(self) -> None:
        self.items: list[tuple[EventMessage, bytes]] = []
        self.cond = threading.Condition()

    def __call__(self, ev: EventMessage, jpeg: bytes) -> None:
        with self.cond:
            self.items.append((ev, jpeg))
            self.cond.notify_all()

    def wait(self, n: int) -> list[tuple[EventMessage, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, 10), self.items
            return list(self.items)


def test_snapshot_is_the_peak_frame_scaled_up_under_a_band_with_the_label():
    delivered = Delivered()
    snapshots = Snapshots(["cam1"], delivered, height=HEIGHT, quality=95)
    try:
        for seq in (20, 24, 28):  # window frames; 24 is the event's peak
            snapshots.keep("cam1", seq, frame(seq), wanted={24} if seq >= 24 else {20})
        assert snapshots.take(event("start", 24))
        [(ev, jpeg)] = delivered.wait(1)
    finally:
        snapshots.close()
    picture = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    band = picture.shape[0] - HEIGHT
    assert picture.shape == (HEIGHT + band, 2 * W, 3) and band == max(24, HEIGHT // 6)
    reference = frame(24).repeat(2, axis=0).repeat(2, axis=1).astype(np.float64)  # nearest neighbour, 2x
    error = np.abs(picture[band:].astype(np.float64) - reference)
    assert error.mean() < 3.0, error.mean()  # JPEG at quality 95 on 8x8 flat blocks
    assert np.abs(picture[band:].astype(np.float64) - frame(20).repeat(2, 0).repeat(2, 1)).mean() > 30
    text = picture[:band]
    assert (text > 128).mean() > 0.02, "the band holds white text"
    assert ev.peak_seq == 24


def test_one_jpeg_per_peak_frame_and_frames_not_wanted_are_forgotten():
    delivered = Delivered()
    snapshots = Snapshots(["cam1"], delivered, height=HEIGHT)
    try:
        snapshots.keep("cam1", 24, frame(24), wanted={24})
        assert snapshots.take(event("start", 24))
        assert snapshots.take(event("update", 24))  # same peak: no second JPEG
        snapshots.keep("cam1", 28, frame(28), wanted={28})  # a better window: 24 is forgotten
        assert snapshots.take(event("end", 28))
        items = delivered.wait(2)
        assert [e.phase for e, _ in items] == ["start", "end"]
        assert not snapshots.take(event("start", 24, event_id="b" * 32))  # frame 24 was not kept
        snapshots.keep("cam1", 40, frame(40), wanted={44})  # not a peak frame: nothing kept
        assert not snapshots.take(event("start", 40, event_id="c" * 32))
    finally:
        snapshots.close()
    assert snapshots.encoded == 2 and snapshots.dropped == 0


def test_a_full_queue_drops_the_oldest_snapshot_and_counts_it():
    entered, gate = threading.Event(), threading.Event()
    delivered = Delivered()

    def slow(ev, jpeg):
        entered.set()
        gate.wait(10)
        delivered(ev, jpeg)

    snapshots = Snapshots(["cam1"], slow, height=HEIGHT, queue_size=2)
    try:
        for n in range(5):
            snapshots.keep("cam1", n, frame(n), wanted={n})
            snapshots.take(event("start", n, event_id=f"{n:032d}"))
            if n == 0:
                assert entered.wait(10)  # the encoder holds the first at the gate
        gate.set()
        delivered.wait(3)
    finally:
        snapshots.close()
    # the encoder took the first job at once and held it at the gate; of the 4 queued behind it, 2 were dropped
    assert [e.peak_seq for e, _ in delivered.items] == [0, 3, 4] and snapshots.dropped == 2


def test_recorder_keeps_the_snapshot_beside_the_event_clip(tmp_path):
    recorder = Recorder(RecordConfig(dir=str(tmp_path), height=64, event_clips=True), cameras("cam1"))
    try:
        ev = event("end", 24)
        recorder.save_snapshot(ev, b"\xff\xd8first\xff\xd9")
        recorder.save_snapshot(ev, b"\xff\xd8better\xff\xd9")  # a later peak replaces it
        clip, snapshot = recorder.event_paths(ev)
        assert snapshot == clip.with_suffix(".jpg") and snapshot.read_bytes() == b"\xff\xd8better\xff\xd9"
        assert [p.name for p in snapshot.parent.iterdir()] == [snapshot.name]  # no partial file left
    finally:
        recorder.close()


@pytest.mark.parametrize("phase", ["start", "end"])
def test_snapshot_names_the_label_score_and_camera(phase):
    """The band's text, read back by drawing the same strings: the left half differs between labels."""
    delivered = Delivered()
    snapshots = Snapshots(["cam1"], delivered, height=HEIGHT)
    try:
        snapshots.keep("cam1", 24, frame(24), wanted={24})
        snapshots.take(event(phase, 24))
        snapshots.take(EventMessage(**{**_fields(event(phase, 24)), "id": "d" * 32, "label": "right"}))
        (_, left), (_, right) = delivered.wait(2)
    finally:
        snapshots.close()
    a, b = (cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_GRAYSCALE) for j in (left, right))
    band = a.shape[0] - HEIGHT
    assert not np.array_equal(a[:band, : W], b[:band, : W])  # label differs
    assert np.abs(a[:band, W + 8 :].astype(int) - b[:band, W + 8 :]).mean() < 2  # camera and time alike


def _fields(msg: EventMessage) -> dict:
    return {name: getattr(msg, name) for name in msg.__struct_fields__}
