"""Golden payloads: the JSON of every message kind, byte for byte as its schema puts it on the wire.

The status and preview strings were written by the field-by-field encoder of the first schema-1 release, the label
(schema 2: its window counts sampled frames and carries ``span_ms``), event (schema 2) and stats (schema 1) strings
by the first release of those; any change to them is a change of the wire format (and so of ``schema``). Each
message must encode to its string exactly (key order, float formatting, an absent ``truth``, a ``null`` staleness)
and the string must decode back to an equal object.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from emim_stream.pipeline.comms.messages import (
    CameraStats,
    EventMessage,
    LabelMessage,
    MessageError,
    ModelInfo,
    Percentiles,
    PreviewMessage,
    StatsMessage,
    StatusMessage,
    WindowInfo,
    json_schema,
    latency_breakdown_ms,
    parse_payload,
)

_STAMPS = (1_000_000_000, 1_000_500_000, 1_001_000_000, 1_002_000_000, 1_003_000_000, 1_009_500_000, 1_010_000_000)
_WALL = 1_767_225_600_000_000_000


def _label(truth: str | None, msg_seq: int) -> LabelMessage:
    return LabelMessage(
        "cam1",
        WindowInfo(100, 160, 16, 4, 2000.0),  # 16x4 on a 30 fps camera: 15 intervals of 4 frames
        (("wave", 0.912345), ("clap", 1e-05)),
        ModelInfo("emim_xs.demo", "torch", "fp32", "cpu", "ab" * 32),
        capture_mono_ns=_STAMPS[0],
        capture_wall_ns=_WALL,
        vmp_done_mono_ns=_STAMPS[3],
        infer_start_mono_ns=_STAMPS[4],
        infer_end_mono_ns=_STAMPS[5],
        publish_mono_ns=_STAMPS[6],
        publish_wall_ns=_WALL + 10_000_000,
        latency_ms=latency_breakdown_ms(*_STAMPS),
        dropped_frames=2,
        dropped_windows=1,
        msg_seq=msg_seq,
        clock_domain="boot-1",
        truth=truth,
    )


_MQTT = {"mqtt": {"state": "connected", "sent": 120, "dropped": 0, "reconnects": 1, "detail": ""}}


def _status(**change) -> StatusMessage:
    fields = dict(
        camera_id="cam1", state="live", fps=29.97, staleness_ms=12.5, latest_seq=115, reconnects=1, frames_lost=4,
        dropped_frames=2, source_width=1920, source_height=1080, heartbeat_mono_ns=1_011_000_000,
        publish_mono_ns=1_012_000_000, publish_wall_ns=_WALL + 12_000_000, config_hash="cafe0123beef", detail="",
        outputs=_MQTT, msg_seq=7, clock_domain="boot-1",
    )
    return StatusMessage(**{**fields, **change})


_LABEL_BODY = (
    '"window":{"first_seq":100,"last_seq":160,"frames":16,"stride":4,"span_ms":2000.0},'
    '"topk":[{"label":"wave","score":0.912345},{"label":"clap","score":1e-05}],'
    '"model":{"name":"emim_xs.demo","backend":"torch","precision":"fp32","device":"cpu",'
    '"checkpoint_sha256":"abababababababababababababababababababababababababababababababab"},'
    '"timestamps":{"capture_mono_ns":1000000000,"capture_wall_ns":1767225600000000000,"vmp_done_mono_ns":1002000000,'
    '"infer_start_mono_ns":1003000000,"infer_end_mono_ns":1009500000,"publish_mono_ns":1010000000,'
    '"publish_wall_ns":1767225600010000000},'
    '"latency":{"unit":"ms","clock":"CLOCK_MONOTONIC","stages":{"capture_to_ring":0.5,"queue":0.5,"vmp":1.0,'
    '"wait":1.0,"infer":6.5,"publish":0.5,"total":10.0}},'
    '"dropped_frames":2,"dropped_windows":1'
)
_STATUS_TAIL = (
    '"reconnects":1,"frames_lost":4,"dropped_frames":2,"source_width":1920,"source_height":1080,'
    '"heartbeat_mono_ns":1011000000,"publish_mono_ns":1012000000,"publish_wall_ns":1767225600012000000,'
    '"config_hash":"cafe0123beef",'
)

GOLDEN = {
    "label with truth": (
        _label("wave", 41),
        '{"schema":2,"kind":"label","camera_id":"cam1","msg_seq":41,"clock_domain":"boot-1",'
        + _LABEL_BODY + ',"truth":"wave"}',
    ),
    "label without truth, not yet numbered": (
        _label(None, -1),
        '{"schema":2,"kind":"label","camera_id":"cam1","msg_seq":-1,"clock_domain":"boot-1",' + _LABEL_BODY + "}",
    ),
    "status live": (
        _status(),
        '{"schema":1,"kind":"status","camera_id":"cam1","msg_seq":7,"clock_domain":"boot-1","state":"live",'
        '"fps":29.97,"staleness_ms":12.5,"latest_seq":115,' + _STATUS_TAIL + '"detail":"",'
        '"outputs":{"mqtt":{"state":"connected","sent":120,"dropped":0,"reconnects":1,"detail":""}}}',
    ),
    "status before the first frame": (
        _status(state="connecting", fps=0.0, staleness_ms=None, latest_seq=-1, detail="rtsp://***@cam/: timeout",
                outputs={}),
        '{"schema":1,"kind":"status","camera_id":"cam1","msg_seq":7,"clock_domain":"boot-1","state":"connecting",'
        '"fps":0.0,"staleness_ms":null,"latest_seq":-1,' + _STATUS_TAIL + '"detail":"rtsp://***@cam/: timeout",'
        '"outputs":{}}',
    ),
    "event": (
        EventMessage("cam1", "5f0c6b1e9a7d4c2f8e3b1a0d9c8b7a6f", "end", "wave", 100, 139, 1_000_000_000, _WALL,
                     2_300_000_000, _WALL + 1_300_000_000, 0.97, 0.843333, 127, 7, "exit", True,
                     "rec/events/cam1_wave_20260101T000000Z_5f0c6b1e.jpg",
                     "rec/events/cam1_wave_20260101T000000Z_5f0c6b1e.mp4", 2_310_000_000, _WALL + 1_310_000_000,
                     msg_seq=3, clock_domain="boot-1"),
        '{"schema":2,"kind":"event","camera_id":"cam1","msg_seq":3,"clock_domain":"boot-1",'
        '"id":"5f0c6b1e9a7d4c2f8e3b1a0d9c8b7a6f","phase":"end","label":"wave","first_seq":100,"last_seq":139,'
        '"start_mono_ns":1000000000,"start_wall_ns":1767225600000000000,"end_mono_ns":2300000000,'
        '"end_wall_ns":1767225601300000000,"peak_score":0.97,"mean_score":0.843333,"peak_seq":127,"windows":7,'
        '"end_reason":"exit","has_snapshot":true,"snapshot_path":"rec/events/cam1_wave_20260101T000000Z_5f0c6b1e.jpg",'
        '"clip_path":"rec/events/cam1_wave_20260101T000000Z_5f0c6b1e.mp4","publish_mono_ns":2310000000,'
        '"publish_wall_ns":1767225601310000000}',
    ),
    "event start": (
        EventMessage("cam1", "5f0c6b1e9a7d4c2f8e3b1a0d9c8b7a6f", "start", "wave", 100, 115, 1_000_000_000, _WALL,
                     1_500_000_000, _WALL + 500_000_000, 0.9, 0.8, 115, 3, msg_seq=2, clock_domain="boot-1"),
        '{"schema":2,"kind":"event","camera_id":"cam1","msg_seq":2,"clock_domain":"boot-1",'
        '"id":"5f0c6b1e9a7d4c2f8e3b1a0d9c8b7a6f","phase":"start","label":"wave","first_seq":100,"last_seq":115,'
        '"start_mono_ns":1000000000,"start_wall_ns":1767225600000000000,"end_mono_ns":1500000000,'
        '"end_wall_ns":1767225600500000000,"peak_score":0.9,"mean_score":0.8,"peak_seq":115,"windows":3,'
        '"end_reason":null,"has_snapshot":false,"snapshot_path":null,"clip_path":null,"publish_mono_ns":0,'
        '"publish_wall_ns":0}',
    ),
    "stats": (
        StatsMessage(
            box_id="box7", uptime_s=60.5, interval_s=10.0, engine=ModelInfo("emim_xs", "torch", "fp32", "cpu"),
            cameras={"cam1": CameraStats("live", 30.0, 450, 2, 0, 1, Percentiles(75, 40.5, 52.25, 61.0, 63.5)),
                     "cam2": CameraStats("connecting", 0.0, 0, 0, 0, 0, None)},
            latency_ms=Percentiles(75, 40.5, 52.25, 61.0, 63.5), publish_dropped=0, outputs={},
            publish_mono_ns=61_000_000_000, publish_wall_ns=_WALL + 60_500_000_000, msg_seq=5, clock_domain="boot-1",
        ),
        '{"schema":1,"kind":"stats","msg_seq":5,"clock_domain":"boot-1","box_id":"box7","uptime_s":60.5,'
        '"interval_s":10.0,"engine":{"name":"emim_xs","backend":"torch","precision":"fp32","device":"cpu",'
        '"checkpoint_sha256":""},"cameras":{"cam1":{"state":"live","fps":30.0,"labels":450,"events":2,'
        '"dropped_frames":0,"dropped_windows":1,"latency_ms":{"count":75,"p50":40.5,"p90":52.25,"p99":61.0,'
        '"max":63.5}},"cam2":{"state":"connecting","fps":0.0,"labels":0,"events":0,"dropped_frames":0,'
        '"dropped_windows":0,"latency_ms":null}},"latency_ms":{"count":75,"p50":40.5,"p90":52.25,"p99":61.0,'
        '"max":63.5},"publish_dropped":0,"outputs":{},"publish_mono_ns":61000000000,'
        '"publish_wall_ns":1767225660500000000}',
    ),
    "preview": (
        PreviewMessage("cam1", 115, 1_000_000_000, _WALL, 64, 48, b"\xff\xd8\xff\xe0JFIF\x00\xff\xd9", msg_seq=9,
                       clock_domain="boot-1"),
        '{"schema":1,"kind":"preview","camera_id":"cam1","msg_seq":9,"clock_domain":"boot-1","seq":115,'
        '"capture_mono_ns":1000000000,"capture_wall_ns":1767225600000000000,"width":64,"height":48,'
        '"format":"jpeg","data":"/9j/4EpGSUYA/9k="}',
    ),
}


def _wire(payload) -> str:
    """What :class:`emim_stream.pipeline.comms.publish.Publisher` and the MQTT sink put on the wire for a numbered
    payload."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize("case", list(GOLDEN))
