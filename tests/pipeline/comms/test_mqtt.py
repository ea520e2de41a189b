"""MqttSink against a real Mosquitto broker on loopback: topics and payloads, retain, availability, announcements
read back and cleared, an unreachable broker, refused credentials, and the bounded queue that drops its oldest
messages while the broker is down."""

from __future__ import annotations

import json
import logging
import time

import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.mqtt import Announcement, MqttSink
from emim_stream.pipeline.config import MqttConfig
from tests.mqtt_broker import MISSING, Recorder
from tests.polling import wait_for

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def _payload(kind: str, n: int) -> dict:
    return {"schema": 1, "kind": kind, "camera_id": "cam1", "msg_seq": n}


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_messages_arrive_with_documented_topics_payloads_and_retained_status(mosquitto, protocol):
    broker = mosquitto()
    cfg = MqttConfig(
        host="127.0.0.1", port=broker.port, protocol=protocol, box_id="box7", prefix="site/a",
        kinds=("event", "label", "status"), qos=1,
    )  # fmt: skip
    live = Recorder(broker.port, "site/a/#")
    try:
        with MqttSink(cfg) as sink:
            assert sink.client_id == "emim-box7"
            assert sink.send("event", "cam1", _payload("event", 0))
            assert sink.send("label", "cam1", _payload("label", 0))
            assert sink.send("status", "cam1", _payload("status", 0))
            assert live.wait_for(lambda m: len(m) == 4)
            assert wait_for(lambda: sink.stats()["sent"] == 3)  # the pipeline's messages; availability is not counted
            assert sink.stats() == {
                "state": "connected", "sent": 3, "dropped": 0, "refused": 0, "queued": 0, "reconnects": 0,
                "detail": "",
            }  # fmt: skip
        assert live.wait_for(lambda m: len(m) == 5)
        assert {(t, p if isinstance(p, bytes) else p["kind"], r) for t, p, r in live.messages} == {
            ("site/a/box7/available", b"online", False),  # retained, but delivered live as a normal message
            ("site/a/box7/cam1/event", "event", False),
            ("site/a/box7/cam1/label", "label", False),
            ("site/a/box7/cam1/status", "status", False),
            ("site/a/box7/available", b"stopped", False),  # the clean close
        }
        assert live.messages[-1][0] == "site/a/box7/available"
        late = Recorder(broker.port, "site/a/#", client_id="late")
        try:  # a subscriber arriving later gets the retained status and availability only
            assert late.wait_for(lambda m: len(m) == 2)
            assert sorted(late.messages) == [
                ("site/a/box7/available", b"stopped", True),
                ("site/a/box7/cam1/status", _payload("status", 0), True),
            ]
        finally:
            late.close()
    finally:
        live.close()


def test_kinds_not_configured_are_not_sent(mosquitto):
    broker = mosquitto()
    with MqttSink(MqttConfig(host="127.0.0.1", port=broker.port, box_id="b")) as sink:  # default: no labels
        assert not sink.send("label", "cam1", _payload("label", 0))
        assert sink.send("event", "cam1", _payload("event", 0))
        assert wait_for(lambda: sink.stats()["sent"] == 1)


def test_unreachable_broker_at_start_is_reported_once_and_retried(mosquitto, caplog):
    broker = mosquitto(start=False)
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, box_id="b", reconnect_min_s=0.1, reconnect_max_s=0.2)
    caplog.set_level(logging.INFO, logger="emim_stream.pipeline.comms.mqtt")
    with MqttSink(cfg) as sink:
        started = time.monotonic()
        for n in range(3):
            assert sink.send("event", "cam1", _payload("event", n))
        assert time.monotonic() - started < 0.1  # never waits for the broker
        assert wait_for(lambda: sink.stats()["state"] == "unreachable")
        time.sleep(1.0)  # several retries
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1 and unreachable[0].levelno == logging.WARNING
        assert f"broker 127.0.0.1:{broker.port} unreachable" in sink.stats()["detail"]
        broker.start()
        assert wait_for(lambda: sink.stats()["sent"] == 3), sink.stats()
        assert sink.stats()["state"] == "connected" and sink.stats()["dropped"] == 0


