"""Bad numbers, ports, ids, URIs and payloads are refused or counted, never a crash, a hang or a silent wrap."""

from __future__ import annotations

import json
import logging
import time

import pytest
import zmq

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.capture.sources import OpenCvSource, SourceState, open_source, redact_uri
from emim_stream.pipeline.comms.messages import (
    LabelMessage,
    MessageError,
    ModelInfo,
    StatusMessage,
    WindowInfo,
    parse_payload,
)
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.comms.relay import Relay
from emim_stream.pipeline.comms.subscribe import Subscriber
from emim_stream.pipeline.config import load_config
from emim_stream.pipeline.errors import PublishError, SourceError

CAMERA = "cameras: [{id: cam1, source: 'synthetic://'}]\n"


def load(tmp_path, text: str = CAMERA, overrides: tuple[str, ...] = ()):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, overrides)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("publish.send_hwm=100000000", "publish.send_hwm: must be in 1..1000000"),
        ("publish.send_hwm=0", "publish.send_hwm: must be in 1..1000000"),
        ("publish.heartbeat_s=.nan", "publish.heartbeat_s: must be > 0 and <= 3600 s, got nan"),
        ("publish.heartbeat_s=.inf", "publish.heartbeat_s: must be > 0 and <= 3600 s, got inf"),
        ("cameras.0.open_timeout_s=-1", "cameras[0].open_timeout_s: must be > 0 and <= 3600 s"),
        ("cameras.0.read_timeout_s=.nan", "cameras[0].read_timeout_s: must be > 0 and <= 3600 s"),
        ("cameras.0.stride=5000", "cameras[0].stride: must be in 1..1024"),
        ("supervisor.stall_timeout_s=.inf", "supervisor.stall_timeout_s: must be > 0 and <= 3600 s"),
        ("supervisor.restart_backoff_max_s=1.0e+9", "supervisor.restart_backoff_max_s: must be > 0 and <= 3600 s"),
        ("window.stride=100000", "window.stride: must be in 1..1024"),
        ("postprocess.topk=1000", "postprocess.topk: must be in 1..100"),
        ("engine.threads=100000", "engine.threads must be in 0..256, got 100000"),
        ("engine.frames=100000", "engine.frames must be in 2..128, got 100000"),
        ("engine.width=1048576", "engine.width must be in 32..1024, got 1048576"),
        ("engine.height=-32", "engine.height must be in 32..1024, got -32"),
        ("publish.endpoint=tcp://127.0.0.1:99999", "publish.endpoint: port '99999' must be 1-65535"),
        ("publish.endpoint=tcp://127.0.0.1:-1", "publish.endpoint: port '-1' must be 1-65535"),
        # issue 29 (6): MQTT settings that broke the sink while the run exited 0
        ("mqtt.keepalive_s=100000", "mqtt.keepalive_s: must be in 1..65535"),
        ("mqtt.keepalive_s=0", "mqtt.keepalive_s: must be in 1..65535"),
        (f"mqtt.prefix={'x' * 70000}", "mqtt.prefix: must be at most 1024 bytes"),
        ('mqtt.prefix="emim\\0x"', "mqtt.prefix: must not contain NUL or control characters"),
        ('mqtt.box_id="box\\x01"', "mqtt.box_id: must not contain NUL or control characters"),
        ('mqtt.client_id="c\\0"', "mqtt.client_id: must not contain NUL or control characters"),
        ('mqtt.username="u\\0"', "mqtt.username: must not contain NUL or control characters"),
        # issue 29 (7): bounds the documentation promises
        ("record.segment_s=.nan", "record.segment_s: must be > 0 and <= 3600 s, got nan"),
        ("record.segment_s=.inf", "record.segment_s: must be > 0 and <= 3600 s, got inf"),
        ("record.max_mb=.nan", "record.max_mb: must be in 1..100000"),
        ("record.max_mb=.inf", "record.max_mb: must be in 1..100000"),
        ("record.queue_frames=1000000000000", "record.queue_frames: must be in 1..100000"),
        ("mqtt.reconnect_max_s=.inf", "mqtt.reconnect_max_s: must be > 0 and <= 3600 s, got inf"),
        ("mqtt.reconnect_min_s=.nan", "mqtt.reconnect_min_s: must be > 0 and <= 3600 s, got nan"),
        ("mqtt.queue_size=1000000000000", "mqtt.queue_size: must be in 1..1000000"),
        ("events.min_windows=1000000000000", "events.min_windows: must be in 1..10000"),
    ],
)
def test_numeric_settings_are_range_checked_naming_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, overrides=(override,))
    assert field in str(err.value) and err.value.exit_code == 2


def test_bounds_themselves_are_accepted(tmp_path):
    cfg = load(
        tmp_path,
        overrides=(
            "publish.send_hwm=1000000", "publish.heartbeat_s=3600", "window.stride=1024", "engine.threads=256",
            "engine.frames=128", "engine.width=1024", "publish.endpoint=tcp://127.0.0.1:0",
        ),
    )
    assert cfg.publish.send_hwm == 1_000_000 and cfg.engine.width == 1024


