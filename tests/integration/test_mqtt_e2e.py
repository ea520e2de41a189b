"""End to end with a real Mosquitto broker: the pipeline's messages reach MQTT with the documented topics; the
broker stops for 5 s mid-run and comes back: ZeroMQ keeps publishing, the sink reconnects, and the MQTT messages
it counted as dropped are exactly those a subscriber on the broker missed."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from emim_stream.pipeline.comms.messages import StatusMessage
from emim_stream.pipeline.comms.subscribe import Subscriber
from tests.integration.conftest import engine_section, free_port
from tests.mqtt_broker import MISSING, Recorder

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

OUTAGE_S = 5.0


def test_broker_outage_mid_run_drops_exactly_what_the_subscriber_missed(pipeline_factory, mosquitto, record_property):
    broker = mosquitto()
    recorder = Recorder(broker.port, "fleet/box1/#", persistent=True)  # keeps its session across the restart
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    config = {
        "cameras": [{"id": "cam1", "source": "synthetic://?seed=3&fps=30&size=160x120&segment_s=1"}],
        "engine": engine_section(),
        "window": {"stride": 4},
        "publish": {"endpoint": endpoint, "heartbeat_s": 0.5},
        "metrics": {"port": 0},
        "events": {"enter": 0.3, "exit": 0.2, "min_windows": 1},
        "mqtt": {
            "host": "127.0.0.1", "port": broker.port, "box_id": "box1", "prefix": "fleet",
            "kinds": ["label", "status", "event"], "qos": 1, "queue_size": 10,
            "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
        },
    }  # fmt: skip
    zmq_seen: set[tuple[str, str, int]] = set()
    statuses: list[StatusMessage] = []
    p = pipeline_factory(config)
    try:
        with Subscriber(endpoint, topics=(b"labels/", b"status/", b"events/"), timeout_s=1.0) as sub:

            def receive_for(seconds: float) -> list[dict]:
                got_list, end = [], time.monotonic() + seconds
                while time.monotonic() < end:
                    p.watch_children()
                    got = sub.recv(0.2)
                    if got is not None:
                        got_list.append(got.payload)
                        zmq_seen.add((got.payload["kind"], got.payload["camera_id"], got.payload["msg_seq"]))
                        if got.payload["kind"] == "status":
                            statuses.append(StatusMessage.from_payload(got.payload))
                return got_list

            deadline = time.monotonic() + 90
            while not any(m["kind"] == "label" for m in receive_for(0.5)):
                assert time.monotonic() < deadline and p.proc.poll() is None, p.output()[-3000:]
            receive_for(2.0)
            assert statuses and statuses[-1].outputs["mqtt"]["state"] == "connected"
            assert recorder.wait_for(lambda m: len(m) > 5)

            broker.stop()
            during = receive_for(OUTAGE_S)
            labels_during = [m for m in during if m["kind"] == "label"]
            assert len(labels_during) >= 5, "ZeroMQ must keep publishing while the broker is down"
            assert statuses[-1].outputs["mqtt"]["state"] in ("reconnecting", "unreachable")
            assert statuses[-1].outputs["mqtt"]["dropped"] > 0

            broker.start()
            restarted = time.monotonic()
            deadline = time.monotonic() + 30
            sink = statuses[-1].outputs["mqtt"]
            while (sink["state"], sink["reconnects"]) != ("connected", 1):
                assert time.monotonic() < deadline, sink
                receive_for(0.5)
                sink = statuses[-1].outputs["mqtt"]
            reconnect_s = time.monotonic() - restarted  # to the first heartbeat that says so (0.5 s apart)
            receive_for(2.0)
            assert sub.total_lost == 0, sub.lost
            # the sink's state and counters in the running pipeline's metrics, parsed by prometheus_client
            metrics_port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", p.output())[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                samples = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(response.read().decode())
                    for s in family.samples
                }
            assert samples[("emim_mqtt_reconnects_total", ())] == 1
            assert samples[("emim_mqtt_state", (("state", "connected"),))] == 1
            assert samples[("emim_mqtt_dropped_total", ())] == statuses[-1].outputs["mqtt"]["dropped"]
            assert samples[("emim_camera_state", (("camera", "cam1"), ("state", "live")))] == 1
            assert samples[("emim_camera_state", (("camera", "cam1"), ("state", "stalled")))] == 0
        assert p.terminate() == 0, p.output()[-3000:]
        out = p.output()
        match = re.search(r"^mqtt: (\d+) sent, (\d+) dropped, (\d+) reconnects", out, re.MULTILINE)
        assert match, out[-3000:]
        sent, dropped, reconnects = map(int, match.groups())
        assert reconnects == 1 and dropped > 0

        def mqtt_seen() -> set[tuple[str, str, int]]:
            seen = set()
            for topic, payload, _ in list(recorder.messages):
                if topic == "fleet/box1/available":  # online / stopped: not the pipeline's messages
                    continue
                prefix, box, camera, kind = topic.split("/")
                assert (prefix, box, camera) == ("fleet", "box1", payload["camera_id"]) and kind == payload["kind"]
                seen.add((kind, camera, payload["msg_seq"]))
            return seen

        # every topic is numbered 0, 1, ... by the publisher; ZeroMQ saw each one without a gap until it stopped
        # listening, MQTT the rest (what the pipeline sent while stopping)
        assert recorder.wait_for(lambda _: len(mqtt_seen()) >= sent, timeout_s=15), (len(mqtt_seen()), sent)
        seen = mqtt_seen()
        last: dict[tuple[str, str], int] = {}
        for kind, camera, n in zmq_seen | seen:
            last[kind, camera] = max(n, last.get((kind, camera), -1))
        published = {(kind, camera, n) for (kind, camera), end in last.items() for n in range(end + 1)}
        missed = published - seen
        assert len(missed) == dropped, (len(missed), dropped, sorted(missed)[:20])
        assert sent + dropped == len(published) and len(seen) == sent  # every message is confirmed or counted
        assert {kind for kind, _, _ in seen} >= {"label", "status"}
        record_property("mqtt_dropped", dropped)
        record_property("mqtt_reconnect_s", round(reconnect_s, 2))
        print(
            f"\nMQTT: broker down {OUTAGE_S:.0f} s: {len(labels_during)} labels still on ZeroMQ, {dropped} MQTT "
            f"messages dropped = {len(missed)} missed by the subscriber; {sent} delivered; sink connected again "
            f"within {reconnect_s:.1f} s of the broker's restart"
        )
    finally:
        recorder.close()
