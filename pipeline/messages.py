"""The message contract between the pipeline and its subscribers (schema 1 of every kind).

Every message is a ZeroMQ multipart ``[topic, payload]``. The topic is ``labels/<camera_id>/``,
``status/<camera_id>/`` or ``events/<camera_id>/``: the trailing ``/`` keeps ``cam1`` from matching ``cam10``
under ZeroMQ's prefix filtering. The payload is one UTF-8 JSON object (no NaN/Infinity). Clocks: ``*_mono_ns``
are CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``), comparable only between processes whose
``clock_domain`` (the kernel boot id) is equal; ``*_wall_ns`` are CLOCK_REALTIME nanoseconds since the Unix epoch
(``time.time_ns()``), for subscribers on other hosts. Counters are cumulative since the pipeline started.

Fields common to every kind:

- ``schema`` int: the version of this message's kind; 1 for ``label``, ``status`` and ``event``. A kind's version
  changes only when its fields change incompatibly; a new kind (``event`` was added after the first release of
  schema 1) leaves the others alone. A reader must refuse versions it does not know and may skip unknown kinds.
- ``kind`` str: ``"label"``, ``"status"``, ``"event"`` or ``"preview"``.
- ``camera_id`` str: the camera (1-64 printable characters, no ``/``, no whitespace).
- ``msg_seq`` int: per-topic message number set by the publisher, 0, 1, 2, ...; a gap means messages were lost,
  a decrease means the publisher restarted.
- ``clock_domain`` str: the publisher host's boot id (or host name where there is none).

``label`` (topic ``labels/<camera_id>/``), one per classified clip window:

- ``window`` object: ``first_seq``, ``last_seq`` (int, frame sequence numbers of the oldest and newest frame),
  ``frames`` (int, T), ``stride`` (int, frames between consecutive windows).
- ``topk`` list of ``{"label": str, "score": float}``, best first; scores are probabilities in [0, 1].
- ``model`` object: ``name`` (the architecture's registry name, e.g. ``emim_xs``), ``backend`` (``torch``,
  ``onnxruntime``, ``tensorrt``), ``precision`` (``fp32``, ``fp16``, ...), ``device``, ``checkpoint_sha256`` (str,
  may be empty; it tells weights of one architecture apart).
- ``timestamps`` object (int ns): ``capture_mono_ns``, ``capture_wall_ns`` (capture of the window's newest frame),
  ``vmp_done_mono_ns`` (its motion prompt ready), ``infer_start_mono_ns``, ``infer_end_mono_ns`` (the engine call
  that classified the window), ``publish_mono_ns``, ``publish_wall_ns`` (message built for sending).
- ``latency`` object: ``unit`` = ``"ms"``, ``clock`` = ``"CLOCK_MONOTONIC"``, ``stages`` = {stage: float ms}; the
  stages made by :func:`latency_breakdown_ms` are ``capture_to_ring`` (capture -> written to the shared-memory
  ring: resize and copy in the camera process), ``queue`` (in the ring until the inference process read it),
  ``vmp`` (read -> prompt ready), ``wait`` (prompt ready -> inference start: waiting for the window to complete
  and for the engine), ``infer``, ``publish`` (inference end -> publish) and ``total`` (capture -> publish, the
  per-frame latency of the window).
- ``dropped_frames`` int: frames of this camera the pipeline never processed (ring overruns, torn reads, gaps).
- ``dropped_windows`` int: ready windows of this camera skipped because inference was behind.
- ``truth`` str, optional: the window's true class where the source knows it (the synthetic camera, a video
  file with a ``.truth`` sidecar: :mod:`pipeline.truth`); absent otherwise, and readers must not require it.

``status`` (topic ``status/<camera_id>/``), a heartbeat about once a second:

- ``state`` str: the source state (``connecting``, ``live``, ``stalled``, ``reconnecting``, ``ended``).
- ``fps`` float: frames per second the camera delivers.
- ``staleness_ms`` float or null: publish time minus capture time of the camera's newest frame (null: no frame yet).
- ``latest_seq`` int: newest frame sequence number (-1: none yet).
- ``reconnects``, ``frames_lost``, ``dropped_frames`` int: source reconnections, frames lost upstream of the ring,
  frames the pipeline never processed.
- ``source_width``, ``source_height`` int: native size of the source in pixels (0: unknown).
- ``heartbeat_mono_ns`` int: the camera process's last sign of life; ``publish_mono_ns``, ``publish_wall_ns`` int.
- ``config_hash`` str: hash of the resolved pipeline config.
- ``detail`` str: the last problem of the source in words (credentials redacted), empty when none.
- ``outputs`` object: the state of the box's other outputs, e.g. ``{"mqtt": {"state": "connected", "sent": 120,
  "dropped": 0, "reconnects": 1, "detail": ""}}`` (:class:`pipeline.mqtt.MqttSink`); empty when there are none.

``event`` (topic ``events/<camera_id>/``), one per action event when it closes (:mod:`pipeline.events`):

- ``label`` str: the action.
- ``first_seq``, ``last_seq`` int: the oldest frame of the event's first window and the newest frame of its last.
- ``start_mono_ns``, ``start_wall_ns``, ``end_mono_ns``, ``end_wall_ns`` int: capture times of those two frames.
- ``peak_score``, ``mean_score`` float: highest and mean (smoothed) score of the label over the event's windows.
- ``windows`` int: windows counted in the event.
- ``end_reason`` str: ``exit`` (the score fell below ``events.exit``), ``takeover`` (another label opened an
  event), ``gap`` (frames were lost: the stream was interrupted) or ``stopped`` (the pipeline stopped).
- ``publish_mono_ns``, ``publish_wall_ns`` int.
"""