def test_refused_credentials_are_one_clear_line_without_the_password(mosquitto, caplog):
    broker = mosquitto(users={"emim": "right-password"})
    caplog.set_level(logging.INFO, logger="emim_stream.pipeline.comms.mqtt")
    cfg = MqttConfig(
        host="127.0.0.1", port=broker.port, box_id="b", username="emim", password="wrong-password",
        reconnect_min_s=0.1, reconnect_max_s=0.2,
    )  # fmt: skip
    assert "wrong-password" not in repr(cfg)
    with MqttSink(cfg) as sink:
        assert wait_for(lambda: sink.stats()["state"] == "refused")
        time.sleep(0.8)  # it keeps retrying: still one line
        stats = sink.stats()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert f"broker 127.0.0.1:{broker.port} refused the connection: Not authorized" in errors[0].getMessage()
    assert stats["state"] == "refused" and "Not authorized" in stats["detail"]
    assert "wrong-password" not in caplog.text


def test_good_credentials_from_the_environment(mosquitto, monkeypatch):
    broker = mosquitto(users={"emim": "s3cret"})
    monkeypatch.setenv("EMIM_MQTT_PASSWORD", "s3cret")
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, box_id="b", username="emim", password_env="EMIM_MQTT_PASSWORD")
    with MqttSink(cfg) as sink:
        assert sink.send("event", "cam1", _payload("event", 0))
        assert wait_for(lambda: sink.stats()["sent"] == 1), sink.stats()


def test_full_queue_drops_the_oldest_and_counts_them(mosquitto):
    broker = mosquitto()
    Recorder(broker.port, "emim/#", persistent=True).close()  # a session that collects messages while away
    broker.stop()
    cfg = MqttConfig(
        host="127.0.0.1", port=broker.port, box_id="b", queue_size=5, reconnect_min_s=0.1, reconnect_max_s=0.2
    )
    with MqttSink(cfg) as sink:
        for n in range(12):
            sink.send("event", "cam1", _payload("event", n))
        assert sink.stats()["dropped"] == 7 and sink.stats()["queued"] == 5
        broker.start()
        assert wait_for(lambda: sink.stats()["sent"] == 5), sink.stats()
    recorder = Recorder(broker.port, "emim/#", persistent=True)
    try:
        events = lambda m: [p["msg_seq"] for t, p, _ in m if t.endswith("/event")]  # noqa: E731
        assert recorder.wait_for(lambda m: len(events(m)) == 5)
        assert events(recorder.messages) == [7, 8, 9, 10, 11]  # the newest five
    finally:
        recorder.close()


def test_tls_with_the_brokers_ca_delivers_and_an_unknown_ca_does_not(mosquitto):
    broker = mosquitto(tls=True)
    good = MqttConfig(host="127.0.0.1", port=broker.port, box_id="b", tls=True, ca_file=str(broker.ca_file))
    with MqttSink(good) as sink:
        assert sink.send("event", "cam1", _payload("event", 0))
        assert wait_for(lambda: sink.stats()["sent"] == 1), sink.stats()
    untrusted = MqttConfig(host="127.0.0.1", port=broker.port, box_id="b", tls=True, reconnect_min_s=0.1,
                           reconnect_max_s=0.2)  # system CAs: the test CA is not among them
    with MqttSink(untrusted) as sink:
        sink.send("event", "cam1", _payload("event", 0))
        time.sleep(1.0)
        assert (sink.stats()["state"], sink.stats()["sent"]) == ("unreachable", 0)
        assert "TLS certificate is not trusted: check ca_file" in sink.stats()["detail"]
    with pytest.raises(ConfigError, match="mqtt: TLS set-up failed"):
        MqttSink(MqttConfig(host="127.0.0.1", tls=True, ca_file=str(broker.directory / "missing.pem")))


