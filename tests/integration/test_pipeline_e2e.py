"""End to end: real camera processes, shared memory, OpenCV decoding and ZeroMQ sockets."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from emim_stream.pipeline.comms.messages import LabelMessage, StatusMessage
from emim_stream.pipeline.comms.subscribe import Subscriber
from tests.integration.conftest import ROOT, alive, engine_section, free_port, rings_of


def collect(endpoint: str, count: int, timeout_s: float, topics=(b"labels/",), proc=None) -> list:
    """Up to ``count`` messages within ``timeout_s``, or until the pipeline ``proc`` has exited and nothing more
    arrives (also watching its children)."""
    out = []
    deadline = time.monotonic() + timeout_s
    with Subscriber(endpoint, topics=topics, timeout_s=1.0) as sub:
        while len(out) < count and time.monotonic() < deadline:
            if proc is not None:
                proc.watch_children()
            got = sub.recv(0.5)
            if got is not None:
                out.append(got.payload)
            elif proc is not None and proc.proc.poll() is not None:
                break
    return out


def check_label_stream(payloads: list[dict], camera: str) -> list[LabelMessage]:
    msgs = [LabelMessage.from_payload(p) for p in payloads if p["camera_id"] == camera]
    assert len(msgs) >= 10
    for a, b in itertools.pairwise(msgs):
        assert b.window.last_seq > a.window.last_seq
        assert b.msg_seq > a.msg_seq
    for m in msgs:
        assert m.window.last_seq - m.window.first_seq + 1 == m.window.frames
        assert (
            m.capture_mono_ns <= m.vmp_done_mono_ns <= m.infer_start_mono_ns <= m.infer_end_mono_ns <= m.publish_mono_ns
        )
        assert 0 < m.latency_ms["total"] < 10_000
        assert len(m.topk) == 3 and m.topk[0][1] >= m.topk[1][1]
        assert m.model.backend == "torch"
    return msgs


def synthetic_config(port: int, **engine) -> dict:
    return {
        "cameras": [{"id": "cam1", "source": "synthetic://?seed=3&fps=30&size=160x120"}],
        "engine": engine_section(**engine),
        "window": {"stride": 2},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.5},
    }


def test_synthetic_camera_labels_flow_then_duration_ends_cleanly(pipeline_factory):
    port = free_port()
    p = pipeline_factory(synthetic_config(port), duration=6)
    payloads = collect(f"tcp://127.0.0.1:{port}", 15, 60, topics=(b"labels/", b"status/"), proc=p)
    labels = [x for x in payloads if x["kind"] == "label"]
    check_label_stream(labels, "cam1")
    status = [StatusMessage.from_payload(x) for x in payloads if x["kind"] == "status"]
    assert status and status[-1].state == "live" and status[-1].fps > 10
    assert p.wait(60) == 0
    out = p.output()
    assert "per-window latency" in out and "total" in out
    assert p.watch_children(), "no camera process was seen"


def test_video_file_source_runs_to_its_end(pipeline_factory, tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (96, 80))
    rng = np.random.default_rng(0)
    for i in range(90):
        frame = rng.integers(0, 60, (80, 96, 3), dtype=np.uint8)
        cv2.rectangle(frame, (5 + i // 2, 20), (30 + i // 2, 50), (255, 200, 0), -1)
        writer.write(frame)
    writer.release()
    port = free_port()
    cfg = synthetic_config(port)
    cfg["cameras"] = [{"id": "file", "source": path, "pace": True}]
    p = pipeline_factory(cfg, duration=60)
    payloads = collect(f"tcp://127.0.0.1:{port}", 40, 30, proc=p)
    msgs = check_label_stream(payloads, "file")
    assert msgs[-1].window.last_seq <= 89
    assert p.wait(30) == 0
    assert "all cameras ended" in p.output()


def test_sigterm_stops_children_and_frees_shared_memory(pipeline_factory):
    port = free_port()
    p = pipeline_factory(synthetic_config(port))

    assert collect(f"tcp://127.0.0.1:{port}", 2, 60, proc=p)
    assert rings_of(p.proc.pid), "the ring should exist while running"
    children = p.watch_children()
    assert p.terminate() == 0
    time.sleep(0.2)
    assert not [c for c in children if alive(c)]
    assert not rings_of(p.proc.pid)


def test_killed_camera_process_is_restarted(pipeline_factory):
    port = free_port()
    cfg = synthetic_config(port)
    cfg["cameras"].append({"id": "cam2", "source": "synthetic://?seed=4&fps=30&size=160x120"})
    cfg["supervisor"] = {"restart_backoff_s": 0.2}
    p = pipeline_factory(cfg)
    first = collect(f"tcp://127.0.0.1:{port}", 6, 60, proc=p)
    assert {m["camera_id"] for m in first} == {"cam1", "cam2"}
    # camera processes are the spawned children (the other child is multiprocessing's resource tracker)
    cam_pids = sorted(c for c in p.watch_children() if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())
    assert len(cam_pids) == 2
    os.kill(cam_pids[-1], signal.SIGKILL)
    later = collect(f"tcp://127.0.0.1:{port}", 30, 60, proc=p)
    assert {m["camera_id"] for m in later} == {"cam1", "cam2"}, "both cameras publish after the restart"
    assert p.terminate() == 0
    assert "exited with code -9; restarting" in p.output()


@pytest.mark.parametrize("label", ["left", "approach", "rotate_ccw"])
def test_embedded_default_prints_the_forced_class(pipeline_factory, label):
    """configs/default.yaml as shipped (the demo checkpoint), its synthetic camera forced to one class."""
    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    config["cameras"][0]["source"] += f"&label={label}"
    port = free_port()
    config["publish"]["endpoint"] = f"tcp://127.0.0.1:{port}"
    p = pipeline_factory(config, duration=12)
    assert p.wait(90) == 0
    printed = re.findall(r"^\s*cam1 frames\s+\d+-\d+\s+(\S+)\s+[\d.]+", p.output(), flags=re.MULTILINE)
    assert len(printed) >= 10, p.output()[-2000:]
    share = printed.count(label) / len(printed)
    assert share >= 0.8, f"{label}: {share:.0%} of {len(printed)} printed labels ({sorted(set(printed))})"


def test_cameras_share_batched_engine_calls_fairly_with_their_own_strides_and_metrics(pipeline_factory):
    port, metrics_port = free_port(), free_port()
    strides = {"cam1": 2, "cam2": 3, "cam3": 4}
    cfg = synthetic_config(port, max_batch=2)
    cfg["cameras"] = [
        {"id": cam, "source": f"synthetic://?seed={i}&fps=20&size=96x72", "stride": stride}
        for i, (cam, stride) in enumerate(strides.items())
    ]
    cfg["metrics"] = {"port": metrics_port}
    p = pipeline_factory(cfg)
    payloads = collect(f"tcp://127.0.0.1:{port}", 60, 60, proc=p)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert p.terminate() == 0
    for cam, stride in strides.items():
        msgs = [LabelMessage.from_payload(x) for x in payloads if x["camera_id"] == cam]
        assert len(msgs) >= 8, f"{cam} starved: {len(msgs)} of {len(payloads)} labels"
        for a, b in itertools.pairwise(msgs):
            if b.dropped_frames == a.dropped_frames:  # no gap between them: windows stay on the stride grid
                assert (b.window.last_seq - a.window.last_seq) % stride == 0
        assert all(m.window.stride == stride for m in msgs)
        published = re.search(rf'^emim_labels_published_total{{camera="{cam}"}} (\S+)$', text, flags=re.MULTILINE)
        assert published and float(published.group(1)) > 0, text[:2000]
    samples = [(x.name, x.labels) for family in text_string_to_metric_families(text) for x in family.samples]
    engine = [(lb["model"], lb["backend"]) for name, lb in samples if name == "emim_engine_info"]
    assert engine == [("emim_xs", "torch")]
    assert any(name == "emim_stage_latency_seconds_bucket" and lb["stage"] == "infer" for name, lb in samples)
