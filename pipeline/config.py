"""Pipeline configuration: nested frozen dataclasses, loaded from YAML and validated.

The dataclass field defaults (with their attribute docstrings) are the single source of
defaults; YAML files set only what differs. ``msgspec.convert`` checks the types and runs each
record's ``__post_init__`` (the bounds); unknown keys are refused with a close-match hint, and
every error names the field (``cameras[1].stride``, ``publish.endpoint``).
``--set key.path=value`` overrides (YAML syntax for the value) apply before validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import msgspec.inspect as mi
import yaml

from emim_stream.engines.backends.base import EngineConfig
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.transforms import ResizeMethod
from emim_stream.engines.uris import is_network_stream, redact_uri
from emim_stream.engines.validation import check_ranges, closest_key, explain, path_text, ranged
from emim_stream.pipeline.endpoints import port_problem

__all__ = [
    "DEFAULT_CONFIG",
    "DEPRECATED_KEYS",
    "CameraConfig",
    "EventsConfig",
    "MetricsConfig",
    "MqttConfig",
    "PipelineConfig",
    "PostprocessConfig",
    "PublishConfig",
    "RecordConfig",
    "RingConfig",
    "SupervisorConfig",
    "ViewConfig",
    "WebhookConfig",
    "WindowConfig",
    "config_hash",
    "load_config",
]

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
"""The embedded default config, shipped in the package (``configs/default.yaml`` links to it)."""
_LOG = logging.getLogger(__name__)


class FieldError(ConfigError, ValueError):
    """A value of one field is invalid; the loader prefixes the field's full path (msgspec reports a ValueError
    raised in ``__post_init__`` with the path of the record)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name, self.detail = field_name, message


MAX_SECONDS = 3600.0
"""Upper bound of every timeout, period and backoff setting (seconds)."""
MAX_STRIDE = 1024
"""Upper bound of ``window.stride`` and ``cameras[].stride``."""
MAX_FRAME_INTERVAL = 1000
"""Upper bound of ``window.frame_interval`` and ``cameras[].frame_interval``."""
MAX_HWM = 1_000_000
"""Upper bound of ``publish.send_hwm`` (messages)."""
MAX_QUEUE = 1_000_000
"""Upper bound of ``mqtt.queue_size`` (messages)."""
MAX_RECORD_QUEUE = 100_000
"""Upper bound of ``record.queue_frames`` (frames: each holds a copy of a camera frame in memory)."""
MAX_WINDOWS = 10_000
"""Upper bound of ``events.min_windows``."""
MQTT_TEXT_BYTES = {"prefix": 1024, "box_id": 256, "discovery_prefix": 1024, "client_id": 256, "username": 1024}
"""Upper bound (UTF-8 bytes) of each MQTT text setting: a whole topic stays far below the protocol's 65,535."""