def test_numeric_yaml_camera_id_is_refused_with_a_hint_to_quote_it(tmp_path):
    with pytest.raises(ConfigError, match=r'cameras\[0\]\.id: must be a string, got the number 8; quote it'):
        load(tmp_path, "cameras: [{id: 010, source: 'synthetic://'}]\n")
    assert load(tmp_path, "cameras: [{id: '010', source: 'synthetic://'}]\n").cameras[0].id == "010"
    assert load(tmp_path, "cameras: [{id: usb, source: 0}]\n").cameras[0].source == "0"  # an index stays fine


def test_publisher_port_zero_binds_any_port_and_out_of_range_is_refused():
    with Publisher("tcp://127.0.0.1:0") as pub:
        port = int(pub.endpoint.rpartition(":")[2])
        assert 0 < port <= 65535
    with pytest.raises(PublishError, match="port '99999' must be 1-65535"):
        Publisher("tcp://127.0.0.1:99999")


def test_relay_bounds_and_the_remote_without_curve_warning(caplog):
    with pytest.raises(ConfigError, match=r"relay send_hwm must be an integer in 1\.\.1000000, got -5"):
        Relay("tcp://127.0.0.1:*", ["tcp://127.0.0.1:9"], send_hwm=-5)
    with caplog.at_level(logging.WARNING, logger="emim_stream.pipeline.comms.relay"), Relay("tcp://127.0.0.1:*", ["inproc://x"]):
        pass
    assert not caplog.records
    remote = Relay("tcp://0.0.0.0:*", ["inproc://x"], allow_remote=True)
    with caplog.at_level(logging.WARNING, logger="emim_stream.pipeline.comms.relay"), remote as relay:
        endpoint = relay.endpoint
    assert [r.getMessage() for r in caplog.records] == [
        f"relaying on {endpoint} without CURVE: anyone who reaches it can read the streams"
    ]


@pytest.mark.parametrize("value", [-5, 0, 10**23, 1 << 31])
def test_subscriber_max_msg_bytes_is_bounded(value):
    with pytest.raises(ConfigError, match="subscriber max_msg_bytes must be an integer in 1..1073741824"):
        Subscriber("tcp://127.0.0.1:9", max_msg_bytes=value)


@pytest.mark.parametrize(
    "scheme",
    ["rtsp://u:pw@cam:554/s", "rtsps://u:pw@cam/s", "rtmp://u:pw@cam/app", "http://u:pw@cam/v.cgi",
     "https://u:pw@cam/v.cgi", "srt://u:pw@cam:9000", "udp://u:pw@cam:1234", "tcp://u:pw@cam:1234"],
)
@pytest.mark.parametrize(
    "key", ["passphrase", "password", "passwd", "pwd", "secret", "key", "api_key", "token", "access_token",
            "X-Auth-Token", "auth", "sig", "credential", "sessionid"],
)
def test_every_credential_looking_query_key_is_redacted_for_every_scheme(scheme, key):
    uri = f"{scheme}?mode=caller&{key}=hunter2;latency=200"
    shown = redact_uri(uri)
    assert "hunter2" not in shown and "pw@" not in shown, shown
    assert f"{key}=***" in shown and "mode=caller" in shown and "latency=200" in shown
    assert OpenCvSource(uri).uri_redacted == shown


def test_a_directory_and_a_missing_device_get_their_own_message(tmp_path):
    with pytest.raises(SourceError, match=f"{tmp_path} is a directory, not a video file"):
        OpenCvSource(str(tmp_path)).open()
    with pytest.raises(SourceError, match=r"camera device /dev/video97 does not exist; is the camera plugged in"):
        OpenCvSource("/dev/video97").open()
    with pytest.raises(SourceError, match="video file not found"):
        OpenCvSource(str(tmp_path / "missing.mp4")).open()


def test_synthetic_size_is_bounded():
    with pytest.raises(ConfigError, match=r"'size'='100000x100000' must be WIDTHxHEIGHT, each in 8..4096"):
        open_source("synthetic://?size=100000x100000")


def _label(**change) -> dict:
    msg = LabelMessage(
        camera_id="cam1",
        window=WindowInfo(0, 7, 8, 4, 233.3),
        topk=(("wave", 0.9),),
        model=ModelInfo("emim_xs", "torch", "fp32", "cpu", "0" * 64),
        capture_mono_ns=1, capture_wall_ns=1, vmp_done_mono_ns=2, infer_start_mono_ns=3, infer_end_mono_ns=4,
        publish_mono_ns=5, publish_wall_ns=5, latency_ms={"total": 1.0}, dropped_frames=0, dropped_windows=0,
        msg_seq=0,
    ).to_payload()
    return {**json.loads(json.dumps(msg)), **change}