def test_every_kind_encodes_to_its_golden_payload(case):
    msg, golden = GOLDEN[case]
    assert _wire(msg.to_payload()) == golden
    if not isinstance(msg, (PreviewMessage, StatsMessage)):
        assert msg.to_json() == golden.encode()


@pytest.mark.parametrize("case", list(GOLDEN))
def test_every_golden_payload_decodes_to_its_message(case):
    msg, golden = GOLDEN[case]
    assert parse_payload(json.loads(golden)) == msg
    assert type(msg).from_payload(json.loads(golden)) == msg
    if not isinstance(msg, (PreviewMessage, StatsMessage)):
        assert type(msg).from_json(golden.encode()) == msg


def test_a_schema_1_label_is_refused_naming_both_versions():
    """Schema-1 windows counted camera frames and had no span: a reader of schema 2 must not take them as its own."""
    old = json.loads(GOLDEN["label with truth"][1])
    old["schema"] = 1
    del old["window"]["span_ms"]
    with pytest.raises(MessageError, match="label message has schema 1; this emim-stream reads schema 2"):
        parse_payload(old)

def test_a_schema_1_event_is_refused_naming_the_versions():
    """Schema 1 events (published only at their end, without id and phase) are not read as schema 2."""
    old = json.loads(GOLDEN["event"][1]) | {"schema": 1}
    with pytest.raises(MessageError, match="event message has schema 1; this emim-stream reads schema 2"):
        parse_payload(old)



def test_numpy_scores_are_written_as_python_floats():
    """A score straight from an array (numpy float64) goes out as the same float text."""
    np = pytest.importorskip("numpy")
    msg, golden = GOLDEN["event"]
    assert _wire(msgspec.structs.replace(msg, peak_score=np.float64(0.97)).to_payload()) == golden


@pytest.mark.parametrize("case", list(GOLDEN))
def test_every_golden_payload_meets_the_published_json_schema(case):
    """The schema the reference documents (``json_schema()``) accepts what the publisher sends, checked by an
    independent validator, and refuses a payload of another schema version or with a field missing."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema())
    payload = json.loads(GOLDEN[case][1])
    validator.validate(payload)
    assert not validator.is_valid({**payload, "schema": payload["schema"] + 1})
    required = "box_id" if payload["kind"] == "stats" else "camera_id"
    assert not validator.is_valid({key: value for key, value in payload.items() if key != required})
