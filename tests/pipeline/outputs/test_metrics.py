"""Metrics: the HTTP endpoint's scrape, parsed with prometheus_client.parser, carries the documented series."""

from __future__ import annotations

import logging
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from emim_stream.pipeline.capture.sources import SourceState
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage, ModelInfo, StatusMessage, WindowInfo
from emim_stream.pipeline.comms.mqtt import MqttSink
from emim_stream.pipeline.config import MqttConfig
from emim_stream.pipeline.errors import PublishError
from emim_stream.pipeline.outputs.metrics import LATENCY_BUCKETS_MS, MQTT_STATES, Metrics


def _label(camera_id: str, total_ms: float, dropped_frames: int, dropped_windows: int) -> LabelMessage:
    now = time.monotonic_ns()
    return LabelMessage(
        camera_id=camera_id,
        window=WindowInfo(0, 15, 16, 4, 500.0),
        topk=(("wave", 0.9),),
        model=ModelInfo("emim_xs.demo", "torch", "fp32", "cpu"),
        capture_mono_ns=now,
        capture_wall_ns=time.time_ns(),
        vmp_done_mono_ns=now,
        infer_start_mono_ns=now,
        infer_end_mono_ns=now,
        publish_mono_ns=now,
        publish_wall_ns=time.time_ns(),
        latency_ms={"infer": total_ms / 2, "total": total_ms},
        dropped_frames=dropped_frames,
        dropped_windows=dropped_windows,
    )


def _status(camera_id: str, state: str, latest_seq: int, reconnects: int, staleness_ms: float | None) -> StatusMessage:
    now = time.monotonic_ns()
    return StatusMessage(
        camera_id=camera_id,
        state=state,
        fps=29.5,
        staleness_ms=staleness_ms,
        latest_seq=latest_seq,
        reconnects=reconnects,
        frames_lost=3,
        dropped_frames=7,
        source_width=640,
        source_height=480,
        heartbeat_mono_ns=now,
        publish_mono_ns=now,
        publish_wall_ns=time.time_ns(),
        config_hash="cafe",
    )


def _event(camera_id: str, label: str, phase: str = "start") -> EventMessage:
    return EventMessage(camera_id, "e1", phase, label, 0, 20, 0, 0, 1, 1, 0.9, 0.8, 20, 3)


