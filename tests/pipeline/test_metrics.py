"""Metrics: the HTTP endpoint serves counters and histograms in a parseable Prometheus text format."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest

from pipeline.errors import PublishError
from pipeline.messages import LabelMessage, ModelInfo, StatusMessage, WindowInfo
from pipeline.metrics import LATENCY_BUCKETS_MS, Counter, Histogram, Metrics, render_prometheus

# The text exposition format 0.0.4, one sample line: name{label="value",...} number
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = rf'({_NAME})="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)$")
_NUMBER = re.compile(r"^([+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]Inf|NaN)$")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse_exposition(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """Strictly parse the text format: ``({metric: type}, {(sample name, labels): value})``; fails on any bad line."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert re.match(rf"^# HELP {_NAME} .*$", line), line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped") and name not in types, line
            types[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, value = m.group(1), m.group(m.lastindex)
            assert _NUMBER.match(value), line
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in types or base in types, f"sample {name} before its TYPE"
            labels = frozenset((k, _unescape(v)) for k, v in re.findall(_LABEL, m.group(2) or ""))
            key = (name, labels)
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = float(value)
    return types, samples


def _label(camera_id: str, total_ms: float, dropped_frames: int, dropped_windows: int) -> LabelMessage:
    now = time.monotonic_ns()
    return LabelMessage(
        camera_id=camera_id,
        window=WindowInfo(0, 15, 16, 4),
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


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def test_endpoint_serves_counters_histograms_and_engine_identity():
    weird = 'we"ird\\cam'  # quote and backslash are legal in camera ids and must be escaped
    with Metrics(port=0) as metrics:
        assert metrics.port
        metrics.set_engine({"model_name": "emim_xs.demo", "backend": "torch", "precision": "fp32", "device": "cpu"})
        for i, total_ms in enumerate((3.0, 40.0, 7000.0)):
            metrics.observe_label(_label("cam1", total_ms, dropped_frames=i, dropped_windows=2 * i))
        metrics.observe_label(_label(weird, 15.0, 0, 0))
        metrics.observe_status(_status("cam1", "reconnecting", latest_seq=99, reconnects=2, staleness_ms=None))
        metrics.observe_status(_status("cam1", "live", latest_seq=149, reconnects=2, staleness_ms=250.0))
        status, content_type, text = _get(f"http://127.0.0.1:{metrics.port}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    types, samples = parse_exposition(text)
    assert types["emim_labels_published_total"] == "counter"
    assert types["emim_stage_latency_seconds"] == "histogram"
    assert types["emim_engine_info"] == "gauge"

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("emim_labels_published_total", camera="cam1") == 3
    assert value("emim_labels_published_total", camera=weird) == 1
    assert value("emim_dropped_frames_total", camera="cam1") == 7  # the heartbeat's count is higher
    assert value("emim_dropped_windows_total", camera="cam1") == 4
    assert value("emim_frames_total", camera="cam1") == 150
    assert value("emim_reconnects_total", camera="cam1") == 2
    assert value("emim_frames_lost_total", camera="cam1") == 3
    assert value("emim_camera_fps", camera="cam1") == 29.5
    assert value("emim_camera_staleness_seconds", camera="cam1") == pytest.approx(0.25)
    assert value("emim_camera_state", camera="cam1", state="live") == 1
    assert value("emim_camera_state", camera="cam1", state="reconnecting") == 0
    engine = {k: v for (name, labels), v in samples.items() if name == "emim_engine_info" for k, v in labels}
    assert engine == {
        "model": "emim_xs.demo",
        "backend": "torch",
        "precision": "fp32",
        "device": "cpu",
        "checkpoint_sha256": "",
    }

    # histogram of cam1/total: 3 ms, 40 ms, 7 s -> cumulative buckets, +Inf = count, sum in seconds
    buckets = {
        dict(labels)["le"]: v
        for (name, labels), v in samples.items()
        if name == "emim_stage_latency_seconds_bucket" and ("stage", "total") in labels and ("camera", "cam1") in labels
    }
    assert len(buckets) == len(LATENCY_BUCKETS_MS) + 1
    assert buckets["0.002"] == 0 and buckets["0.005"] == 1 and buckets["0.05"] == 2 and buckets["5"] == 2
    assert buckets["+Inf"] == 3 == value("emim_stage_latency_seconds_count", camera="cam1", stage="total")
    assert value("emim_stage_latency_seconds_sum", camera="cam1", stage="total") == pytest.approx(7.043)
    counts = [buckets[le] for le in [*(k for k in buckets if k != "+Inf"), "+Inf"]]
    assert counts == sorted(counts)
    assert value("emim_stage_latency_seconds_count", camera="cam1", stage="infer") == 3  # every stage carried


def test_unknown_path_is_404_and_close_stops_serving():
    metrics = Metrics(port=0)
    url = f"http://127.0.0.1:{metrics.port}"
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(f"{url}/")
    assert err.value.code == 404
    metrics.close()
    metrics.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _get(f"{url}/metrics")


def test_busy_port_is_a_clear_error_and_no_port_means_collect_only():
    with Metrics(port=0) as first, pytest.raises(PublishError, match=f"cannot serve metrics on 127.0.0.1:{first.port}"):
        Metrics(port=first.port)
    collect_only = Metrics()
    assert collect_only.port is None
    collect_only.observe_label(_label("cam1", 5.0, 0, 0))
    _, samples = parse_exposition(collect_only.render())
    assert samples[("emim_labels_published_total", frozenset({("camera", "cam1")}))] == 1
    collect_only.close()


def test_plain_types_counter_never_decreases_and_bucket_edges():
    c = Counter("x_total", "x", ["camera"])
    c.raise_to(("a",), 5)
    c.raise_to(("a",), 3)  # an older, lower cumulative count does not take the counter back
    assert c.values[("a",)] == 5
    with pytest.raises(ValueError, match="cannot decrease"):
        c.inc(("a",), -1)
    h = Histogram("h_seconds", "h", [], [0.1, 1.0])
    for v in (0.1, 0.5, 1.0, 1.5):  # an observation equal to a bound falls in that bucket (le = less or equal)
        h.observe((), v)
    _, samples = parse_exposition(render_prometheus([c, h]))
    assert samples[("h_seconds_bucket", frozenset({("le", "0.1")}))] == 1
    assert samples[("h_seconds_bucket", frozenset({("le", "1")}))] == 3
    assert samples[("h_seconds_bucket", frozenset({("le", "+Inf")}))] == 4
    with pytest.raises(ValueError, match="ascending"):
        Histogram("bad", "b", [], [1.0, 0.5])