from __future__ import annotations

import base64
import json
import math
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from pipeline.errors import PipelineError

__all__ = [
    "LATENCY_CLOCK",
    "LATENCY_UNIT",
    "SCHEMA_VERSION",
    "EventMessage",
    "LabelMessage",
    "MessageError",
    "ModelInfo",
    "PreviewMessage",
    "StatusMessage",
    "WindowInfo",
    "event_topic",
    "label_topic",
    "latency_breakdown_ms",
    "local_clock_domain",
    "parse_payload",
    "status_topic",
    "validate_camera_id",
]

SCHEMA_VERSION = 1
LATENCY_UNIT = "ms"
LATENCY_CLOCK = "CLOCK_MONOTONIC"
MAX_CAMERA_ID_CHARS = 64


class MessageError(PipelineError):
    """A payload does not follow the message schema (wrong version, missing field, wrong type)."""


def validate_camera_id(camera_id: str) -> str:
    """Return ``camera_id`` if it can name a topic; raise ConfigError naming the rule otherwise."""
    if not isinstance(camera_id, str) or not camera_id:
        rule = "it must be a non-empty string"
    elif len(camera_id) > MAX_CAMERA_ID_CHARS:
        rule = f"it must be at most {MAX_CAMERA_ID_CHARS} characters"
    elif "/" in camera_id:
        rule = "'/' separates topic levels and cannot appear in it"
    elif not camera_id.isprintable() or any(ch.isspace() for ch in camera_id):
        rule = "it must be printable, without whitespace"
    else:
        return camera_id
    raise ConfigError(f"camera id {camera_id!r} is invalid: {rule}")


def label_topic(camera_id: str) -> bytes:
    """ZeroMQ topic of a camera's labels: ``b"labels/<camera_id>/"``."""
    return f"labels/{validate_camera_id(camera_id)}/".encode()


def status_topic(camera_id: str) -> bytes:
    """ZeroMQ topic of a camera's status heartbeats: ``b"status/<camera_id>/"``."""
    return f"status/{validate_camera_id(camera_id)}/".encode()


def event_topic(camera_id: str) -> bytes:
    """ZeroMQ topic of a camera's action events: ``b"events/<camera_id>/"``."""
    return f"events/{validate_camera_id(camera_id)}/".encode()