def _scrape(port: int) -> tuple[str, dict[str, str], dict[tuple[str, frozenset], float]]:
    """(content type, {family: type}, {(sample name, labels): value}) of GET /metrics, parsed by prometheus_client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return content_type, types, samples


def test_scrape_parses_with_the_documented_series_and_values():
    weird = 'we"ird\\cam'  # quote and backslash must be escaped in label values
    with Metrics(port=0, cameras=["cam1", "cam2"]) as metrics:
        assert metrics.port
        metrics.set_engine({"model_name": "emim_xs.demo", "backend": "torch", "precision": "fp32", "device": "cpu"})
        for i, total_ms in enumerate((3.0, 40.0, 7000.0)):
            metrics.observe_label(_label("cam1", total_ms, dropped_frames=i, dropped_windows=2 * i))
        metrics.observe_label(_label(weird, 15.0, 0, 0))
        metrics.observe_status(_status("cam1", "reconnecting", latest_seq=99, reconnects=2, staleness_ms=None))
        metrics.observe_status(_status("cam1", "live", latest_seq=149, reconnects=2, staleness_ms=250.0))
        metrics.observe_status(_status("cam1", "live", latest_seq=120, reconnects=1, staleness_ms=250.0))  # older
        metrics.observe_event(_event("cam1", "left"))
        metrics.observe_event(_event("cam1", "left", "end"))  # counted when it starts, not again at its end
        metrics.observe_event(_event("cam1", "left"))
        content_type, types, samples = _scrape(metrics.port)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert types["emim_labels_published"] == "counter"
    assert types["emim_stage_latency_seconds"] == "histogram"
    assert types["emim_camera_state"] == "gauge"

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("emim_labels_published_total", camera="cam1") == 3
    assert value("emim_labels_published_total", camera=weird) == 1
    assert value("emim_dropped_frames_total", camera="cam1") == 7  # the heartbeat's count is higher
    assert value("emim_dropped_windows_total", camera="cam1") == 4
    assert value("emim_frames_total", camera="cam1") == 150  # an older, lower count never takes a counter back
    assert value("emim_reconnects_total", camera="cam1") == 2
    assert value("emim_frames_lost_total", camera="cam1") == 3
    assert value("emim_events_total", camera="cam1", label="left") == 2
    assert value("emim_camera_fps", camera="cam1") == 29.5
    assert value("emim_camera_staleness_seconds", camera="cam1") == pytest.approx(0.25)
    assert not any(name.endswith("_created") for name, _ in samples)

    # every state has a series from the start: cam2 never sent a heartbeat
    for cam, current in (("cam1", "live"), ("cam2", "connecting")):
        for state in SourceState:
            assert value("emim_camera_state", camera=cam, state=state.value) == (state.value == current), (cam, state)

    engine = [dict(labels) for (name, labels), v in samples.items() if name == "emim_engine_info" and v == 1]
    assert engine == [
        {"model": "emim_xs.demo", "backend": "torch", "precision": "fp32", "device": "cpu", "checkpoint_sha256": ""}
    ]

    # histogram of cam1/total: 3 ms, 40 ms, 7 s -> cumulative buckets, +Inf = count, sum in seconds
    buckets = {
        float(dict(labels)["le"]): v
        for (name, labels), v in samples.items()
        if name == "emim_stage_latency_seconds_bucket" and ("stage", "total") in labels and ("camera", "cam1") in labels
    }
    assert sorted(buckets) == [*(b / 1000 for b in LATENCY_BUCKETS_MS), float("inf")]
    assert (buckets[0.002], buckets[0.005], buckets[0.05], buckets[5.0], buckets[float("inf")]) == (0, 1, 2, 2, 3)
    assert value("emim_stage_latency_seconds_count", camera="cam1", stage="total") == 3
    assert value("emim_stage_latency_seconds_sum", camera="cam1", stage="total") == pytest.approx(7.043, abs=1e-12)
    assert value("emim_stage_latency_seconds_count", camera="cam1", stage="infer") == 3  # every stage carried


def test_staleness_series_disappears_while_unknown():
    metrics = Metrics()
    metrics.observe_status(_status("cam1", "live", 10, 0, staleness_ms=40.0))
    assert "emim_camera_staleness_seconds{camera=\"cam1\"} 0.04" in metrics.render()
    metrics.observe_status(_status("cam1", "reconnecting", 10, 1, staleness_ms=None))
    assert 'emim_camera_staleness_seconds{camera="cam1"}' not in metrics.render()


def test_mqtt_sink_series_are_read_at_scrape_time():
    sink = MqttSink(MqttConfig(host="127.0.0.1", box_id="b"))  # not started: stays "connecting"
    with Metrics(port=0) as metrics:
        metrics.watch_mqtt(sink)
        sink.send("event", "cam1", {"kind": "event"})
        _, types, samples = _scrape(metrics.port)
    assert types["emim_mqtt_dropped"] == "counter" and types["emim_mqtt_state"] == "gauge"
    assert samples[("emim_mqtt_queued", frozenset())] == 1
    assert samples[("emim_mqtt_dropped_total", frozenset())] == 0
    states = {dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "emim_mqtt_state"}
    assert states == {state: (state == "connecting") for state in MQTT_STATES}


def test_busy_port_non_loopback_host_and_collect_only(caplog):
    with Metrics(port=0) as first, pytest.raises(PublishError, match=f"cannot serve metrics on 127.0.0.1:{first.port}"):
        Metrics(port=first.port)
    with pytest.raises(PublishError, match=r"metrics host '0.0.0.0' is not a loopback address.*metrics.allow_remote"):
        Metrics(port=0, host="0.0.0.0")
    caplog.set_level(logging.WARNING, logger="emim_stream.pipeline.outputs.metrics")
    with Metrics(port=0, host="0.0.0.0", allow_remote=True):
        assert "without authentication" in caplog.text
    collect_only = Metrics()
    assert collect_only.port is None
    collect_only.observe_label(_label("cam1", 5.0, 0, 0))
    families = {f.name: f for f in text_string_to_metric_families(collect_only.render())}
    assert families["emim_labels_published"].samples[0].value == 1
    collect_only.close()
