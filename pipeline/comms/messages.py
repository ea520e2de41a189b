"""The message contract between the pipeline and its subscribers: ``label``, ``status``, ``event``, ``preview`` and
``stats`` messages, each kind with its own schema version.

Every message is a ZeroMQ multipart ``[topic, payload]``. The topic is ``labels/<camera_id>/``,
``status/<camera_id>/``, ``events/<camera_id>/``, ``preview/<camera_id>/`` or ``stats/<box_id>/``: the trailing ``/``
keeps ``cam1`` from matching ``cam10`` under ZeroMQ's prefix filtering. The payload is one UTF-8 JSON object (no
NaN/Infinity). Clocks: ``*_mono_ns``
are CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``), comparable only between processes whose
``clock_domain`` (the kernel boot id) is equal; ``*_wall_ns`` are CLOCK_REALTIME nanoseconds since the Unix epoch
(``time.time_ns()``), for subscribers on other hosts. Counters are cumulative since the pipeline started.

Each kind is a ``msgspec.Struct`` tagged by ``kind``: :func:`parse_payload` decodes and checks any payload in one
``msgspec.convert`` call (types, int64 ranges, finite floats; errors name the field). The label is the one kind
nested on the wire (``timestamps``, ``latency``, ``topk`` objects); :class:`LabelMessage` is its flat form.

Fields common to every kind:

- ``schema`` int: the version of this message's kind (:data:`SCHEMA_VERSIONS`): 2 for ``label`` (schema 1 windows
  counted camera frames and had no ``span_ms``), 2 for ``event`` (schema 1 events were published only when they
  ended, without ``id`` and ``phase``), 1 for the others. A kind's version changes
  only when its fields change incompatibly; a new kind leaves the others alone. A reader must refuse versions it
  does not know and may skip unknown kinds.
- ``kind`` str: ``"label"``, ``"status"``, ``"event"``, ``"preview"`` or ``"stats"``.
- ``camera_id`` str (every kind but ``stats``): the camera (1-64 printable characters, no ``/``, no whitespace).
- ``msg_seq`` int: per-topic message number set by the publisher, 0, 1, 2, ...; a gap means messages were lost,
  a decrease means the publisher restarted.
- ``clock_domain`` str: the publisher host's boot id (or host name where there is none).

``label`` (topic ``labels/<camera_id>/``), one per classified clip window:

- ``window`` object: ``first_seq``, ``last_seq`` (int, the camera's frame numbers of the window's oldest and
  newest sampled frame: a 16x4 model on a 30 fps camera spans 60 frames), ``frames`` (int, T), ``stride`` (int,
  sampled frames between consecutive windows), ``span_ms`` (float, capture time of the newest sampled frame
  minus that of the oldest, CLOCK_MONOTONIC: the time the label covers).
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
- ``dropped_frames`` int: frames of this camera written to its ring that the pipeline never processed (ring
  overruns, torn reads); frames lost before the ring are the status message's ``frames_lost``.
- ``dropped_windows`` int: ready windows of this camera skipped because inference was behind.
- ``truth`` str, optional: the window's true class where the source knows it (the synthetic camera, a video
  file with a ``.truth`` sidecar: :mod:`emim_stream.pipeline.inference.truth`); absent otherwise, and readers must
  not require it.

``status`` (topic ``status/<camera_id>/``), a heartbeat about once a second:

- ``state`` str: the source state (``connecting``, ``live``, ``stalled``, ``reconnecting``, ``ended``).
- ``fps`` float: frames per second the camera delivers.
- ``staleness_ms`` float or null: publish time minus capture time of the camera's newest frame (null: no frame yet).
- ``latest_seq`` int: the camera's newest frame number (-1: none yet).
- ``reconnects``, ``frames_lost``, ``dropped_frames`` int: source reconnections, frames lost upstream of the ring,
  frames the pipeline never processed.
- ``source_width``, ``source_height`` int: native size of the source in pixels (0: unknown).
- ``heartbeat_mono_ns`` int: the camera process's last sign of life; ``publish_mono_ns``, ``publish_wall_ns`` int.
- ``config_hash`` str: hash of the resolved pipeline config.
- ``detail`` str: the last problem of the source in words (credentials redacted), empty when none.
- ``outputs`` object: the state of the box's other outputs, e.g. ``{"mqtt": {"state": "connected", "sent": 120,
  "dropped": 0, "reconnects": 1, "detail": ""}}`` (:class:`emim_stream.pipeline.comms.mqtt.MqttSink`); empty when
  there are none.

``event`` (topic ``events/<camera_id>/``, schema 2), the lifecycle of one action event
(:mod:`emim_stream.pipeline.inference.events`): ``start`` when it opens, ``update`` every ``events.update_s`` while
it stays open (when set), ``end`` when it closes. Every message of one event carries the same ``id``:

- ``id`` str: the event's id, unique across restarts and boxes (a random UUID, 32 hex digits).
- ``phase`` str: ``start``, ``update`` or ``end``.
- ``label`` str: the action.
- ``first_seq``, ``last_seq`` int: the oldest frame of the event's first window and the newest frame of its last
  window so far (at ``end``: its last).
- ``start_mono_ns``, ``start_wall_ns``, ``end_mono_ns``, ``end_wall_ns`` int: capture times of those two frames.
- ``peak_score``, ``mean_score`` float: highest and mean (smoothed) score of the label over the event's windows so far.
- ``peak_seq`` int: the newest frame of the window with the peak score (the frame of the snapshot).
- ``windows`` int: windows counted in the event so far.
- ``end_reason`` str or null: null until ``end``; then ``exit`` (the score fell below ``events.exit``), ``takeover``
  (another label opened an event), ``gap`` (frames were lost: the stream was interrupted) or ``stopped`` (the
  pipeline stopped).
- ``has_snapshot`` bool: a JPEG of the peak frame with the label drawn is published (MQTT
  ``<prefix>/<box_id>/<camera_id>/snapshot``, retained) and, with ``record.event_clips``, kept at ``snapshot_path``.
- ``snapshot_path``, ``clip_path`` str or null: where the recorder keeps the event's snapshot and clip (null: not
  recording event clips); the clip is written ``record.clip_post_s`` after the event's end.
- ``publish_mono_ns``, ``publish_wall_ns`` int.

``stats`` (topic ``stats/<box_id>/``), the box every ``publish.stats_s`` seconds:

- ``box_id`` str: the box (``mqtt.box_id``, default the host name).
- ``uptime_s`` float: seconds since the pipeline started; ``interval_s`` float: seconds the latency figures cover
  (since the previous stats message).
- ``engine`` object: the model and backend serving now (as a label's ``model``).
- ``cameras`` object: camera id -> ``state`` (source state), ``fps`` (frames per second the camera delivers),
  ``labels``, ``events`` (events started), ``dropped_frames``, ``dropped_windows`` (cumulative int) and ``latency_ms``
  (``count``, ``p50``, ``p90``, ``p99``, ``max`` of the total per-frame latency over the interval, ms; null when no
  window was classified in it).
- ``latency_ms`` object or null: the same over every camera.
- ``publish_dropped`` int: messages the ZeroMQ publisher dropped; ``outputs`` object: as in ``status``.
- ``publish_mono_ns``, ``publish_wall_ns`` int.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal, cast, get_args

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, field

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.validation import explain
from emim_stream.pipeline.errors import PipelineError

__all__ = [
    "LATENCY_CLOCK",
    "LATENCY_UNIT",
    "SCHEMA_VERSIONS",
    "CameraStats",
    "EventMessage",
    "LabelMessage",
    "Message",
    "MessageError",
    "ModelInfo",
    "Percentiles",
    "PreviewMessage",
    "StatsMessage",
    "StatusMessage",
    "WindowInfo",
    "event_topic",
    "json_schema",
    "label_topic",
    "latency_breakdown_ms",
    "local_clock_domain",
    "parse_payload",
    "stats_topic",
    "status_topic",
    "validate_camera_id",
]

SCHEMA_VERSIONS: Final[dict[str, int]] = {"label": 2, "status": 1, "event": 2, "preview": 1, "stats": 1}
"""The schema version of each message kind."""
LATENCY_UNIT: Final = "ms"
LATENCY_CLOCK: Final = "CLOCK_MONOTONIC"
MAX_CAMERA_ID_CHARS = 64

Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
MsgSeq = Annotated[int, Meta(ge=-1, le=2**63 - 1)]
"""-1: built here, not (yet) numbered by a publisher."""
Finite = Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
SourceStateName = Literal["connecting", "live", "stalled", "reconnecting", "ended"]
EventPhase = Literal["start", "update", "end"]
SOURCE_STATES: tuple[str, ...] = get_args(SourceStateName)
"""The values of a status message's ``state`` (those of :class:`emim_stream.pipeline.capture.sources.SourceState`)."""


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