@cache
def local_clock_domain() -> str:
    """This host's CLOCK_MONOTONIC domain: the kernel boot id, else the host name."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


def latency_breakdown_ms(
    capture_mono_ns: int,
    ring_mono_ns: int,
    read_mono_ns: int,
    vmp_done_mono_ns: int,
    infer_start_mono_ns: int,
    infer_end_mono_ns: int,
    publish_mono_ns: int,
) -> dict[str, float]:
    """Stage latencies in ms from CLOCK_MONOTONIC stamps of one window's newest frame.

    Returns:
        ``{"capture_to_ring", "queue", "vmp", "wait", "infer", "publish", "total"}`` (see the module
        docstring); the stages add up to ``total``.
    """
    stamps = (capture_mono_ns, ring_mono_ns, read_mono_ns, vmp_done_mono_ns, infer_start_mono_ns,
              infer_end_mono_ns, publish_mono_ns)
    names = ("capture_to_ring", "queue", "vmp", "wait", "infer", "publish")
    stages = {name: (b - a) / 1e6 for name, a, b in zip(names, stamps, stamps[1:], strict=False)}
    stages["total"] = (publish_mono_ns - capture_mono_ns) / 1e6
    return stages


@dataclass(frozen=True, slots=True)
class WindowInfo:
    """The clip window a label covers: frame seqs of its oldest/newest frame, T, and the stride in frames."""

    first_seq: int
    last_seq: int
    frames: int
    stride: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Identity of the model that made a label."""

    name: str
    backend: str
    precision: str
    device: str
    checkpoint_sha256: str = ""


