"""Config loading: defaults, overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg.cameras[0].source.startswith("synthetic://")
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5556" and not cfg.publish.allow_remote
    assert cfg.engine.backend == "aoti" and cfg.engine.device == "cpu"
    edge = load_config(ROOT / "configs" / "edge-gpu.yaml")
    assert edge.engine.backend == "tensorrt" and len(edge.cameras) == 4


def test_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, "cameras: [{id: a, source: 'synthetic://'}]\n")
    cfg = load_config(path, ["window.stride=2", "cameras.0.stride=6", "engine.max_batch=3"])
    assert cfg.window.stride == 2 and cfg.stride_of(cfg.cameras[0]) == 6 and cfg.engine.max_batch == 3


def test_frame_interval_overrides_the_checkpoints_sampling_per_camera(tmp_path):
    path = write(tmp_path, "cameras: [{id: a, source: x}, {id: b, source: y, frame_interval: 2}]\n")
    cfg = load_config(path)
    assert [cfg.frame_interval_of(c) for c in cfg.cameras] == [None, 2]  # None: the checkpoint's sampling
    cfg = load_config(path, ["window.frame_interval=4"])
    assert [cfg.frame_interval_of(c) for c in cfg.cameras] == [4, 2]


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (
            "cameras: [{id: a, source: x}]\nwindow: {strid: 2}\n",
            [],
            "unknown key 'window.strid'; did you mean 'window.stride'",
        ),
        ("cameras: [{id: a, source: x}, {id: b, source: y, stride: 0}]\n", [], r"cameras\[1\]\.stride: must be in"),
        (
            "cameras: [{id: a, source: x, frame_interval: 0}]\n",
            [],
            r"cameras\[0\]\.frame_interval: must be in 1..1000, got 0",
        ),
        (
            "cameras: [{id: a, source: x}]\n",
            ["window.frame_interval=1001"],
            "window.frame_interval: must be in 1..1000",
        ),
        ("cameras: [{id: a, source: x}]\nring: {slots: many}\n", [], "ring.slots: must be an integer, got 'many'"),
        (
            "cameras: [{id: a, source: x}]\npublish: {endpoint: localhost}\n",
            [],
            "publish.endpoint: must be a ZeroMQ endpoint",
        ),
        ("cameras: [{id: a, source: x}, {id: a, source: y}]\n", [], "camera ids must be unique"),
        ("cameras: [{id: 'a/b', source: x}]\n", [], r"cameras\[0\]\.id"),
        ("cameras: [{source: x}]\n", [], r"missing key\(s\): cameras\[0\]\.id"),
        ("cameras: []\n", [], "cameras: at least one camera"),
        ("cameras: [{id: a, source: x, resize: cubic}]\n", [], r"cameras\[0\]\.resize: must be one of"),
        ("cameras: [{id: a, source: x}]\nengine: {backend: tpu}\n", [], "engine.backend must be one of"),
        ("cameras: [{id: a, source: x}]\n", ["postprocess.topk"], "--set expects key.path=value"),
        ("cameras: [{id: a, source: x}\n", [], "is not valid YAML"),
        ("cameras: [{id: a, source: x}]\n", ["publish.stats_s=-1"], r"publish.stats_s: must be in 0..3600 s, got -1.0"),
        ("cameras: [{id: a, source: x}]\n", ["events.update_s=.nan"], "events.update_s: must be in 0..3600 s, got nan"),
        ("cameras: [{id: a, source: x}]\n", ["mqtt.kinds=[events]"], r"mqtt.kinds: must be a non-empty list of"),
        (
            "cameras: [{id: a, source: x}]\n",
            ["mqtt.home_assistant=true", "mqtt.kinds=[event]"],
            "mqtt.kinds: home_assistant needs action, snapshot, stats among the kinds",
        ),
        ("cameras: [{id: a, source: x}]\n", ["mqtt.discovery_prefix=ha/#"], "mqtt.discovery_prefix: must be topic"),
        ("cameras: [{id: a, source: x}]\n", ["webhook.urls=[ftp://h/x]"], "webhook.urls: must be http:// or https://"),
        ("cameras: [{id: a, source: x}]\n", ["webhook.phases=[begin]"], "webhook.phases: must be a non-empty list"),
        ("cameras: [{id: a, source: x}]\n", ["webhook.format=zapier"], "webhook.format: must be one of"),
        ("cameras: [{id: a, source: x}]\n", ["webhook.retries=11"], r"webhook.retries: must be in 0..10"),
        ("cameras: [{id: a, source: x}]\n", ["webhook.timeout_s=0"], "webhook.timeout_s: must be > 0"),
        ("cameras: [{id: a, source: x}]\n", ["webhook.queue_size=0"], r"webhook.queue_size: must be in 1..100000"),
        (
            "cameras: [{id: a, source: x, record_source: 'main.mp4'}]\nrecord: {dir: rec}\n",
            [],
            r"cameras\[0\]\.record_source: must be a stream URL \(rtsp://, http\(s\)://, \.\.\.\): the camera's main "
            r"stream, got 'main.mp4'",
        ),
        (
            "cameras: [{id: a, source: x}, {id: b, source: y, record_source: 'rtsp://u:secret@cam/main'}]\n",
            [],
            r"config '.*': cameras\[1\]\.record_source: needs record.dir \(where its recordings go\)$",
        ),
    ],
)
def test_bad_values_name_the_field(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), overrides)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "nope.yaml")


def test_old_section_names_are_read_with_one_warning_each(tmp_path, caplog):
    path = write(tmp_path, "cameras: [{id: a, source: x}]\noutput: {topk: 5}\noutputs: {mqtt: {host: h, port: 1884}}\n")
    with caplog.at_level("WARNING", logger="emim_stream.pipeline.config"):
        cfg = load_config(path, ["output.smoothing=0.5"])
    assert (cfg.postprocess.topk, cfg.postprocess.smoothing) == (5, 0.5)
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("h", 1884)
    assert [r.getMessage() for r in caplog.records] == [
        "config key 'output' is now 'postprocess'; the old name is read until version 0.3",
        "config key 'outputs.mqtt' is now 'mqtt'; the old name is read until version 0.3",
    ]


def test_an_old_and_a_new_section_name_together_are_refused(tmp_path):
    path = write(tmp_path, "cameras: [{id: a, source: x}]\noutput: {topk: 5}\npostprocess: {topk: 4}\n")
    with pytest.raises(ConfigError, match="both 'output' \\(its old name\\) and 'postprocess' are set"):
        load_config(path)