def stats_topic(box_id: str) -> bytes:
    """ZeroMQ topic of the box's stats: ``b"stats/<box_id>/"``."""
    return f"stats/{validate_camera_id(box_id)}/".encode()


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


class WindowInfo(Struct, frozen=True):
    """The clip window a label covers: frame numbers of its oldest/newest sampled frame, T, the stride in sampled
    frames, and the time from its oldest to its newest frame in ms."""

    first_seq: Int64
    last_seq: Int64
    frames: Int64
    stride: Int64
    span_ms: Finite


class ModelInfo(Struct, frozen=True):
    """Identity of the model that made a label."""

    name: str
    backend: str
    precision: str
    device: str
    checkpoint_sha256: str = ""


class _Message(Struct, frozen=True, kw_only=True, tag_field="kind"):
    """What every kind carries besides its own fields; the kind is msgspec's tag, so one call decodes any kind."""

    msg_seq: MsgSeq = -1
    clock_domain: str = field(default_factory=local_clock_domain)

    def to_payload(self) -> dict[str, Any]:
        """The JSON-ready dict: ``schema``, ``kind``, ``camera_id`` (where the kind has one), ``msg_seq``,
        ``clock_domain``, then the kind's fields in their declared order."""
        body = msgspec.to_builtins(self, enc_hook=_number)
        head = {key: body.pop(key) for key in ("kind", "camera_id", "msg_seq", "clock_domain") if key in body}
        return {"schema": SCHEMA_VERSIONS[head["kind"]], **head, **body}

    def to_json(self) -> bytes:
        """The payload as compact UTF-8 JSON."""
        return _dumps(self.to_payload())


