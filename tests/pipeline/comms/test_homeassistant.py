"""Home Assistant discovery configs: the topics and fields Home Assistant's MQTT discovery requires, stable ids, and
value templates that, rendered by Jinja (the template engine Home Assistant uses) on real message payloads, give
the entity states Home Assistant expects."""

from __future__ import annotations

import json
import re

import jinja2
import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.homeassistant import announcement, discovery_configs
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage, ModelInfo, WindowInfo
from emim_stream.pipeline.config import MqttConfig

CFG = MqttConfig(host="broker", box_id="box7", prefix="site/a")
LABELS = ("left", "right", "wave")
# what each platform requires, from its Home Assistant documentation page (sensor.mqtt, binary_sensor.mqtt,
# event.mqtt, image.mqtt): the topic it reads and, for events, the event types
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
    "image": {"image_topic"},
}


def configs(cameras=("cam1", "door.2")) -> dict[str, dict]:
    return discovery_configs(CFG, "box7", list(cameras), LABELS, "emim_xs", "0.1.0")


def render(template: str, payload: dict | bytes) -> str:
    """Render a value template as Home Assistant does for an MQTT message: ``value`` and ``value_json``."""
    text = payload.decode() if isinstance(payload, bytes) else json.dumps(payload)
    env = jinja2.Environment()
    value_json = json.loads(text) if not isinstance(payload, bytes) else None
    return env.from_string(template).render(value=text, value_json=value_json).strip()


def test_every_entity_has_the_fields_home_assistant_requires():
    made = configs()
    topic_re = re.compile(r"homeassistant/(sensor|binary_sensor|event|image)/emim_box7/[A-Za-z0-9_-]+/config")
    assert all(topic_re.fullmatch(topic) for topic in made), list(made)
    for topic, config in made.items():
        component = topic.split("/")[1]
        assert REQUIRED[component] <= set(config), (topic, config)
        assert config["unique_id"] == f"emim_box7_{topic.split('/')[3]}"
        assert config["availability"] == [
            {"topic": "site/a/box7/available", "value_template": config["availability"][0]["value_template"]}
        ]
        assert config["device"]["identifiers"] and config["device"]["name"]
        json.dumps(config)  # JSON as published
    assert len({c["unique_id"] for c in made.values()}) == len(made)
    cameras = {c["device"]["identifiers"][0]: c["device"] for c in made.values()}
    assert set(cameras) == {"emim_box7", "emim_box7_cam1", "emim_box7_door_2"}
    assert cameras["emim_box7_door_2"]["via_device"] == "emim_box7" and cameras["emim_box7_door_2"]["name"] == "door.2"
    per_camera = sorted(t.split("/")[1] for t in made if "/emim_box7/cam1_" in t)
    assert per_camera == ["binary_sensor", "event", "image", "sensor"]


def test_configs_are_the_same_on_every_start_and_cover_only_the_configured_cameras():
    assert configs() == configs()
    assert set(configs(("cam1",))) < set(configs())
    sent = announcement(CFG, "box7", ["cam1"], LABELS, "emim_xs", "0.1.0")
    assert sent.topic_filter == "homeassistant/+/emim_box7/+/config"
    assert {t: json.loads(b) for t, b in sent.messages.items()} == configs(("cam1",))


def test_without_events_a_camera_has_only_its_action_sensor():
    made = discovery_configs(CFG, "box7", ["cam1"], [], "emim_xs", "0.1.0")
    assert sorted(t for t in made if "cam1" in t) == ["homeassistant/sensor/emim_box7/cam1_action/config"]


def test_camera_ids_that_collide_as_discovery_ids_are_refused():
    with pytest.raises(ConfigError, match=r"mqtt.home_assistant: camera ids \['cam.1', 'cam_1'\] give the same"):
        configs(("cam.1", "cam_1"))


def _event(phase: str) -> dict:
    return EventMessage("cam1", "5f0c" * 8, phase, "wave", 10, 40, 0, 0, 1, 1, 0.91, 0.8, 30, 5,
                        "exit" if phase == "end" else None).to_payload()  # fmt: skip


def _label() -> dict:
    return LabelMessage(
        "cam1", WindowInfo(0, 15, 16, 4, 500.0), (("wave", 0.875), ("left", 0.125)),
        ModelInfo("emim_xs", "torch", "fp32", "cpu"), 1, 1, 1, 1, 1, 1, 1, {"total": 1.0},
    ).to_payload()  # fmt: skip


def test_templates_give_home_assistant_the_states_of_real_messages():
    made = configs(("cam1",))
    by_component = {t.split("/")[1]: c for t, c in made.items() if "cam1" in t}
    event, in_progress, sensor = by_component["event"], by_component["binary_sensor"], by_component["sensor"]
    assert event["event_types"] == list(LABELS)
    assert event["state_topic"] == in_progress["state_topic"] == "site/a/box7/cam1/event"
    fired = json.loads(render(event["value_template"], _event("start")))
    assert fired == {"event_type": "wave", "id": "5f0c" * 8, "score": 0.91}
    for phase in ("update", "end"):  # an empty dict fires nothing
        assert json.loads(render(event["value_template"], _event(phase))) == {}
    assert [render(in_progress["value_template"], _event(p)) for p in ("start", "update", "end")] == ["ON", "ON", "OFF"]
    assert json.loads(render(in_progress["json_attributes_template"], _event("start"))) == {"label": "wave",
                                                                                            "id": "5f0c" * 8}
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == "site/a/box7/cam1/action"
    assert render(sensor["value_template"], _label()) == "wave"
    attributes = json.loads(render(sensor["json_attributes_template"], _label()))
    topk = [{"label": "wave", "score": 0.875}, {"label": "left", "score": 0.125}]
    assert attributes == {"score": 0.875, "topk": topk}
    availability = sensor["availability"][0]["value_template"]
    assert [render(availability, v) for v in (b"online", b"offline", b"stopped")] == ["online", "offline", "offline"]
    image = by_component["image"]
    assert (image["image_topic"], image["content_type"]) == ("site/a/box7/cam1/snapshot", "image/jpeg")


def test_box_latency_sensors_read_the_stats_message():
    made = configs(("cam1",))
    p99 = made["homeassistant/sensor/emim_box7/latency_p99/config"]
    assert p99["state_topic"] == "site/a/box7/stats" and p99["unit_of_measurement"] == "ms"
    assert render(p99["value_template"], {"latency_ms": {"p50": 40.5, "p99": 61.0}}) == "61.0"
    assert render(p99["value_template"], {"latency_ms": None}) == "None"