def test_a_broker_that_refuses_every_publish_is_reported_in_state_and_stats(mosquitto, caplog):
    """Issue 29 (6): a sink whose broker dropped every message reported nothing and the run exited 0. A broker
    whose access rules forbid publishing answers MQTT 5 clients 'Not authorized' for each message."""
    broker = mosquitto(acl=["topic read #"])
    caplog.set_level(logging.INFO, logger="emim_stream.pipeline.comms.mqtt")
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, box_id="b", protocol="5", kinds=("label",))
    with MqttSink(cfg) as sink:
        for n in range(20):
            sink.send("label", "cam1", _payload("label", n))
        assert wait_for(lambda: sink.stats()["refused"] == 20), sink.stats()
        stats = sink.stats()
    assert stats["state"] == "rejecting" and stats["sent"] == 0 and stats["dropped"] == 20
    assert "refuses every message" in stats["detail"] and "Not authorized" in stats["detail"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "access rules for emim/b/<camera>/<kind>" in errors[0], errors


def test_snapshots_and_actions_are_retained_and_stats_go_to_the_box_topic(mosquitto):
    broker = mosquitto()
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, box_id="b")  # default kinds: event, action, snapshot, stats
    jpeg = b"\xff\xd8\xff\xe0 a JPEG \xff\xd9"
    with MqttSink(cfg) as sink:
        assert sink.send("snapshot", "cam1", jpeg)
        assert sink.send("action", "cam1", _payload("label", 4))
        assert sink.send("stats", None, {"schema": 1, "kind": "stats", "msg_seq": 0})
        assert wait_for(lambda: sink.stats()["sent"] == 3), sink.stats()
    late = Recorder(broker.port, "emim/#", client_id="late")
    try:
        assert late.wait_for(lambda m: len(m) == 3)
        assert sorted(late.messages) == [
            ("emim/b/available", b"stopped", True),
            ("emim/b/cam1/action", _payload("label", 4), True),
            ("emim/b/cam1/snapshot", jpeg, True),  # the bytes as given
        ]  # stats are not retained
    finally:
        late.close()


def _announce(broker, topics: dict[str, bytes]) -> MqttSink:
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, box_id="b")
    sink = MqttSink(cfg, announcement=Announcement("ha/+/node_b/+/config", topics)).start()
    assert wait_for(lambda: sink.announced == len(topics)), sink.stats()
    return sink


def _retained(broker, topic_filter: str) -> dict[str, bytes]:
    """What the broker retains under ``topic_filter`` (read by a fresh subscriber once the retained burst is over)."""
    reader = Recorder(broker.port, topic_filter, client_id="reader")
    try:
        reader.wait_for(lambda m: False, timeout_s=0.5)
        return {t: p for t, p, retained in reader.messages if retained}
    finally:
        reader.close()


def test_announcements_are_retained_and_topics_no_longer_announced_are_cleared(mosquitto, caplog):
    broker = mosquitto()
    other = Recorder(broker.port, "unused", client_id="other-box")
    other._client.publish("ha/sensor/node_c/x/config", b'{"other":"box"}', qos=1, retain=True).wait_for_publish(5)
    other.close()
    caplog.set_level(logging.INFO, logger="emim_stream.pipeline.comms.mqtt")
    first = {"ha/sensor/node_b/cam1_action/config": b'{"a":1}', "ha/sensor/node_b/cam2_action/config": b'{"b":2}'}
    sink = _announce(broker, first)
    sink.close()
    assert sink.cleared == 0
    assert _retained(broker, "ha/#") == {**{t: json.loads(b) for t, b in first.items()}, "ha/sensor/node_c/x/config":
                                         {"other": "box"}}  # fmt: skip
    second = {"ha/sensor/node_b/cam1_action/config": b'{"a":3}'}  # cam2 removed from the config
    sink = _announce(broker, second)
    sink.close()
    assert sink.cleared == 1
    assert _retained(broker, "ha/#") == {"ha/sensor/node_b/cam1_action/config": {"a": 3},
                                         "ha/sensor/node_c/x/config": {"other": "box"}}  # fmt: skip
    assert "announced 1 retained topic(s) under ha/+/node_b/+/config, cleared 1 stale" in caplog.text