@dataclass(frozen=True, slots=True)
class LabelMessage:
    """One classified window of one camera (``kind: "label"``); fields as in the module docstring.

    ``topk``: ((label, score), ...) best first. ``latency_ms``: stage -> ms on CLOCK_MONOTONIC. ``msg_seq`` is
    -1 until the publisher numbers the message.
    """

    camera_id: str
    window: WindowInfo
    topk: tuple[tuple[str, float], ...]
    model: ModelInfo
    capture_mono_ns: int
    capture_wall_ns: int
    vmp_done_mono_ns: int
    infer_start_mono_ns: int
    infer_end_mono_ns: int
    publish_mono_ns: int
    publish_wall_ns: int
    latency_ms: Mapping[str, float]
    dropped_frames: int = 0
    dropped_windows: int = 0
    msg_seq: int = -1
    clock_domain: str = field(default_factory=local_clock_domain)
    truth: str | None = None

    def to_payload(self) -> dict[str, Any]:
        """The JSON-ready dict of schema 1."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": "label",
            "camera_id": self.camera_id,
            "msg_seq": self.msg_seq,
            "clock_domain": self.clock_domain,
            "window": {
                "first_seq": self.window.first_seq,
                "last_seq": self.window.last_seq,
                "frames": self.window.frames,
                "stride": self.window.stride,
            },
            "topk": [{"label": label, "score": float(score)} for label, score in self.topk],
            "model": {
                "name": self.model.name,
                "backend": self.model.backend,
                "precision": self.model.precision,
                "device": self.model.device,
                "checkpoint_sha256": self.model.checkpoint_sha256,
            },
            "timestamps": {
                "capture_mono_ns": self.capture_mono_ns,
                "capture_wall_ns": self.capture_wall_ns,
                "vmp_done_mono_ns": self.vmp_done_mono_ns,
                "infer_start_mono_ns": self.infer_start_mono_ns,
                "infer_end_mono_ns": self.infer_end_mono_ns,
                "publish_mono_ns": self.publish_mono_ns,
                "publish_wall_ns": self.publish_wall_ns,
            },
            "latency": {
                "unit": LATENCY_UNIT,
                "clock": LATENCY_CLOCK,
                "stages": {stage: float(ms) for stage, ms in self.latency_ms.items()},
            },
            "dropped_frames": self.dropped_frames,
            "dropped_windows": self.dropped_windows,
            **({"truth": self.truth} if self.truth is not None else {}),
        }

    def to_json(self) -> bytes:
        """The payload as compact UTF-8 JSON."""
        return _dumps(self.to_payload())

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> LabelMessage:
        """Parse a schema-1 label payload.

        Raises:
            MessageError: wrong schema or kind, a missing field or a field of the wrong type.
        """
        p = _Fields(payload, "label")
        window = _Fields(p.mapping("window"), "label", "window.")
        model = _Fields(p.mapping("model"), "label", "model.")
        stamps = _Fields(p.mapping("timestamps"), "label", "timestamps.")
        latency = _Fields(p.mapping("latency"), "label", "latency.")
        if latency.text("unit") != LATENCY_UNIT or latency.text("clock") != LATENCY_CLOCK:
            raise MessageError(
                f"label message: latency must be in {LATENCY_UNIT!r} on {LATENCY_CLOCK!r}, got "
                f"{latency.text('unit')!r} on {latency.text('clock')!r}"
            )
        stages = _Fields(latency.mapping("stages"), "label", "latency.stages.")
        topk = []
        for i, entry in enumerate(p.array("topk")):
            item = _Fields(entry, "label", f"topk[{i}].")
            topk.append((item.text("label"), item.number("score")))
        return cls(
            camera_id=p.text("camera_id"),
            window=WindowInfo(
                first_seq=window.integer("first_seq"),
                last_seq=window.integer("last_seq"),
                frames=window.integer("frames"),
                stride=window.integer("stride"),
            ),
            topk=tuple(topk),
            model=ModelInfo(
                model.text("name"),
                model.text("backend"),
                model.text("precision"),
                model.text("device"),
                model.text("checkpoint_sha256"),
            ),
            capture_mono_ns=stamps.integer("capture_mono_ns"),
            capture_wall_ns=stamps.integer("capture_wall_ns"),
            vmp_done_mono_ns=stamps.integer("vmp_done_mono_ns"),
            infer_start_mono_ns=stamps.integer("infer_start_mono_ns"),
            infer_end_mono_ns=stamps.integer("infer_end_mono_ns"),
            publish_mono_ns=stamps.integer("publish_mono_ns"),
            publish_wall_ns=stamps.integer("publish_wall_ns"),
            latency_ms={stage: stages.number(stage) for stage in stages},
            dropped_frames=p.integer("dropped_frames"),
            dropped_windows=p.integer("dropped_windows"),
            msg_seq=p.integer("msg_seq"),
            clock_domain=p.text("clock_domain"),
            truth=p.optional_text("truth"),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> LabelMessage:
        """Parse a label payload from JSON text. Raises MessageError."""
        return cls.from_payload(_loads(data))


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A camera heartbeat (``kind: "status"``); fields as in the module docstring."""

    camera_id: str
    state: str
    fps: float
    staleness_ms: float | None
    latest_seq: int
    reconnects: int
    frames_lost: int
    dropped_frames: int
    source_width: int
    source_height: int
    heartbeat_mono_ns: int
    publish_mono_ns: int
    publish_wall_ns: int
    config_hash: str
    detail: str = ""
    outputs: Mapping[str, Any] = field(default_factory=dict)
    msg_seq: int = -1
    clock_domain: str = field(default_factory=local_clock_domain)

    def to_payload(self) -> dict[str, Any]:
        """The JSON-ready dict of schema 1."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": "status",
            "camera_id": self.camera_id,
            "msg_seq": self.msg_seq,
            "clock_domain": self.clock_domain,
            "state": self.state,
            "fps": float(self.fps),
            "staleness_ms": None if self.staleness_ms is None else float(self.staleness_ms),
            "latest_seq": self.latest_seq,
            "reconnects": self.reconnects,
            "frames_lost": self.frames_lost,
            "dropped_frames": self.dropped_frames,
            "source_width": self.source_width,
            "source_height": self.source_height,
            "heartbeat_mono_ns": self.heartbeat_mono_ns,
            "publish_mono_ns": self.publish_mono_ns,
            "publish_wall_ns": self.publish_wall_ns,
            "config_hash": self.config_hash,
            "detail": self.detail,
            "outputs": dict(self.outputs),
        }

    def to_json(self) -> bytes:
        """The payload as compact UTF-8 JSON."""
        return _dumps(self.to_payload())

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> StatusMessage:
        """Parse a schema-1 status payload.

        Raises:
            MessageError: wrong schema or kind, a missing field or a field of the wrong type.
        """
        p = _Fields(payload, "status")
        return cls(
            camera_id=p.text("camera_id"),
            state=p.choice("state", SOURCE_STATES),
            fps=p.number("fps"),
            staleness_ms=p.number("staleness_ms", nullable=True),
            latest_seq=p.integer("latest_seq"),
            reconnects=p.integer("reconnects"),
            frames_lost=p.integer("frames_lost"),
            dropped_frames=p.integer("dropped_frames"),
            source_width=p.integer("source_width"),
            source_height=p.integer("source_height"),
            heartbeat_mono_ns=p.integer("heartbeat_mono_ns"),
            publish_mono_ns=p.integer("publish_mono_ns"),
            publish_wall_ns=p.integer("publish_wall_ns"),
            config_hash=p.text("config_hash"),
            detail=str(payload.get("detail", "")),
            outputs=_optional_mapping(payload, "outputs"),
            msg_seq=p.integer("msg_seq"),
            clock_domain=p.text("clock_domain"),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> StatusMessage:
        """Parse a status payload from JSON text. Raises MessageError."""
        return cls.from_payload(_loads(data))


@dataclass(frozen=True, slots=True)
class EventMessage:
    """A closed action event of one camera (``kind: "event"``); fields as in the module docstring."""

    camera_id: str
    label: str
    first_seq: int
    last_seq: int
    start_mono_ns: int
    start_wall_ns: int
    end_mono_ns: int
    end_wall_ns: int
    peak_score: float
    mean_score: float
    windows: int
    end_reason: str
    publish_mono_ns: int = 0
    publish_wall_ns: int = 0
    msg_seq: int = -1
    clock_domain: str = field(default_factory=local_clock_domain)

    @property
    def duration_s(self) -> float:
        """End minus start capture time in seconds (CLOCK_MONOTONIC)."""
        return (self.end_mono_ns - self.start_mono_ns) / 1e9

    def to_payload(self) -> dict[str, Any]:
        """The JSON-ready dict of schema 1."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": "event",
            "camera_id": self.camera_id,
            "msg_seq": self.msg_seq,
            "clock_domain": self.clock_domain,
            "label": self.label,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "start_mono_ns": self.start_mono_ns,
            "start_wall_ns": self.start_wall_ns,
            "end_mono_ns": self.end_mono_ns,
            "end_wall_ns": self.end_wall_ns,
            "peak_score": float(self.peak_score),
            "mean_score": float(self.mean_score),
            "windows": self.windows,
            "end_reason": self.end_reason,
            "publish_mono_ns": self.publish_mono_ns,
            "publish_wall_ns": self.publish_wall_ns,
        }

    def to_json(self) -> bytes:
        """The payload as compact UTF-8 JSON."""
        return _dumps(self.to_payload())

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> EventMessage:
        """Parse a schema-1 event payload.

        Raises:
            MessageError: wrong schema or kind, a missing field or a field of the wrong type.
        """
        p = _Fields(payload, "event")
        return cls(
            camera_id=p.text("camera_id"),
            label=p.text("label"),
            first_seq=p.integer("first_seq"),
            last_seq=p.integer("last_seq"),
            start_mono_ns=p.integer("start_mono_ns"),
            start_wall_ns=p.integer("start_wall_ns"),
            end_mono_ns=p.integer("end_mono_ns"),
            end_wall_ns=p.integer("end_wall_ns"),
            peak_score=p.number("peak_score"),
            mean_score=p.number("mean_score"),
            windows=p.integer("windows"),
            end_reason=p.text("end_reason"),
            publish_mono_ns=p.integer("publish_mono_ns"),
            publish_wall_ns=p.integer("publish_wall_ns"),
            msg_seq=p.integer("msg_seq"),
            clock_domain=p.text("clock_domain"),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> EventMessage:
        """Parse an event payload from JSON text. Raises MessageError."""
        return cls.from_payload(_loads(data))


@dataclass(frozen=True, slots=True)
class PreviewMessage:
    """A JPEG of the frame the model sees, for the live view (``kind: "preview"``, :mod:`pipeline.preview`)."""

    camera_id: str
    seq: int
    capture_mono_ns: int
    capture_wall_ns: int
    width: int
    height: int
    jpeg: bytes
    msg_seq: int = -1
    clock_domain: str = field(default_factory=local_clock_domain)

    def to_payload(self) -> dict[str, Any]:
        """The JSON-ready dict of schema 1 (the JPEG base64-encoded in ``data``)."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": "preview",
            "camera_id": self.camera_id,
            "msg_seq": self.msg_seq,
            "clock_domain": self.clock_domain,
            "seq": self.seq,
            "capture_mono_ns": self.capture_mono_ns,
            "capture_wall_ns": self.capture_wall_ns,
            "width": self.width,
            "height": self.height,
            "format": "jpeg",
            "data": base64.b64encode(self.jpeg).decode("ascii"),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PreviewMessage:
        """Parse a schema-1 preview payload.

        Raises:
            MessageError: wrong schema or kind, a missing field, a field of the wrong type or data that is not base64.
        """
        p = _Fields(payload, "preview")
        p.choice("format", ("jpeg",))
        try:
            jpeg = base64.b64decode(p.text("data"), validate=True)
        except ValueError as err:
            raise MessageError(f"preview message: field 'data' is not base64: {err}") from None
        return cls(
            camera_id=p.text("camera_id"),
            seq=p.integer("seq"),
            capture_mono_ns=p.integer("capture_mono_ns"),
            capture_wall_ns=p.integer("capture_wall_ns"),
            width=p.integer("width"),
            height=p.integer("height"),
            jpeg=jpeg,
            msg_seq=p.integer("msg_seq"),
            clock_domain=p.text("clock_domain"),
        )


Message = LabelMessage | StatusMessage | EventMessage | PreviewMessage
_KINDS: dict[str, type[Message]] = {
    "label": LabelMessage,
    "status": StatusMessage,
    "event": EventMessage,
    "preview": PreviewMessage,
}


SOURCE_STATES = ("connecting", "live", "stalled", "reconnecting", "ended")
"""The values of a status message's ``state`` (those of :class:`pipeline.sources.SourceState`)."""
_INT64_MAX = 2**63 - 1


def parse_payload(payload: Mapping[str, Any]) -> Message:
    """Parse a payload of either kind (dispatch on ``kind``). Raises MessageError."""
    kind = payload.get("kind") if isinstance(payload, Mapping) else None
    if kind not in _KINDS:
        raise MessageError(f"message kind {kind!r} is unknown; expected one of {sorted(_KINDS)}")
    return _KINDS[kind].from_payload(payload)


def _optional_mapping(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key, {})
    if not isinstance(value, Mapping):
        raise MessageError(f"field '{key}' must be an object, got {value!r}")
    return dict(value)


def _dumps(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise MessageError("message payload is JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"message payload is not UTF-8 JSON: {err}") from err


class _Fields:
    """Typed access to one JSON object of a payload; every failure is a MessageError naming the field."""

    def __init__(self, obj: Any, kind: str, prefix: str = "") -> None:
        self._kind = kind
        self._prefix = prefix
        if not isinstance(obj, Mapping):
            raise MessageError(f"{kind} message: {prefix.rstrip('.') or 'payload'} must be a JSON object")
        self._obj = obj
        if not prefix:
            schema = obj.get("schema")
            if schema != SCHEMA_VERSION:
                raise MessageError(
                    f"{kind} message has schema {schema!r}; this emim-stream reads schema {SCHEMA_VERSION} "
                    "(run matching versions of the publisher and the subscriber)"
                )
            if obj.get("kind") != kind:
                raise MessageError(f"expected a {kind!r} message, got kind {obj.get('kind')!r}")
            msg_seq = obj.get("msg_seq", -1)  # -1: built here, not (yet) sent
            if not isinstance(msg_seq, int) or isinstance(msg_seq, bool) or not -1 <= msg_seq <= _INT64_MAX:
                raise MessageError(f"{kind} message: field 'msg_seq' must be an integer in -1..2^63-1, got {msg_seq!r}")

    def _get(self, key: str, types: tuple[type, ...], what: str, nullable: bool = False) -> Any:
        if key not in self._obj:
            raise MessageError(f"{self._kind} message: field '{self._prefix}{key}' is missing")
        value = self._obj[key]
        if value is None and nullable:
            return None
        if not isinstance(value, types) or isinstance(value, bool):
            raise MessageError(f"{self._kind} message: field '{self._prefix}{key}' must be {what}, got {value!r}")
        return value

    def integer(self, key: str) -> int:
        value = self._get(key, (int,), "an integer")
        if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
            raise MessageError(f"{self._kind} message: field '{self._prefix}{key}' is out of the int64 range")
        return value

    def number(self, key: str, nullable: bool = False) -> float | None:
        value = self._get(key, (int, float), "a number", nullable)
        if value is None:
            return None
        if not math.isfinite(value):
            raise MessageError(f"{self._kind} message: field '{self._prefix}{key}' must be finite, got {value!r}")
        return float(value)

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in allowed:
            raise MessageError(f"{self._kind} message: field '{self._prefix}{key}' must be one of {list(allowed)}")
        return value

    def text(self, key: str) -> str:
        return self._get(key, (str,), "a string")

    def optional_text(self, key: str) -> str | None:
        return self._get(key, (str,), "a string", nullable=True) if key in self._obj else None

    def mapping(self, key: str) -> Mapping[str, Any]:
        return self._get(key, (Mapping,), "an object")

    def array(self, key: str) -> list[Any]:
        return self._get(key, (list,), "a list")

    def __iter__(self) -> Iterator[str]:
        return iter(self._obj)