class _Score(Struct, frozen=True):
    label: str
    score: Finite


class _Timestamps(Struct, frozen=True):
    capture_mono_ns: Int64
    capture_wall_ns: Int64
    vmp_done_mono_ns: Int64
    infer_start_mono_ns: Int64
    infer_end_mono_ns: Int64
    publish_mono_ns: Int64
    publish_wall_ns: Int64


class _Latency(Struct, frozen=True):
    unit: Literal["ms"]
    clock: Literal["CLOCK_MONOTONIC"]
    stages: dict[str, Finite]


class _LabelPayload(_Message, frozen=True, tag="label"):
    """A label message as it is nested on the wire (:class:`LabelMessage` is the flat form code uses)."""

    camera_id: str
    window: WindowInfo
    topk: tuple[_Score, ...]
    model: ModelInfo
    timestamps: _Timestamps
    latency: _Latency
    dropped_frames: Int64
    dropped_windows: Int64
    truth: str | UnsetType | None = UNSET

    def message(self) -> LabelMessage:
        return LabelMessage(
            camera_id=self.camera_id,
            window=self.window,
            topk=tuple((s.label, s.score) for s in self.topk),
            model=self.model,
            **msgspec.structs.asdict(self.timestamps),
            latency_ms=self.latency.stages,
            dropped_frames=self.dropped_frames,
            dropped_windows=self.dropped_windows,
            msg_seq=self.msg_seq,
            clock_domain=self.clock_domain,
            truth=None if self.truth is UNSET else self.truth,
        )


