"""Home Assistant MQTT discovery: the retained configs that make a box and its cameras appear in Home Assistant.

Home Assistant's MQTT integration reads entity configs published, retained, on
``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` and creates the entities with no YAML; an empty
retained message on the same topic removes the entity. The schema followed here is Home Assistant's documented one:
https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (topic format, ``unique_id``, ``device``,
``availability``) and the platform pages https://www.home-assistant.io/integrations/sensor.mqtt/,
https://www.home-assistant.io/integrations/binary_sensor.mqtt/, https://www.home-assistant.io/integrations/event.mqtt/
(``event_types``; a value template that renders ``{}`` fires nothing) and
https://www.home-assistant.io/integrations/image.mqtt/.

``node_id`` is ``emim_<box_id>``; one device per box (``emim_<box_id>``) with latency sensors read from the box's
``stats``, and one device per camera (``emim_<box_id>_<camera>``, ``via_device`` the box) with:

- ``sensor`` *action*: the camera's current top label (``action`` topic), with ``score`` and ``topk`` as attributes;
- ``event`` *action started*: fires on each event ``start``, its event type the label (``event_types``: the
  model's labels that can make events), with the event's ``id`` and ``score`` as attributes;
- ``binary_sensor`` *action in progress*: on from an event's ``start`` to its ``end``;
- ``image`` *snapshot*: the JPEG of the latest event's peak frame.

With no event types (events off) a camera has only its *action* sensor.

Every entity lists ``<prefix>/<box_id>/available`` as its availability topic (``online`` = available; ``offline`` and
``stopped`` = unavailable) and has a ``unique_id`` made of the box id, camera id and entity (stable across
restarts). :func:`announcement` gives the configs as an :class:`~emim_stream.pipeline.comms.mqtt.Announcement`, so
the sink also clears the configs of cameras removed from the config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.mqtt import Announcement, availability_topic, mqtt_topic
from emim_stream.pipeline.config import MqttConfig

__all__ = ["announcement", "discovery_configs", "node_id", "object_id"]

# Jinja templates Home Assistant renders on each message (value_json = the payload parsed as JSON)
_TOP_LABEL = "{{ value_json.topk[0].label }}"
_TOP_ATTRIBUTES = "{{ {'score': value_json.topk[0].score, 'topk': value_json.topk} | tojson }}"
_EVENT_FIRED = (
    "{% if value_json.phase == 'start' %}"
    "{{ {'event_type': value_json.label, 'id': value_json.id, 'score': value_json.peak_score} | tojson }}"
    "{% else %}{}{% endif %}"
)
_IN_PROGRESS = "{{ 'OFF' if value_json.phase == 'end' else 'ON' }}"
_EVENT_ATTRIBUTES = "{{ {'label': value_json.label, 'id': value_json.id} | tojson }}"
_AVAILABLE = "{{ 'online' if value == 'online' else 'offline' }}"


def object_id(text: str) -> str:
    """``text`` as a discovery id level: letters, digits, ``_`` and ``-`` (anything else becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def node_id(box_id: str) -> str:
    """The discovery node id of a box's entities (also its device's identifier): ``emim_<box_id>``."""
    return f"emim_{object_id(box_id)}"


def discovery_configs(
    cfg: MqttConfig,
    box_id: str,
    cameras: Sequence[str],
    event_types: Sequence[str],
    model: str,
    version: str,
) -> dict[str, dict[str, Any]]:
    """The discovery config of every entity: topic -> payload (see the module docstring).

    Args:
        cfg: the ``mqtt`` section (prefixes, QoS).
        box_id: this box's id in topics.
        cameras: the camera ids.
        event_types: the labels that can open events (the model's, less ``events.exclude``).
        model: the model's name, shown as the devices' model.
        version: emim-stream's version, shown as the devices' software version.

    Raises:
        ConfigError: two camera ids give the same id in discovery topics (``cam.1`` and ``cam_1``).
    """
    node = node_id(box_id)
    ids = [object_id(c) for c in cameras]
    clash = sorted({c for c, i in zip(cameras, ids, strict=True) if ids.count(i) > 1})
    if clash:
        raise ConfigError(f"mqtt.home_assistant: camera ids {clash} give the same Home Assistant id; rename one")
    box_device = {
        "identifiers": [node],
        "name": f"emim-stream {box_id}",
        "manufacturer": "emim-stream",
        "model": model,
        "sw_version": version,
    }
    common = {
        "availability": [{"topic": availability_topic(cfg, box_id), "value_template": _AVAILABLE}],
        "qos": cfg.qos,
    }
    configs: dict[str, dict[str, Any]] = {}

    def add(component: str, entity: str, device: dict[str, Any], **fields: Any) -> None:
        unique_id = f"{node}_{entity}"
        topic = f"{cfg.discovery_prefix}/{component}/{node}/{entity}/config"
        configs[topic] = {"unique_id": unique_id, **fields, "device": device, **common}

    stats = mqtt_topic(cfg, box_id, None, "stats")
    for p in ("p50", "p99"):
        add("sensor", f"latency_{p}", box_device, name=f"Latency {p}", state_topic=stats,
            value_template=f"{{{{ value_json.latency_ms.{p} if value_json.latency_ms else none }}}}",
            unit_of_measurement="ms", state_class="measurement", entity_category="diagnostic")  # fmt: skip
    for camera, cid in zip(cameras, ids, strict=True):
        device = {"identifiers": [f"{node}_{cid}"], "name": camera, "via_device": node, "manufacturer": "emim-stream",
                  "model": model}  # fmt: skip
        action, event, snapshot = (mqtt_topic(cfg, box_id, camera, k) for k in ("action", "event", "snapshot"))
        add("sensor", f"{cid}_action", device, name="Action", state_topic=action, value_template=_TOP_LABEL,
            json_attributes_topic=action, json_attributes_template=_TOP_ATTRIBUTES, icon="mdi:run")  # fmt: skip
        if not event_types:
            continue
        add("event", f"{cid}_action_started", device, name="Action started", state_topic=event,
            event_types=list(event_types), value_template=_EVENT_FIRED)  # fmt: skip
        add("binary_sensor", f"{cid}_action_in_progress", device, name="Action in progress", state_topic=event,
            value_template=_IN_PROGRESS, json_attributes_topic=event, json_attributes_template=_EVENT_ATTRIBUTES,
            device_class="motion")  # fmt: skip
        add("image", f"{cid}_snapshot", device, name="Snapshot", image_topic=snapshot, content_type="image/jpeg")
    return configs


def announcement(
    cfg: MqttConfig,
    box_id: str,
    cameras: Sequence[str],
    event_types: Sequence[str],
    model: str,
    version: str,
) -> Announcement:
    """The discovery configs as the MQTT sink's announcement: published retained on every connect, and the configs
    under this box's node id that are not among them (a removed camera's) cleared. Arguments as
    :func:`discovery_configs`."""
    configs = discovery_configs(cfg, box_id, cameras, event_types, model, version)
    return Announcement(
        topic_filter=f"{cfg.discovery_prefix}/+/{node_id(box_id)}/+/config",
        messages={topic: json.dumps(payload, separators=(",", ":")).encode() for topic, payload in configs.items()},
    )