def _status(state: str) -> dict:
    return StatusMessage(
        camera_id="cam1", state=state, fps=30.0, staleness_ms=None, latest_seq=1, reconnects=0, frames_lost=0,
        dropped_frames=0, source_width=8, source_height=8, heartbeat_mono_ns=1, publish_mono_ns=1,
        publish_wall_ns=1, config_hash="x", detail="", msg_seq=0,
    ).to_payload()


POISON = {
    "nan score": _label(topk=[{"label": "wave", "score": float("nan")}]),
    "infinite latency": _label(latency={"stages": {"total": float("inf")}}),
    "huge msg_seq": _label(msg_seq=10**30),
    "negative msg_seq": _label(msg_seq=-2),
    "unknown state": {**_status("live"), "state": "exploded"},
    "wrong schema": _label(schema=99),
}


@pytest.mark.parametrize("case", list(POISON))
def test_parse_payload_refuses_poisoned_fields(case):
    with pytest.raises(MessageError):
        parse_payload(POISON[case])


def test_source_states_and_message_states_agree():
    from emim_stream.pipeline.comms.messages import SOURCE_STATES

    assert tuple(s.value for s in SourceState) == SOURCE_STATES
    assert parse_payload(_status("reconnecting")).state == "reconnecting"


def test_subscriber_counts_poison_as_malformed_and_survives():
    """Deep nesting, out-of-range msg_seq, NaN, unknown states and schema errors: malformed, not received."""
    bodies = [b"[" * 200_000, b'{"msg_seq": ' + str(10**30).encode() + b"}"]
    bodies += [json.dumps(p).encode() for p in POISON.values()]  # json.dumps writes NaN / Infinity
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as pub:
        pub.linger = 0
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        with Subscriber(f"tcp://127.0.0.1:{port}", topics=[b""], context=ctx) as sub:
            deadline = time.monotonic() + 10
            while sub.received == 0 and time.monotonic() < deadline:  # wait until the subscription is through
                pub.send_multipart([b"labels/cam1/", json.dumps(_label(msg_seq=0)).encode()])
                sub.recv(0.1)
            assert sub.received == 1
            for body in bodies:
                pub.send_multipart([b"labels/cam1/", body])
            pub.send_multipart([b"labels/cam1/", json.dumps(_label(msg_seq=1)).encode()])
            got = sub.recv(5)
            assert got is not None and got.msg_seq == 1 and isinstance(got.message, LabelMessage)
            assert sub.received == 2 and sub.malformed == len(bodies)


def _subscribed(ctx, pub, sub) -> None:
    """Send valid labels (msg_seq 0) until ``sub`` receives one: the subscription is through."""
    deadline = time.monotonic() + 10
    while sub.received == 0:
        assert time.monotonic() < deadline, "the subscription never went through"
        pub.send_multipart([b"labels/cam1/", json.dumps(_label(msg_seq=0)).encode()])
        sub.recv(0.1)


def test_a_malformed_message_never_enters_loss_accounting():
    """Issue 29 (8): a NaN-score label with msg_seq 2^62 made 'lost 4611686018427387894'; a status with an
    unknown state and a reused msg_seq made 'publisher restarted' lines."""
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as pub:
        pub.linger = 0
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        with Subscriber(f"tcp://127.0.0.1:{port}", topics=[b""], context=ctx) as sub:
            _subscribed(ctx, pub, sub)
            poisoned = _label(msg_seq=2**62, topk=[{"label": "wave", "score": float("nan")}])
            pub.send_multipart([b"labels/cam1/", json.dumps(poisoned).encode()])
            bodies = [json.dumps({**_status("live"), "state": "exploded", "msg_seq": 0}).encode()] * 3
            bodies.append(json.dumps(_label(msg_seq=2**61, schema=99)).encode())
            for body in bodies:
                pub.send_multipart([b"status/cam1/" if b"exploded" in body else b"labels/cam1/", body])
            pub.send_multipart([b"labels/cam1/", json.dumps(_label(msg_seq=1)).encode()])
            got = sub.recv(5)
            assert got is not None and got.msg_seq == 1
            assert sub.total_lost == 0 and sub.restarts == {}
            assert sub.malformed == 1 + len(bodies)


def test_subscribe_says_messages_arrived_malformed_rather_than_nothing_arrived(capsys):
    """Issue 29 (9): when everything that arrived was malformed, the hint was 'nothing arrived'."""
    from emim_stream.cli.main import main

    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as pub:
        pub.linger = 0
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        stop = time.monotonic() + 3

        def flood() -> None:
            while time.monotonic() < stop:
                pub.send_multipart([b"labels/cam1/", b'{"msg_seq": 1, "kind": "label"}'])
                time.sleep(0.05)

        import threading

        thread = threading.Thread(target=flood)
        thread.start()
        try:
            code = main(["subscribe", "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "2"])
        finally:
            thread.join()
    err = capsys.readouterr().err
    assert code == 0
    assert "nothing arrived" not in err
    assert "malformed" in err and "message(s) arrived but none could be read" in err
