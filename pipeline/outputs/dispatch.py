"""Where the inference loop's messages leave: the ZeroMQ publisher first, then its copies.

Every label, event and status message is published on its ZeroMQ topic, copied to the MQTT sink (when one is
configured) and shown to the recorder (labels and events, for its overlay and event clips). Live-view previews,
encoded in their own thread, go out on ``preview/<camera>/``. None of these ever blocks the loop: the publisher
drops on a full queue (counted), the MQTT sink and the recorder queue for their own threads.
"""

from __future__ import annotations

from typing import Any, Protocol

from emim_stream.pipeline.capture.ring import RingFrame
from emim_stream.pipeline.comms.messages import (
    EventMessage,
    LabelMessage,
    StatusMessage,
    event_topic,
    label_topic,
    status_topic,
)
from emim_stream.pipeline.comms.mqtt import MqttSink
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.outputs.preview import PreviewTap
from emim_stream.pipeline.outputs.record import Recorder

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
        publisher: the bound ZeroMQ publisher (labels/, status/, events/, preview/).
        mqtt: the started MQTT sink, or None.
        preview: the live-view preview encoder, or None.
        recorder: the annotated-recording writer, or None.
    """

    def __init__(
        self,
        publisher: Publisher,
        mqtt: MqttSink | None = None,
        preview: PreviewTap | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.publisher, self.mqtt, self.preview, self.recorder = publisher, mqtt, preview, recorder

    @property
    def taps(self) -> tuple[FrameTap, ...]:
        """The outputs that want every frame read (previews, recorder)."""
        return tuple(t for t in (self.preview, self.recorder) if t is not None)

    def next_msg_seq(self, topic: bytes) -> int:
        """The ``msg_seq`` the next message on ``topic`` gets."""
        return self.publisher.next_msg_seq(topic)

    def label(self, msg: LabelMessage) -> None:
        """Publish a label message (``msg_seq`` from :meth:`next_msg_seq`)."""
        self._send("label", label_topic(msg.camera_id), msg)
        if self.recorder is not None:
            self.recorder.on_label(msg)

    def event(self, msg: EventMessage) -> None:
        """Publish a closed action event."""
        self._send("event", event_topic(msg.camera_id), msg)
        if self.recorder is not None:
            self.recorder.on_event(msg)

    def status(self, msg: StatusMessage) -> None:
        """Publish a camera status (heartbeat) message."""
        self._send("status", status_topic(msg.camera_id), msg)

    def _send(self, kind: str, topic: bytes, msg: LabelMessage | EventMessage | StatusMessage) -> None:
        """One payload to ZeroMQ and, when configured, to the MQTT sink."""
        payload = msg.to_payload()
        self.publisher.send(topic, payload)
        if self.mqtt is not None:
            self.mqtt.send(kind, msg.camera_id, payload)

    def previews(self) -> None:
        """Publish the previews encoded since the last call (at most one per camera)."""
        if self.preview is not None:
            for topic, payload in self.preview.take():
                self.publisher.send(topic, payload)

    def stats(self, camera_id: str) -> dict[str, Any]:
        """The state of the outputs besides ZeroMQ, for ``camera_id``'s status messages: ``{"mqtt": ...,
        "record": ...}``, each present when that output is."""
        stats: dict[str, Any] = {}
        if self.mqtt is not None:
            stats["mqtt"] = self.mqtt.stats()
        if self.recorder is not None:
            stats["record"] = self.recorder.stats(camera_id)
        return stats