def _check_mqtt_text(name: str, value: str | None) -> None:
    """An MQTT string (MQTT 3.1.1 section 1.5.3): no NUL or control characters, at most
    :data:`MQTT_TEXT_BYTES` bytes."""
    if value is None:
        return
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise FieldError(name, f"must not contain NUL or control characters, got {value[:40]!r}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MQTT_TEXT_BYTES[name]:
        raise FieldError(name, f"must be at most {MQTT_TEXT_BYTES[name]} bytes, got {size}")


def _seconds(default: float) -> Any:
    """A duration field (a dataclass field, as :func:`ranged` gives): finite, > 0 and at most :data:`MAX_SECONDS`."""
    return ranged(default, 0, MAX_SECONDS, low_open=True, unit="s")


Decoder = Literal["opencv", "ffmpeg"]
"""``cameras[].decoder``: how files and streams are decoded."""
Hwaccel = Literal["none", "nvidia", "vaapi", "qsv", "jetson"]
"""``cameras[].hwaccel`` (the presets of :mod:`emim_stream.pipeline.capture.hwaccel`)."""


@dataclass(frozen=True)
class CameraConfig:
    """One camera: where its frames come from and how they are prepared."""

    id: str
    """Camera id: used in topics (``labels/<id>/``); letters, digits, ``-``, ``_``, ``.``."""
    source: str
    """``synthetic://?...``, a file path, ``rtsp://...``, ``http(s)://...`` or a USB index (``0``)."""
    loop: bool = False
    """Files: rewind at the end instead of ending the camera."""
    pace: bool = True
    """Files and synthetic sources: deliver frames at the source's own fps."""
    resize: ResizeMethod = ResizeMethod.AREA
    """Resize method (train and evaluate with the same one): area, linear (fastest) or pyramid."""
    open_timeout_s: float = _seconds(10.0)
    """Network sources: give up opening after this long (then reconnect with backoff)."""
    read_timeout_s: float = _seconds(5.0)
    """Network sources: a read that takes longer counts as a dropped connection."""
    stride: int | None = ranged(None, 1, MAX_STRIDE)
    """Sampled frames between windows for this camera (default: ``window.stride``)."""
    frame_interval: int | None = ranged(None, 1, MAX_FRAME_INTERVAL)
    """Feed the model every N-th frame of this camera instead of the checkpoint's sampling (default:
    ``window.frame_interval``)."""
    rtsp_transport: Literal["auto", "tcp", "udp"] = "auto"
    """RTSP sources: RTP over ``tcp`` or ``udp``; ``auto`` tries TCP, then UDP, and logs which one worked."""
    decoder: Decoder = "ffmpeg"
    """Files and streams: ``ffmpeg`` (PyAV) crops and scales to the model's size while decoding, and only the frames
    the model samples; ``opencv`` decodes every frame to full-size BGR, then resizes. The pictures differ by about
    one level in 255 (``emim-stream bench-decode`` measures both). USB cameras always use OpenCV."""
    hwaccel: Hwaccel = "none"
    """``decoder: ffmpeg`` only: decode on this device (presets as Frigate's; see the cameras page for what each
    needs); ``emim-stream doctor`` lists the ones this box's FFmpeg supports."""
    record_source: str | None = None
    """The camera's main stream (a network URL), recorded as it comes, without decoding, into ``record.dir`` while
    ``source`` (its low-resolution sub-stream) feeds the model; without it the recording is ``source``'s frames at
    the model's size with the labels drawn on them. Needs ``record.dir``."""

    def __post_init__(self) -> None:
        if not self.id or not all(c.isalnum() or c in "-_." for c in self.id) or len(self.id) > 64:
            raise FieldError("id", f"must be 1-64 letters, digits, '-', '_' or '.', got {self.id!r}")
        if self.id == "all":
            raise FieldError("id", "'all' is reserved (latency summaries use it for all cameras)")
        if not str(self.source).strip():
            raise FieldError("source", "must not be empty")
        if self.record_source is not None and not is_network_stream(self.record_source):
            raise FieldError(
                "record_source",
                f"must be a stream URL (rtsp://, http(s)://, ...): the camera's main stream, got "
                f"{redact_uri(self.record_source)!r}",
            )
        if self.hwaccel != "none" and self.decoder != "ffmpeg":
            raise FieldError("hwaccel", f"{self.hwaccel!r} needs decoder: ffmpeg (the OpenCV decoder has no presets)")
        check_ranges(self, FieldError)


@dataclass(frozen=True)
class RingConfig:
    """The shared-memory frame ring of each camera."""

    slots: int = ranged(64, 4, 4096)
    """Frames kept per camera (must exceed the clip length; more slots tolerate longer stalls)."""

    def __post_init__(self) -> None:
        check_ranges(self, FieldError)


@dataclass(frozen=True)
class WindowConfig:
    """Sliding clip windows of the frames the model sees (sampled as the checkpoint's clip spec says)."""

    stride: int = ranged(4, 1, MAX_STRIDE)
    """A window is classified every ``stride`` sampled frames (per camera; ``cameras[i].stride`` overrides); at
    7.5 sampled frames per second (a 16x4 Kinetics model) 4 is a label every 0.53 s."""
    frame_interval: int | None = ranged(None, 1, MAX_FRAME_INTERVAL)
    """Feed the model every N-th camera frame instead of the checkpoint's sampling (mmaction2's
    ``frame_interval``, in each camera's own frames; ``cameras[i].frame_interval`` overrides); None: the
    checkpoint's sampling, matched to each camera's frame rate."""

    def __post_init__(self) -> None:
        check_ranges(self, FieldError)


DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
"""Where the label publisher binds by default, and where subscribers, the profiler and the view connect."""


@dataclass(frozen=True)
class PublishConfig:
    """The ZeroMQ publisher of labels and status."""

    endpoint: str = DEFAULT_ENDPOINT
    """Where the PUB socket binds. Only loopback unless ``allow_remote``."""
    allow_remote: bool = False
    """Allow a non-loopback bind (then consider CURVE keys)."""
    send_hwm: int = ranged(100, 1, MAX_HWM)
    """Messages queued per subscriber before sends are dropped (and counted)."""
    linger_ms: int = ranged(200, 0, 10_000)
    """How long closing waits to flush queued messages."""
    heartbeat_s: float = _seconds(1.0)
    """Period of ``status/<camera>/`` messages."""
    stats_s: float = ranged(10.0, 0, MAX_SECONDS, unit="s")
    """Period of the box's ``stats/<box_id>/`` message (cameras, fps, latency percentiles, engine, drops); 0 = none."""
    curve_secret_key_file: str | None = None
    """The publisher's CURVE secret key file (server.key_secret from ``emim-stream keys --name server``, mode
    0600). Set together with ``curve_clients_dir`` to encrypt the stream and admit only authorised subscribers."""
    curve_clients_dir: str | None = None
    """Directory of the authorised subscribers' public key files (NAME.key); read once at start."""
    slow_subscriber: Literal["drop_for_slow", "drop_message"] = "drop_for_slow"
    """A subscriber whose queue is full: drop_for_slow = only it misses messages (it sees msg_seq gaps);
    drop_message = the message goes to no subscriber and the publisher counts it."""

    def __post_init__(self) -> None:
        if "://" not in self.endpoint:
            raise FieldError("endpoint", f"must be a ZeroMQ endpoint like tcp://127.0.0.1:5556, got {self.endpoint!r}")
        if self.endpoint.startswith("tcp://") and (problem := port_problem(self.endpoint.rpartition(":")[2])):
            raise FieldError("endpoint", f"{problem}, got {self.endpoint!r}")
        check_ranges(self, FieldError)
        if (self.curve_secret_key_file is None) != (self.curve_clients_dir is None):
            raise FieldError("curve_clients_dir", "must be set together with curve_secret_key_file")


@dataclass(frozen=True)
class PostprocessConfig:
    """How window scores become published labels, and whether ``run`` prints them."""

    print_labels: bool = True
    """Print one line per published label message."""
    topk: int = ranged(3, 1, 100)
    """Labels (with scores) per message."""
    smoothing: float = ranged(0.0, 0, 1, high_open=True)
    """Exponential smoothing of scores over a camera's windows (0 = off, 0.9 = heavy)."""

    def __post_init__(self) -> None:
        check_ranges(self, FieldError)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics over HTTP (``GET /metrics``)."""

    port: int | None = ranged(None, 0, 65535)
    """HTTP port; None = off, 0 = any free port (logged)."""
    host: str = "127.0.0.1"
    """Interface to serve on (loopback by default; anything else needs ``allow_remote``)."""
    allow_remote: bool = False
    """Allow a non-loopback ``host`` (the endpoint has no authentication: a warning is logged)."""

    def __post_init__(self) -> None:
        check_ranges(self, FieldError)


@dataclass(frozen=True)
class EventsConfig:
    """Action events: per camera, a hysteresis state machine over the (smoothed) scores
    (pipeline/inference/events.py)."""

    enabled: bool = True
    """Publish ``events/<camera>/`` messages (and print them in ``run``)."""
    enter: float = ranged(0.6, 0, 1, low_open=True)
    """An event opens when a label's score stays >= ``enter`` for ``min_windows`` consecutive windows."""
    exit: float = 0.4
    """An open event closes at the first window whose score of its label is below ``exit`` (<= ``enter``)."""
    min_windows: int = ranged(3, 1, MAX_WINDOWS)
    """Consecutive windows >= ``enter`` before an event opens (shorter flickers open none)."""
    exclude: tuple[str, ...] = ()
    """Labels that never make events (e.g. ``static``)."""
    update_s: float = ranged(0.0, 0, MAX_SECONDS, unit="s")
    """While an event is open, an ``update`` message (running peak and duration) at most every this many seconds
    of video; 0 = only ``start`` and ``end``."""

    def __post_init__(self) -> None:
        check_ranges(self, FieldError)
        if not 0.0 <= self.exit <= self.enter:
            raise FieldError("exit", f"must be in [0, events.enter = {self.enter}], got {self.exit}")


MQTT_KINDS = ("event", "label", "status", "stats", "action", "snapshot")
"""What the MQTT sink can publish (the last level of its topics, pipeline/comms/mqtt.py)."""
HOME_ASSISTANT_KINDS = ("event", "action", "snapshot", "stats")
"""The kinds the Home Assistant entities read (pipeline/comms/homeassistant.py)."""


@dataclass(frozen=True)
class MqttConfig:
    """The MQTT sink (pipeline/comms/mqtt.py): messages to ``<prefix>/<box_id>/<camera>/<kind>`` on a broker."""

    host: str | None = None
    """Broker host name or address; None = no MQTT sink."""
    port: int = ranged(1883, 1, 65535)
    """Broker port (8883 is the usual TLS port)."""
    protocol: str = "3.1.1"
    """MQTT version: ``3.1.1`` or ``5``."""
    box_id: str | None = None
    """This box's name in the topics (default: the host name)."""
    client_id: str | None = None
    """MQTT client id (default ``emim-<box_id>``: stable per box, so a broker sees one client per box)."""
    prefix: str = "emim"
    """First topic level(s), e.g. ``factory/line1``."""
    kinds: tuple[str, ...] = HOME_ASSISTANT_KINDS
    """What to publish: any of ``event`` (start/update/end), ``label`` (every window), ``status`` (heartbeats),
    ``stats`` (the box's periodic stats), ``action`` (the current top label, retained: when it changes and with each
    heartbeat) and ``snapshot`` (a JPEG at each event's peak, retained)."""
    qos: int = 1
    """MQTT QoS of every message: 0 (at most once), 1 (at least once), 2 (exactly once)."""
    retain_status: bool = True
    """Status messages are retained, so a new subscriber gets each camera's last status at once."""
    username: str | None = None
    """Broker user name (with ``password`` or ``password_env``)."""
    password: str | None = field(default=None, repr=False)
    """Broker password (never logged); prefer ``password_env``."""
    password_env: str | None = None
    """Name of the environment variable holding the broker password."""
    tls: bool = False
    """Connect with TLS (the system CA store unless ``ca_file``)."""
    ca_file: str | None = None
    """CA certificate(s) that signed the broker's certificate (PEM)."""
    cert_file: str | None = None
    """Client certificate (PEM) for brokers that require one, with ``key_file``."""
    key_file: str | None = None
    """Private key of ``cert_file`` (PEM)."""
    tls_insecure: bool = False
    """Do not check the broker's host name against its certificate (testing only)."""
    keepalive_s: int = ranged(30, 1, 65535)
    """MQTT keep-alive (the protocol's limit is 65535): the broker drops the client after 1.5x this without
    traffic."""
    queue_size: int = ranged(1000, 1, MAX_QUEUE)
    """Messages waiting for the broker; when full (broker down) the oldest is dropped and counted."""
    reconnect_min_s: float = _seconds(1.0)
    """First delay before reconnecting to a lost or unreachable broker (doubles each time)."""
    reconnect_max_s: float = _seconds(30.0)
    """Cap of the reconnect delay."""
    home_assistant: bool = False
    """Announce every camera to Home Assistant by MQTT discovery (retained configs under ``discovery_prefix``)."""
    discovery_prefix: str = "homeassistant"
    """Home Assistant's discovery prefix (its MQTT integration's setting)."""

    def __post_init__(self) -> None:
        if self.host is not None and not self.host.strip():
            raise FieldError("host", "must be a host name or address, or null (no MQTT sink)")
        check_ranges(self, FieldError)
        if self.protocol not in ("3.1.1", "5"):
            raise FieldError("protocol", f"must be '3.1.1' or '5', got {self.protocol!r}")
        for name in MQTT_TEXT_BYTES:
            _check_mqtt_text(name, getattr(self, name))
        for name in ("prefix", "box_id", "discovery_prefix"):
            value = getattr(self, name)
            if value is not None and (not value or any(c in value for c in "+#") or "//" in f"/{value}/"):
                raise FieldError(name, f"must be topic levels without '+', '#' or empty levels, got {value!r}")
        if self.box_id is not None and "/" in self.box_id:
            raise FieldError("box_id", f"must be one topic level (no '/'), got {self.box_id!r}")
        unknown = [k for k in self.kinds if k not in MQTT_KINDS]
        if unknown or not self.kinds:
            raise FieldError("kinds", f"must be a non-empty list of {', '.join(MQTT_KINDS)}, got {list(self.kinds)}")
        missing = [k for k in HOME_ASSISTANT_KINDS if k not in self.kinds]
        if self.home_assistant and missing:
            raise FieldError("kinds", f"home_assistant needs {', '.join(missing)} among the kinds")
        if self.qos not in (0, 1, 2):
            raise FieldError("qos", f"must be 0, 1 or 2, got {self.qos}")
        if self.password is not None and self.password_env is not None:
            raise FieldError("password_env", "set password or password_env, not both")
        if (self.password is not None or self.password_env is not None) and self.username is None:
            raise FieldError("username", "a password needs a username")
        if (self.cert_file is None) != (self.key_file is None):
            raise FieldError("key_file", "must be set together with cert_file")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise FieldError("reconnect_min_s", "must be <= reconnect_max_s")


WEBHOOK_PHASES = ("start", "update", "end")
"""Event phases a webhook can be sent."""


@dataclass(frozen=True)
class WebhookConfig:
    """The webhook sink (pipeline/comms/webhook.py): event messages POSTed to HTTP(S) URLs."""

    urls: tuple[str, ...] = ()
    """Where to send events (``http://`` or ``https://``); empty = no webhook. Each URL has its own queue."""
    format: Literal["emim", "frigate"] = "emim"
    """``emim``: POST each event message as published. ``frigate``: each URL is a Frigate base URL
    (``http://frigate:5000``); an event's start creates a manual event in Frigate, its end ends it."""
    phases: tuple[str, ...] = ("start", "end")
    """Event phases sent (``emim`` format): any of ``start``, ``update``, ``end``."""
    token_env: str | None = None
    """Name of an environment variable holding a bearer token (``Authorization: Bearer ...``); never logged."""
    ca_file: str | None = None
    """CA certificate(s) (PEM) for HTTPS servers the system store does not trust."""
    timeout_s: float = _seconds(5.0)
    """Connect and read timeout of one request."""
    retries: int = ranged(3, 0, 10)
    """Retries of a request that failed (connection error, timeout, 429 or 5xx) before it is dropped."""
    backoff_s: float = _seconds(0.5)
    """Delay before the second retry, doubling with each further one (the first retry is at once)."""
    queue_size: int = ranged(100, 1, 100_000)
    """Events waiting per URL; when full the oldest is dropped and counted."""

    def __post_init__(self) -> None:
        for url in self.urls:
            if not url.startswith(("http://", "https://")) or not url.split("://", 1)[1]:
                raise FieldError("urls", f"must be http:// or https:// URLs, got {url!r}")
        unknown = [p for p in self.phases if p not in WEBHOOK_PHASES]
        if unknown or not self.phases:
            phases = ", ".join(WEBHOOK_PHASES)
            raise FieldError("phases", f"must be a non-empty list of {phases}, got {list(self.phases)}")
        check_ranges(self, FieldError)


@dataclass(frozen=True)
class SupervisorConfig:
    """Camera-process supervision."""

    restart_backoff_s: float = _seconds(0.5)
    """First delay before restarting a dead camera process or reconnecting a lost source (doubles each time)."""
    restart_backoff_max_s: float = _seconds(10.0)
    """Cap of the restart / reconnect delay."""
    stall_timeout_s: float = _seconds(5.0)
    """A camera whose ring has no heartbeat for this long is reported stalled."""

    def __post_init__(self) -> None:
        check_ranges(self, FieldError)
        if self.restart_backoff_s > self.restart_backoff_max_s:
            raise FieldError("restart_backoff_s", "must be <= restart_backoff_max_s")


@dataclass(frozen=True)
class ViewConfig:
    """The live view: JPEG previews on ``preview/<camera>/`` and the browser page ``run`` can serve."""

    preview_fps: float = ranged(4.0, 0, 30)
    """JPEG previews per second and camera published on ``preview/<camera>/`` (0 = none)."""
    preview_quality: int = ranged(80, 1, 100)
    """JPEG quality of the previews, 1..100."""
    port: int | None = ranged(None, 0, 65535)
    """``run`` serves the page on this port (None = no page; ``emim-stream view`` serves one separately)."""
    host: str = "127.0.0.1"
    """Interface the page is served on; anything but loopback needs ``allow_remote`` (and then a token)."""
    allow_remote: bool = False
    """Allow a non-loopback ``host``; the page then asks for the token of ``token_file``."""
    token_file: str | None = None
    """File holding the access token (default with ``allow_remote``: a random token, printed once at start)."""

    def __post_init__(self) -> None:
        check_ranges(self, FieldError)


@dataclass(frozen=True)
class RecordConfig:
    """Annotated MP4 recordings of every camera (label, score and latency drawn on the frames), written as
    fragmented MP4 segments that survive a crash (pipeline/outputs/segments.py)."""

    dir: str | None = None
    """Directory of the recordings (None = off); one segment series per camera, ``<camera>_<UTC time>.mp4``."""
    height: int = ranged(360, 32, 2160)
    """Height in pixels of the recorded picture (frames are scaled up to it), a text band is added above."""
    codec: Literal["auto", "h264", "mpeg4"] = "auto"
    """``auto``: H.264 where it can be encoded, else MPEG-4 part 2."""
    segment_s: float = _seconds(60.0)
    """Start a new segment file after this many seconds of video (a crash loses at most the last half second)."""
    max_mb: float = ranged(100.0, 1, 100_000)
    """Start a new segment once the current one reaches this size (MB)."""
    retain_gb: float | None = ranged(None, 0.001, 1_000_000)
    """Delete a camera's oldest segments while its segments take more than this (None = keep all)."""
    retain_days: float | None = ranged(None, 0.001, 36_500)
    """Delete segments older than this many days (None = keep all)."""
    queue_frames: int = ranged(256, 1, MAX_RECORD_QUEUE)
    """Frames waiting for the encoder; when full, frames are dropped (counted), never the inference loop slowed."""
    retry_s: float = _seconds(5.0)
    """After a write error (full disk, removed or read-only directory) try a new segment this often."""
    event_clips: bool = False
    """Also write a short clip around every action event (``DIR/events/``); keeps the last seconds of frames."""
    clip_pre_s: float = ranged(2.0, 0, 60)
    """Seconds of video before an event's first frame in its clip."""
    clip_post_s: float = ranged(2.0, 0, 60)
    """Seconds of video after an event's last frame in its clip."""
    clip_max_s: float = ranged(30.0, 0, 600, low_open=True)
    """Longest clip (a longer event keeps its end)."""

    def __post_init__(self) -> None:
        check_ranges(self, FieldError)


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline."""

    cameras: tuple[CameraConfig, ...]
    engine: EngineConfig = field(default_factory=EngineConfig)
    ring: RingConfig = field(default_factory=RingConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)

    def __post_init__(self) -> None:
        if not self.cameras:
            raise FieldError("cameras", "at least one camera is needed")
        ids = [c.id for c in self.cameras]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise FieldError("cameras", f"camera ids must be unique, repeated: {dup}")
        for i, cam in enumerate(self.cameras):
            if cam.record_source is not None and self.record.dir is None:
                raise FieldError(f"cameras[{i}].record_source", "needs record.dir (where its recordings go)")

    def stride_of(self, camera: CameraConfig) -> int:
        """The window stride of ``camera`` (sampled frames)."""
        return camera.stride or self.window.stride

    def frame_interval_of(self, camera: CameraConfig) -> int | None:
        """The fixed frame interval ``camera`` feeds the model (None: the checkpoint's sampling)."""
        return camera.frame_interval or self.window.frame_interval


def config_hash(cfg: PipelineConfig) -> str:
    """Short stable hash of the resolved config (published in status messages)."""
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


DEPRECATED_KEYS: dict[tuple[str, ...], str] = {("output",): "postprocess", ("outputs", "mqtt"): "mqtt"}
"""Old key path -> its new top-level section; the old names are read, with a warning, until version 0.3
(CHANGELOG.md)."""

_STRING_ONLY = ("id",)
"""Keys whose YAML numbers are refused rather than read as text (``id: 010`` would be camera ``8``)."""


def _check_keys(info: mi.Type, data: Any, path: list[str | int]) -> None:
    """Refuse unknown keys, naming the closest known one, and read a YAML number given for text as text.

    msgspec ignores unknown keys of dataclasses, and YAML reads ``source: 0`` (a USB index) as a number.
    """
    if isinstance(info, mi.UnionType):
        info = next((t for t in info.types if isinstance(t, mi.DataclassType)), info)
    if isinstance(info, mi.DataclassType) and isinstance(data, dict):
        fields = {f.name: f.type for f in info.fields}
        for key, value in data.items():
            where = path_text([*path, str(key)])
            if key not in fields:
                close = closest_key(key, fields)
                hint = f"did you mean '{path_text([*path, close])}'?" if close else f"known keys: {', '.join(fields)}"
                raise ConfigError(f"unknown key '{where}'; {hint}")
            if _is_text(fields[key]) and type(value) is int:
                if key in _STRING_ONLY:
                    raise ConfigError(
                        f"{where}: must be a string, got the number {value}; quote it (YAML reads 010 as 8), "
                        f'e.g. {key}: "010"'
                    )
                data[key] = str(value)
            _check_keys(fields[key], value, [*path, key])
    elif isinstance(info, mi.VarTupleType) and isinstance(data, list):
        for i, item in enumerate(data):
            if _is_text(info.item_type) and type(item) is int:
                data[i] = str(item)
            _check_keys(info.item_type, item, [*path, i])


def _is_text(info: mi.Type) -> bool:
    """A ``str`` or ``str | None`` field."""
    types = info.types if isinstance(info, mi.UnionType) else (info,)
    return any(isinstance(t, mi.StrType) for t in types)


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key.path=value, got {assignment!r}")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({err})") from None
    node: Any = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: no list item {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: '{part}' is not a section")


def _rename_deprecated(data: dict[str, Any]) -> None:
    """Move sections given under a :data:`DEPRECATED_KEYS` name to their new name, with one warning each."""
    for old, new in DEPRECATED_KEYS.items():
        parent: Any = data
        for part in old[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old[-1] not in parent:
            continue
        old_name = ".".join(old)
        if new in data:
            raise ConfigError(f"both '{old_name}' (its old name) and '{new}' are set; keep '{new}'")
        data[new] = parent.pop(old[-1])
        if len(old) > 1 and not parent:
            del data[old[0]]
        _LOG.warning("config key '%s' is now '%s'; the old name is read until version 0.3", old_name, new)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a YAML config (or start from defaults when ``path`` is None), apply overrides, validate.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key, wrong type or invalid value;
            the message names the file and the field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"config '{path}' cannot be read: {err.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config '{path}' is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config '{path}' must be a mapping at the top level")
    for assignment in overrides:
        _apply_override(data, assignment)
    try:
        _rename_deprecated(data)
        _check_keys(mi.type_info(PipelineConfig), data, [])
        return msgspec.convert(data, PipelineConfig)
    except msgspec.ValidationError as err:
        field_path, rule = explain(err, data, PipelineConfig)
        message = f"missing key(s): {field_path}" if rule == "is missing" else f"{field_path}: {rule}"
    except ConfigError as err:
        message = str(err)
    where = f"config '{path}': " if path is not None else "config: "
    raise ConfigError(where + message) from None
