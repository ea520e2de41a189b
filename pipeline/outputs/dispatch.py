"""Where the inference loop's messages leave: the ZeroMQ publisher first, then its copies.

Every label, event, status and stats message is published on its ZeroMQ topic and copied to the MQTT sink (when one
is configured). Besides, per camera, the MQTT sink gets the newest label as ``action`` when its top label changes
and with each status heartbeat; events go to the webhook sink, get a snapshot of their peak frame
(:mod:`emim_stream.pipeline.outputs.snapshot`: the MQTT ``snapshot`` topic, the file beside the event clip) and are
shown to the recorder (labels too, for its overlay and event clips). Live-view previews, encoded in their own
thread, go out on ``preview/<camera>/``. None of these ever blocks the loop: the publisher drops on a full queue
(counted), the sinks, the snapshot encoder and the recorder queue for their own threads.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from msgspec.structs import replace

from emim_stream.pipeline.capture.ring import RingFrame
from emim_stream.pipeline.comms.messages import (
    EventMessage,
    LabelMessage,
    StatsMessage,
    StatusMessage,
    event_topic,
    label_topic,
    stats_topic,
    status_topic,
)
from emim_stream.pipeline.comms.mqtt import MqttSink
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.comms.webhook import WebhookSink
from emim_stream.pipeline.outputs.preview import PreviewTap
from emim_stream.pipeline.outputs.record import Recorder
from emim_stream.pipeline.outputs.snapshot import Snapshots

__all__ = ["FrameTap", "Outputs"]


class FrameTap(Protocol):
    """Sees every frame read from a ring (:class:`~emim_stream.pipeline.outputs.preview.PreviewTap`,
    :class:`~emim_stream.pipeline.outputs.record.Recorder`).

    ``on_frame`` must be cheap and never block: it runs in the inference loop.
    """

    def on_frame(self, camera_id: str, frame: RingFrame) -> None: ...


class Outputs:
    """The loop's sink: one call per message, fanned out to every configured output.

    Messages get their ``msg_seq`` from :meth:`next_msg_seq` (the publisher's per-topic numbering), which the MQTT
    copy and the recorder see too.

    Args:
        publisher: the bound ZeroMQ publisher (labels/, status/, events/, preview/, stats/).
        mqtt: the started MQTT sink, or None.
        preview: the live-view preview encoder, or None.
        recorder: the annotated-recording writer, or None.
        webhook: the started webhook sink, or None.
        snapshots: the event snapshot encoder, or None (then events have no snapshot).
    """

    def __init__(
        self,
        publisher: Publisher,
        mqtt: MqttSink | None = None,
        preview: PreviewTap | None = None,
        recorder: Recorder | None = None,
        webhook: WebhookSink | None = None,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.publisher, self.mqtt, self.preview, self.recorder = publisher, mqtt, preview, recorder
        self.webhook, self.snapshots = webhook, snapshots
        self._action_top: dict[str, str] = {}  # camera -> top label last sent as its MQTT action
        self._action_due: set[str] = set()  # cameras whose action goes out with their next label (heartbeat)

    @property
    def taps(self) -> tuple[FrameTap, ...]:
        """The outputs that want every frame read (previews, recorder)."""
        return tuple(t for t in (self.preview, self.recorder) if t is not None)

    def next_msg_seq(self, topic: bytes) -> int:
        """The ``msg_seq`` the next message on ``topic`` gets."""
        return self.publisher.next_msg_seq(topic)

    def label(self, msg: LabelMessage) -> None:
        """Publish a label message (``msg_seq`` from :meth:`next_msg_seq`); the camera's MQTT action when due."""
        payload = self._send("label", label_topic(msg.camera_id), msg)
        top = msg.topk[0][0]
        if self.mqtt is not None and (self._action_top.get(msg.camera_id) != top or msg.camera_id in self._action_due):
            self.mqtt.send("action", msg.camera_id, payload)
            self._action_top[msg.camera_id] = top
            self._action_due.discard(msg.camera_id)
        if self.recorder is not None:
            self.recorder.on_label(msg)

    def keep_frame(self, camera_id: str, seq: int, image: np.ndarray, wanted: set[int]) -> None:
        """Offer the newest frame of a classified window for event snapshots (``wanted``: the peak frames)."""
        if self.snapshots is not None:
            self.snapshots.keep(camera_id, seq, image, wanted)

    def event(self, msg: EventMessage) -> EventMessage:
        """Publish an action event message with where its snapshot and clip are; returns it as published."""
        clip = snapshot = None
        if self.recorder is not None and self.recorder.cfg.event_clips:
            clip, snapshot = (str(path) for path in self.recorder.event_paths(msg))
        has_snapshot = self.snapshots is not None and self.snapshots.take(msg)
        msg = replace(
            msg, has_snapshot=has_snapshot, snapshot_path=snapshot if has_snapshot else None, clip_path=clip
        )
        payload = self._send("event", event_topic(msg.camera_id), msg)
        if self.webhook is not None:
            self.webhook.send(payload)
        if self.recorder is not None:
            self.recorder.on_event(msg)
        return msg

    def deliver_snapshot(self, event: EventMessage, jpeg: bytes) -> None:
        """A snapshot encoded (in the encoder's thread): to the MQTT ``snapshot`` topic and beside the event clip."""
        if self.mqtt is not None:
            self.mqtt.send("snapshot", event.camera_id, jpeg)
        if self.recorder is not None and self.recorder.cfg.event_clips:
            self.recorder.save_snapshot(event, jpeg)

    def status(self, msg: StatusMessage) -> None:
        """Publish a camera status (heartbeat) message; the camera's MQTT action goes out again with its next label."""
        self._send("status", status_topic(msg.camera_id), msg)
        self._action_due.add(msg.camera_id)

    def box_stats(self, msg: StatsMessage) -> None:
        """Publish the box's stats message."""
        payload = msg.to_payload()
        self.publisher.send(stats_topic(msg.box_id), payload)
        if self.mqtt is not None:
            self.mqtt.send("stats", None, payload)

    def _send(self, kind: str, topic: bytes, msg: LabelMessage | EventMessage | StatusMessage) -> dict[str, Any]:
        """One payload to ZeroMQ and, when configured, to the MQTT sink; returns the payload."""
        payload = msg.to_payload()
        self.publisher.send(topic, payload)
        if self.mqtt is not None:
            self.mqtt.send(kind, msg.camera_id, payload)
        return payload

    def previews(self) -> None:
        """Publish the previews encoded since the last call (at most one per camera)."""
        if self.preview is not None:
            for topic, payload in self.preview.take():
                self.publisher.send(topic, payload)

    def stats(self, camera_id: str | None = None) -> dict[str, Any]:
        """The state of the outputs besides ZeroMQ, for status messages of ``camera_id`` and stats messages (None):
        ``{"mqtt": ..., "webhook": ..., "snapshots": {"encoded", "dropped"}, "record": ...}`` (those configured;
        ``record``, the camera's recording, in status messages only; ``{}`` when none)."""
        sinks = (("mqtt", self.mqtt), ("webhook", self.webhook))
        out = {name: sink.stats() for name, sink in sinks if sink is not None}
        if self.snapshots is not None:
            out["snapshots"] = {"encoded": self.snapshots.encoded, "dropped": self.snapshots.dropped}
        if self.recorder is not None and camera_id is not None:
            out["record"] = self.recorder.stats(camera_id)
        return out