class LabelMessage(Struct, frozen=True):
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
        """The JSON-ready dict (``truth`` only when known)."""
        return _LabelPayload(
            camera_id=self.camera_id,
            window=self.window,
            topk=tuple(_Score(label, score) for label, score in self.topk),
            model=self.model,
            timestamps=_Timestamps(**{name: getattr(self, name) for name in _Timestamps.__struct_fields__}),
            latency=_Latency(LATENCY_UNIT, LATENCY_CLOCK, dict(self.latency_ms)),
            dropped_frames=self.dropped_frames,
            dropped_windows=self.dropped_windows,
            msg_seq=self.msg_seq,
            clock_domain=self.clock_domain,
            truth=UNSET if self.truth is None else self.truth,
        ).to_payload()

    def to_json(self) -> bytes:
        """The payload as compact UTF-8 JSON."""
        return _dumps(self.to_payload())

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> LabelMessage:
        """Parse a label payload. Raises MessageError (wrong schema or kind, a missing or mistyped field)."""
        return cast(LabelMessage, _decode(payload, "label"))  # _decode checked the kind

    @classmethod
    def from_json(cls, data: bytes | str) -> LabelMessage:
        """Parse a label payload from JSON text. Raises MessageError."""
        return cls.from_payload(_loads(data))


class StatusMessage(_Message, frozen=True, tag="status"):
    """A camera heartbeat (``kind: "status"``); fields as in the module docstring."""

    camera_id: str
    state: SourceStateName
    fps: Finite
    staleness_ms: Finite | None
    latest_seq: Int64
    reconnects: Int64
    frames_lost: Int64
    dropped_frames: Int64
    source_width: Int64
    source_height: Int64
    heartbeat_mono_ns: Int64
    publish_mono_ns: Int64
    publish_wall_ns: Int64
    config_hash: str
    detail: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> StatusMessage:
        """Parse a status payload. Raises MessageError (wrong schema or kind, a missing or mistyped field)."""
        return cast(StatusMessage, _decode(payload, "status"))

    @classmethod
    def from_json(cls, data: bytes | str) -> StatusMessage:
        """Parse a status payload from JSON text. Raises MessageError."""
        return cls.from_payload(_loads(data))


class EventMessage(_Message, frozen=True, tag="event"):
    """One phase (start, update, end) of an action event of one camera (``kind: "event"``, schema 2); fields as in
    the module docstring."""

    camera_id: str
    id: str
    phase: EventPhase
    label: str
    first_seq: Int64
    last_seq: Int64
    start_mono_ns: Int64
    start_wall_ns: Int64
    end_mono_ns: Int64
    end_wall_ns: Int64
    peak_score: Finite
    mean_score: Finite
    peak_seq: Int64
    windows: Int64
    end_reason: str | None = None
    has_snapshot: bool = False
    snapshot_path: str | None = None
    clip_path: str | None = None
    publish_mono_ns: Int64 = 0
    publish_wall_ns: Int64 = 0

    @property
    def duration_s(self) -> float:
        """End minus start capture time in seconds (CLOCK_MONOTONIC): so far, until ``end``."""
        return (self.end_mono_ns - self.start_mono_ns) / 1e9

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> EventMessage:
        """Parse an event payload. Raises MessageError (wrong schema or kind, a missing or mistyped field)."""
        return cast(EventMessage, _decode(payload, "event"))

    @classmethod
    def from_json(cls, data: bytes | str) -> EventMessage:
        """Parse an event payload from JSON text. Raises MessageError."""
        return cls.from_payload(_loads(data))


class PreviewMessage(_Message, frozen=True, tag="preview"):
    """A JPEG of the frame the model sees, for the live view (``kind: "preview"``,
    :mod:`emim_stream.pipeline.outputs.preview`).

    On the wire the JPEG is base64 text in ``data``, after ``format``.
    """

    camera_id: str
    seq: Int64
    capture_mono_ns: Int64
    capture_wall_ns: Int64
    width: Int64
    height: Int64
    jpeg: bytes = field(name="data")
    format: Literal["jpeg"] = "jpeg"

    def to_payload(self) -> dict[str, Any]:
        """The JSON-ready dict (the JPEG base64-encoded in ``data``, the last key)."""
        payload = super().to_payload()
        payload["data"] = payload.pop("data")
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PreviewMessage:
        """Parse a preview payload. Raises MessageError (also for ``data`` that is not base64)."""
        return cast(PreviewMessage, _decode(payload, "preview"))


