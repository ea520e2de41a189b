"""The inference loop, one pass at a time: real rings, VMP stage, windows, scheduler, outputs; only the engine is fake.

Frames are written into real shared-memory rings by the test (no camera processes), the loop's
:meth:`~emim_stream.pipeline.inference.loop.InferenceLoop.step` is called by hand, and the fake engine returns fixed
logits and keeps
every batch it was given, so each test can say which windows were served, in which batch, and check the served
clips against the batch VMP layer on the same raw frames (float32, max abs error 1e-5).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import zmq

from emim_stream.engines.backends.base import EngineInfo, InputSpec
from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.transforms import normalise
from emim_stream.pipeline.capture.ring import SharedRing
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.comms.subscribe import Subscriber
from emim_stream.pipeline.config import EventsConfig
from emim_stream.pipeline.inference.events import EventTracker
from emim_stream.pipeline.inference.latency import LatencyRecorder
from emim_stream.pipeline.inference.loop import CallbackObserver, InferenceLoop, LoopSettings
from emim_stream.pipeline.inference.postprocess import Postprocessor
from emim_stream.pipeline.inference.scheduler import Scheduler
from emim_stream.pipeline.inference.stream import CameraStream
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow
from emim_stream.pipeline.outputs.dispatch import Outputs

T, STRIDE, H, W, SLOTS = 4, 2, 8, 12, 32
LABELS = ("left", "right", "static")
TOL = 1e-5


class FixedEngine:
    """The one fake part: the same logits for every clip; keeps a copy of every batch it is given."""

    device = torch.device("cpu")

    def __init__(self, logits: tuple[float, ...] = (2.0, 0.0, -1.0), max_batch: int = 4) -> None:
        torch.manual_seed(0)
        self.vmp = VmpLayer()  # a real VMP layer: the stage computes real prompts
        self.input_spec = InputSpec(T, H, W, torch.float32, max_batch)
        self.labels = LABELS
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.batches: list[torch.Tensor] = []

    def infer(self, clips: torch.Tensor) -> torch.Tensor:
        self.batches.append(clips.clone())
        return self.logits.expand(clips.shape[0], -1).clone()

    def describe(self) -> EngineInfo:
        return EngineInfo("fake", "fp32", "cpu", "0" * 64, "fixed", "fixed logits")

    def close(self) -> None:
        pass


class Rig:
    """Rings the test writes into, the loop that reads them, and what the loop published."""

    def __init__(self, engine: FixedEngine, rings: dict[str, SharedRing], publisher: Publisher, events: bool) -> None:
        self.engine, self.rings = engine, rings
        self.frames = {
            cam: np.random.default_rng(i).integers(0, 256, (64, H, W, 3), np.uint8) for i, cam in enumerate(rings)
        }
        events_cfg = EventsConfig(enter=0.6, exit=0.4, min_windows=1)
        streams = [
            CameraStream(
                cam,
                ring,
                VmpStage(engine.vmp),
                ClipWindow(T, STRIDE, H, W),
                Postprocessor(LABELS, topk=2),
                events=EventTracker(cam, LABELS, events_cfg) if events else None,
            )
            for cam, ring in rings.items()
        ]
        self.labels: list[LabelMessage] = []
        self.events: list[EventMessage] = []
        self.latency = LatencyRecorder()
        self.loop = InferenceLoop(
            engine,
            streams,
            Scheduler(list(rings), engine.input_spec.max_batch),
            Outputs(publisher),
            LoopSettings(drain_limit=SLOTS, heartbeat_s=1.0, stall_timeout_s=5.0, config_hash="test"),
            latency=self.latency,
            observers=[CallbackObserver(self.labels.append, self.events.append)],
        )

    def write(self, cam: str, seqs: range | list[int]) -> None:
        for seq in seqs:
            self.rings[cam].write(self.frames[cam][seq], seq, time.monotonic_ns(), time.time_ns())

    def reference(self, cam: str, first_seq: int, last_seq: int) -> torch.Tensor:
        """The batch VMP layer on the raw frames ``first_seq - 1 .. last_seq`` -> prompts ``[3, T, H, W]``."""
        raw = torch.from_numpy(self.frames[cam][first_seq - 1 : last_seq + 1])
        x = normalise(raw, (0.45,) * 3, (0.225,) * 3)  # [T+1, 3, H, W]
        with torch.no_grad():
            prompts, _ = self.engine.vmp(x.permute(1, 0, 2, 3)[None])
        return prompts[0]


@pytest.fixture
def make_rig(tmp_path) -> Iterator:
    made: list[SharedRing] = []
    with Publisher(f"ipc://{tmp_path}/loop.sock") as publisher:

        def make(cameras: tuple[str, ...] = ("cam1",), engine: FixedEngine | None = None, events: bool = False) -> Rig:
            rings = {cam: SharedRing.create(SLOTS, H, W) for cam in cameras}
            made.extend(rings.values())
            return Rig(engine or FixedEngine(), rings, publisher, events)

        yield make
    for ring in made:
        ring.close()
        ring.unlink()


def test_behind_only_the_newest_ready_window_is_served_and_older_ones_are_counted(make_rig):
    rig = make_rig()
    rig.write("cam1", range(9))  # windows complete at frames 4, 6 and 8 (T=4, stride 2, frame 0 is VMP's reference)
    assert rig.loop.step()
    assert [b.shape[0] for b in rig.engine.batches] == [1]
    (msg,) = rig.labels
    assert (msg.window.first_seq, msg.window.last_seq) == (5, 8)
    assert msg.dropped_windows == 2 and rig.loop.streams["cam1"].dropped_windows == 2
    assert msg.dropped_frames == 0 and msg.msg_seq == 0
    assert (rig.engine.batches[0][0] - rig.reference("cam1", 5, 8)).abs().max() < TOL
    assert not rig.loop.step()  # nothing new in the ring: no engine call
    assert len(rig.engine.batches) == 1


def test_in_time_every_window_is_served(make_rig):
    rig = make_rig()
    for seq in range(11):
        rig.write("cam1", [seq])
        rig.loop.step()
    assert [(m.window.first_seq, m.window.last_seq) for m in rig.labels] == [(1, 4), (3, 6), (5, 8), (7, 10)]
    assert [m.msg_seq for m in rig.labels] == [0, 1, 2, 3]
    assert all(m.dropped_windows == 0 for m in rig.labels)
    for batch, m in zip(rig.engine.batches, rig.labels, strict=True):
        assert (batch[0] - rig.reference("cam1", m.window.first_seq, m.window.last_seq)).abs().max() < TOL


def test_ready_windows_of_several_cameras_share_engine_calls_up_to_the_max_batch(make_rig):
    rig = make_rig(("a", "b", "c"), FixedEngine(max_batch=2))
    for cam in "abc":
        rig.write(cam, range(5))  # one window each, frames 1-4
    assert rig.loop.step()
    assert rig.loop.step()
    assert [b.shape[0] for b in rig.engine.batches] == [2, 1]
    assert [m.camera_id for m in rig.labels] == ["a", "b", "c"]
    rows = [*rig.engine.batches[0], *rig.engine.batches[1]]
    for row, msg in zip(rows, rig.labels, strict=True):  # each row is its own camera's clip
        assert (row - rig.reference(msg.camera_id, 1, 4)).abs().max() < TOL
    for cam in "abc":
        rig.write(cam, range(5, 7))  # the next window of each camera, frames 3-6
    rig.loop.step()
    assert [m.camera_id for m in rig.labels[3:]] == ["a", "b"]  # the rotation goes on after c
    rig.loop.step()
    assert [m.camera_id for m in rig.labels[3:]] == ["a", "b", "c"]


def test_a_sequence_gap_restarts_the_window(make_rig):
    rig = make_rig()
    rig.write("cam1", range(4))  # prompts of frames 1-3: no window yet
    assert not rig.loop.step()
    rig.write("cam1", range(5, 10))  # frame 4 lost: frame 5 is only the new reference
    assert rig.loop.step()
    (msg,) = rig.labels
    assert (msg.window.first_seq, msg.window.last_seq) == (6, 9)
    assert msg.dropped_frames == 1 and msg.dropped_windows == 0
    assert (rig.engine.batches[0][0] - rig.reference("cam1", 6, 9)).abs().max() < TOL


def test_a_gap_closes_the_open_event(make_rig):
    rig = make_rig(events=True)
    rig.write("cam1", range(5))
    rig.loop.step()  # one window of "left" (p = 0.84 >= enter): the event opens
    assert rig.labels[0].topk[0][0] == "left"
    (start,) = rig.events
    assert (start.phase, start.label, start.first_seq, start.last_seq, start.msg_seq) == ("start", "left", 1, 4, 0)
    rig.write("cam1", range(6, 8))  # frame 5 lost
    rig.loop.step()
    start, end = rig.events
    assert (end.phase, end.id, end.label, end.end_reason, end.first_seq, end.last_seq) == (
        "end", start.id, "left", "gap", 1, 4
    )
    assert end.msg_seq == 1 and rig.loop.streams["cam1"].events_sent == 1


def test_a_served_window_gets_its_latency_record(make_rig):
    rig = make_rig()
    rig.write("cam1", range(5))
    rig.loop.step()
    (msg,) = rig.labels
    stamps = [
        msg.capture_mono_ns,
        msg.vmp_done_mono_ns,
        msg.infer_start_mono_ns,
        msg.infer_end_mono_ns,
        msg.publish_mono_ns,
    ]
    assert stamps == sorted(stamps)
    stages = dict(msg.latency_ms)
    total = stages.pop("total")
    assert set(stages) == {"capture_to_ring", "queue", "vmp", "wait", "infer", "publish"}
    assert all(ms >= 0 for ms in stages.values())
    assert total == pytest.approx(sum(stages.values()), abs=1e-6)
    assert total == pytest.approx((msg.publish_mono_ns - msg.capture_mono_ns) / 1e6, abs=1e-9)
    record = rig.latency.summary()["cam1"]
    assert record["total"]["count"] == 1 and record["total"]["max"] == total
    assert record["infer"]["max"] == stages["infer"]


def test_non_finite_scores_are_skipped_and_counted(make_rig, caplog):
    rig = make_rig(engine=FixedEngine(logits=(float("nan"), 0.0, 0.0)))
    rig.write("cam1", range(5))
    with caplog.at_level(logging.WARNING, logger="emim_stream.pipeline.inference.loop"):
        assert rig.loop.step()
    stream = rig.loop.streams["cam1"]
    assert rig.labels == [] and stream.labels_sent == 0
    assert stream.dropped_windows == 1 and stream.nonfinite_windows == 1
    assert "window 1-4 has non-finite scores" in caplog.text


def test_the_label_goes_out_on_its_zeromq_topic(make_rig, tmp_path):
    rig = make_rig()
    publisher = rig.loop.outputs.publisher
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
        sub.linger = 0
        sub.subscribe(b"")
        sub.connect(publisher.endpoint)
        for _ in range(200):  # until the subscription has reached the publisher
            publisher.send(b"probe/", {})
            if sub.poll(50):
                break
        else:
            pytest.fail("the subscription never reached the publisher")
        while sub.poll(50):
            sub.recv_multipart()
        rig.write("cam1", range(5))
        rig.loop.step()
        assert sub.poll(5000)
        topic, body = sub.recv_multipart()
    payload = json.loads(body)
    assert topic == b"labels/cam1/"
    assert (payload["kind"], payload["camera_id"], payload["msg_seq"]) == ("label", "cam1", 0)
    assert payload == json.loads(json.dumps(rig.labels[0].to_payload()))


def test_stats_carry_the_cameras_counts_and_latency_percentiles_of_the_interval(make_rig):
    rig = make_rig(("a", "b"), events=True)
    rig.loop.settings = LoopSettings(SLOTS, 1.0, 5.0, "test", box_id="box1", stats_s=3600.0)
    with Subscriber(rig.loop.outputs.publisher.endpoint, ["stats/"], timeout_s=0.05) as sub:
        for frames in (range(5), range(5, 9), range(9, 13)):  # a window each time, for each camera
            for cam in ("a", "b"):
                rig.write(cam, frames)
            while rig.loop.step():
                pass
        received = None
        for _ in range(100):  # the subscriber joins within a few rounds (ZeroMQ's slow joiner)
            rig.loop.last_stats_mono = time.monotonic() - 3600.0  # an interval is due (whatever the uptime)
            if received is None or received.message.latency_ms is not None:
                rig.loop.interval_latency.reset()
                for label in rig.labels:  # the same samples each round
                    rig.loop.interval_latency.add(label.camera_id, {"total": label.latency_ms["total"]})
            rig.loop.box_stats()
            received = sub.recv()
            if received is not None:
                break
    stats = received.message
    assert received.topic == "stats/box1/" and stats.box_id == "box1"
    assert stats.engine.backend == "fake" and set(stats.cameras) == {"a", "b"}
    for cam in ("a", "b"):
        totals = [m.latency_ms["total"] for m in rig.labels if m.camera_id == cam]
        camera = stats.cameras[cam]
        assert (camera.labels, camera.events, camera.dropped_frames) == (3, 1, 0)  # one event each, started
        assert camera.latency_ms.count == 3
        assert camera.latency_ms.p50 == pytest.approx(np.percentile(totals, 50), abs=1e-3)  # rounded to µs
        assert camera.latency_ms.max == pytest.approx(max(totals), abs=1e-3)
    every = [m.latency_ms["total"] for m in rig.labels]
    assert stats.latency_ms.p99 == pytest.approx(np.percentile(every, 99), abs=1e-3)
