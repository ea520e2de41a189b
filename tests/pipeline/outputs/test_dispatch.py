"""Outputs with a real ZeroMQ publisher and a real Mosquitto: the MQTT ``action`` copy of a camera's labels goes out
when the top label changes and after each heartbeat; an event message says where its snapshot and clip are."""

from __future__ import annotations

import time

import pytest

from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage, ModelInfo, StatusMessage, WindowInfo
from emim_stream.pipeline.comms.mqtt import MqttSink
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.config import MqttConfig, RecordConfig
from emim_stream.pipeline.outputs.dispatch import Outputs
from emim_stream.pipeline.outputs.record import Recorder
from tests.mqtt_broker import MISSING
from tests.mqtt_broker import Recorder as MqttRecorder
from tests.pipeline.outputs.test_record import cameras


def label(seq: int, top: str) -> LabelMessage:
    return LabelMessage("cam1", WindowInfo(seq, seq + 7, 8, 4, 233.3), ((top, 0.9), ("static", 0.1)),
                        ModelInfo("emim_xs", "torch", "fp32", "cpu"), 1, 1, 1, 1, 1, 1, 1, {"total": 1.0},
                        msg_seq=seq)  # fmt: skip


def status() -> StatusMessage:
    return StatusMessage("cam1", "live", 30.0, 1.0, 10, 0, 0, 0, 64, 48, 1, 1, 1, "h")


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_action_goes_out_when_the_top_label_changes_and_after_each_heartbeat(mosquitto, tmp_path):
    broker = mosquitto()
    watch = MqttRecorder(broker.port, "emim/b/cam1/action")
    try:
        with (
            Publisher(f"ipc://{tmp_path}/x.sock") as publisher,
            MqttSink(MqttConfig(host="127.0.0.1", port=broker.port, box_id="b")) as sink,
        ):
            outputs = Outputs(publisher, sink)
            tops = ["left", "left", "right", "right", None, "right", "right", "left"]  # None: a heartbeat
            for seq, top in enumerate(tops):
                if top is None:
                    outputs.status(status())
                else:
                    outputs.label(label(seq, top))
            deadline = time.monotonic() + 10
            while sink.stats()["sent"] < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert watch.wait_for(lambda m: len(m) == 4)
        assert [p["msg_seq"] for _, p, _ in watch.messages] == [0, 2, 5, 7]  # left, right, heartbeat, left
        assert all(p["kind"] == "label" for _, p, _ in watch.messages)
    finally:
        watch.close()


def test_an_event_says_where_its_clip_and_snapshot_are_when_recording_clips(tmp_path):
    event = EventMessage("cam1", "ab" * 16, "start", "left", 0, 15, 0, 1_700_000_000_000_000_000, 1, 1, 0.9, 0.9, 15, 3)
    recorder = Recorder(RecordConfig(dir=str(tmp_path), height=64, event_clips=True), cameras("cam1"))
    try:
        with Publisher(f"ipc://{tmp_path}/x.sock") as publisher:
            published = Outputs(publisher, recorder=recorder).event(event)
        clip, snapshot = recorder.event_paths(event)
        assert (published.clip_path, published.has_snapshot, published.snapshot_path) == (str(clip), False, None)
        with Publisher(f"ipc://{tmp_path}/y.sock") as publisher:
            assert Outputs(publisher).event(event).clip_path is None  # not recording clips
    finally:
        recorder.close()
    assert snapshot.suffix == ".jpg"