class Percentiles(Struct, frozen=True):
    """Percentiles of a latency series in ms (numpy's linear method) and the samples they cover."""

    count: Int64
    p50: Finite
    p90: Finite
    p99: Finite
    max: Finite


class CameraStats(Struct, frozen=True):
    """One camera in a stats message."""

    state: SourceStateName
    fps: Finite
    labels: Int64
    events: Int64
    dropped_frames: Int64
    dropped_windows: Int64
    latency_ms: Percentiles | None


class StatsMessage(_Message, frozen=True, tag="stats"):
    """The box's periodic stats (``kind: "stats"``); fields as in the module docstring."""

    box_id: str
    uptime_s: Finite
    interval_s: Finite
    engine: ModelInfo
    cameras: dict[str, CameraStats]
    latency_ms: Percentiles | None
    publish_dropped: Int64
    outputs: dict[str, Any]
    publish_mono_ns: Int64
    publish_wall_ns: Int64

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> StatsMessage:
        """Parse a stats payload. Raises MessageError (wrong schema or kind, a missing or mistyped field)."""
        return cast(StatsMessage, _decode(payload, "stats"))


Message = LabelMessage | StatusMessage | EventMessage | PreviewMessage | StatsMessage
_Wire = _LabelPayload | StatusMessage | EventMessage | PreviewMessage | StatsMessage


def parse_payload(payload: Mapping[str, Any]) -> Message:
    """Parse a payload of any kind (msgspec dispatches on ``kind``). Raises MessageError."""
    return _decode(payload)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a payload of any kind (``msgspec.json.schema`` of the wire form, a union discriminated
    by ``kind``), each kind with the ``schema`` version field that ``to_payload`` puts first."""
    schema = msgspec.json.schema(_Wire)
    for tag, ref in schema["discriminator"]["mapping"].items():
        version = {"type": "integer", "const": SCHEMA_VERSIONS[tag], "description": "version of this message's kind"}
        kind = schema["$defs"][ref.rpartition("/")[2]]
        kind["properties"] = {"schema": version, **kind["properties"]}
        kind["required"] = ["schema", *kind["required"]]
    return schema


def _decode(payload: Any, expected: str | None = None) -> Message:
    """One msgspec conversion of a payload of kind ``expected`` (or any kind) at that kind's schema version."""
    if not isinstance(payload, Mapping):
        raise MessageError(f"a message payload must be a JSON object, got {type(payload).__name__}")
    kind = payload.get("kind")
    if expected is None and kind not in SCHEMA_VERSIONS:
        raise MessageError(f"message kind {kind!r} is unknown; expected one of {sorted(SCHEMA_VERSIONS)}")
    if expected is not None and kind != expected:
        raise MessageError(f"expected a {expected!r} message, got kind {kind!r}")
    version = SCHEMA_VERSIONS[str(kind)]
    if payload.get("schema") != version:
        raise MessageError(
            f"{kind} message has schema {payload.get('schema')!r}; this emim-stream reads schema {version} (run "
            "matching versions of the publisher and the subscriber)"
        )
    try:
        msg: _Wire = msgspec.convert(payload, _Wire)
    except msgspec.ValidationError as err:
        path, rule = explain(err, payload, _Wire)
        raise MessageError(f"{kind} message: field '{path}' {rule}") from None
    return msg.message() if isinstance(msg, _LabelPayload) else msg


def _number(value: Any) -> Any:
    """A numpy scalar (a score taken straight from an array) as the Python number it holds."""
    if hasattr(value, "item"):
        return value.item()
    raise NotImplementedError(f"a message field holds a {type(value).__name__}")


def _dumps(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise MessageError("message payload is JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"message payload is not UTF-8 JSON: {err}") from err
