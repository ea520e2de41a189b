"""Profile: synthetic label/status messages from a real Publisher on 127.0.0.1 -> per-camera, per-stage report."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np
import pytest

from emim_stream.cli.commands import profile as profile_cmd
from emim_stream.pipeline.comms.messages import (
    EventMessage,
    LabelMessage,
    ModelInfo,
    StatusMessage,
    WindowInfo,
    label_topic,
    latency_breakdown_ms,
    parse_payload,
    status_topic,
)
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.comms.subscribe import Received, Subscriber
from emim_stream.pipeline.errors import PipelineError
from emim_stream.pipeline.measure.profile import RECEIVE_STAGE, Profiler, format_report, profile
from tests.pipeline.view.test_state import label

STAGES = ["capture_to_ring", "queue", "vmp", "wait", "infer", "publish", "total"]


def _label(
    camera_id: str,
    i: int,
    infer_ms: float,
    dropped_frames: int = 0,
    dropped_windows: int = 0,
    clock_domain: str | None = None,
    label: str = "wave",
) -> LabelMessage:
    """Window ``i`` of a camera, its stages spread over the last few ms: published (stamped) just now."""
    offsets_ms = [0.0, 0.5, 1.0, 2.0, 2.5 + i % 3, 2.5 + i % 3 + infer_ms, 2.8 + i % 3 + infer_ms]
    capture = time.monotonic_ns() - round(offsets_ms[-1] * 1e6)
    stamps = [capture + round(ms * 1e6) for ms in offsets_ms]
    extra = {} if clock_domain is None else {"clock_domain": clock_domain}
    return LabelMessage(
        camera_id=camera_id,
        window=WindowInfo(4 * i, 4 * i + 15, 16, 4, 500.0),
        topk=((label, 0.8),),
        model=ModelInfo("emim_xs.demo", "torch", "fp32", "cpu"),
        capture_mono_ns=capture,
        capture_wall_ns=time.time_ns(),
        vmp_done_mono_ns=stamps[3],
        infer_start_mono_ns=stamps[4],
        infer_end_mono_ns=stamps[5],
        publish_mono_ns=stamps[6],
        publish_wall_ns=time.time_ns(),
        latency_ms=latency_breakdown_ms(*stamps),
        dropped_frames=dropped_frames,
        dropped_windows=dropped_windows,
        **extra,
    )


def _status(camera_id: str, reconnects: int, frames_lost: int, state: str = "live") -> StatusMessage:
    now = time.monotonic_ns()
    return StatusMessage(
        camera_id, state, 30.0, 12.0, 99, reconnects, frames_lost, 0, 640, 480, now, now, time.time_ns(), "cafe"
    )


def _join(pub: Publisher, sub: Subscriber, timeout_s: float = 5.0) -> None:
    """Probe until the subscription has reached the publisher; drain the probes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.send(b"labels/probe/", label("probe", 1.0, 1.0))
        if sub.recv(0.02) is not None:
            while sub.recv(0.05) is not None:
                pass
            return
    raise AssertionError("subscriber never joined")


def _recv(sub: Subscriber, n: int, timeout_s: float = 5.0) -> list[Received]:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        received = sub.recv(0.1)
        if received is not None and not received.topic.startswith("labels/probe/"):
            out.append(received)
    assert len(out) == n, f"got {len(out)} of {n} messages"
    return out


def test_report_has_every_stage_and_percentile_per_camera_with_drops_and_loss():
    infer_ms = {"cam1": [5.0 + (7 * i) % 11 for i in range(20)], "cam2": [20.0 + (3 * i) % 5 for i in range(12)]}
    with (
        Publisher("tcp://127.0.0.1:*") as pub,
        Subscriber(pub.endpoint, ["labels/", "status/"], max_msg_bytes=4096) as sub,
    ):
        _join(pub, sub)
        profiler = Profiler()
        sent: dict[str, list[LabelMessage]] = {"cam1": [], "cam2": []}
        received: list[Received] = []
        for i in range(20):
            # cam1: dropped frames 5, 5, 6, 6, ..., 14; cam2: dropped windows 4..9, then restarted at 0..5
            msgs = [_label("cam1", i, infer_ms["cam1"][i], dropped_frames=5 + i // 2, dropped_windows=1)]
            if i < 12:
                windows = i + 4 if i < 6 else i - 6
                msgs.append(_label("cam2", i, infer_ms["cam2"][i], dropped_windows=windows))
            for msg in msgs:
                assert pub.send(label_topic(msg.camera_id), msg.to_payload())
                sent[msg.camera_id].append(msg)
            if i % 5 == 0:
                pub.send(status_topic("cam1"), _status("cam1", reconnects=2 + i // 5, frames_lost=i).to_payload())
            received += _recv(sub, len(msgs) + (i % 5 == 0))
        # a message from another host: its receive latency is meaningless here and must be skipped
        foreign = _label("cam2", 12, 1.0, dropped_windows=10, clock_domain="another-boot-id")
        pub.send(label_topic("cam2"), foreign.to_payload())
        received += _recv(sub, 1)
        # a label too big for the subscriber is refused by its socket: lost, seen as a msg_seq gap on cam1 only
        pub.send(label_topic("cam1"), _label("cam1", 20, 5.0, label="x" * 8192).to_payload())
        _join(pub, sub)  # reconnected
        last = _label("cam1", 21, infer_ms["cam1"][0], dropped_frames=15, dropped_windows=1)
        pub.send(label_topic("cam1"), last.to_payload())
        sent["cam1"].append(last)
        received += _recv(sub, 1)
        for r in received:
            profiler.add(r)
        report = profiler.report(sub, endpoint=pub.endpoint, topics=["labels/", "status/"])

    json.loads(json.dumps(report, allow_nan=False))  # plain JSON, no NaN
    assert report["report"] == "emim-stream profile" and report["unit"] == "ms"
    assert list(report["cameras"]) == ["cam1", "cam2"]
    for camera_id, cam in report["cameras"].items():
        assert list(cam["stages"]) == [*STAGES, RECEIVE_STAGE]
        for stage in STAGES:
            expected = np.array([m.latency_ms[stage] for m in sent[camera_id]])
            if camera_id == "cam2":
                expected = np.append(expected, foreign.latency_ms[stage])
            row = cam["stages"][stage]
            assert set(row) == {"count", "total", "p50", "p90", "p99", "max"}
            assert row["count"] == len(expected)
            for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
                assert row[key] == pytest.approx(np.percentile(expected, q), abs=1e-6)
            assert row["max"] == pytest.approx(expected.max(), abs=1e-6)
        receive = cam["stages"][RECEIVE_STAGE]
        assert receive["count"] == len(sent[camera_id])  # cam2's foreign message is not in it
        assert cam["stages"]["total"]["p50"] <= receive["p50"] < 5000  # received after it was published
        assert cam["windows_per_s"] == pytest.approx(cam["labels"] / report["duration_s"])
        assert cam["model"]["name"] == "emim_xs.demo"
    cam1, cam2 = report["cameras"]["cam1"], report["cameras"]["cam2"]
    assert cam1["labels"] == 21 and cam2["labels"] == 13
    assert cam1["dropped_frames"] == 10 and cam1["dropped_windows"] == 0
    assert cam2["dropped_windows"] == (9 - 4) + (5 - 0) + (10 - 5)  # 4..9, restart counts from 0: 0..5, then 10
    assert cam1["lost"] == {"labels": 1, "status": 0} and cam2["lost"] == {"labels": 0, "status": 0}
    assert cam1["status"] == {"heartbeats": 4, "state": "live", "fps": 30.0, "reconnects": 3, "frames_lost": 15}
    assert cam2["status"] is None
    assert report["messages"]["lost"] == 1 + sub.lost["labels/probe/"]  # probes sent while reconnecting are lost too
    assert report["messages"]["receive_skipped"] == 1
    assert report["messages"]["labels"] == 34 and report["messages"]["statuses"] == 4
    assert report["all"]["labels"] == 34
    assert report["all"]["stages"]["infer"]["count"] == 34
    text = format_report(report)
    assert "cam1" in text and "cam2" in text and "p99 ms" in text and "receive" in text


def test_events_are_left_out_of_the_profile():
    """Events carry no window latency: they are counted (and their alert delay kept), never profiled as labels."""
    profiler = Profiler()
    event = EventMessage("cam1", "e" * 32, "end", "wave", 100, 139, 1_000, 2_000, 3_000, 4_000, 0.97, 0.84, 139, 7,
                         "exit", publish_mono_ns=3_100, publish_wall_ns=4_100)  # fmt: skip
    profiler.add(Received("events/cam1/", event.to_payload(), 3_200, 4_200, size=300, message=event))
    label = _label("cam1", 0, 5.0)
    profiler.add(Received("labels/cam1/", label.to_payload(), 3_200, 4_200, size=900, message=label))
    assert (profiler.labels, profiler.statuses, profiler.events, profiler.unreadable) == (1, 0, 1, 0)
    assert profiler.recorder.summary()["cam1"]["total"]["count"] == 1


def test_profile_command_writes_json_and_plot_for_every_camera(tmp_path, capsys):
    """The command against a live stream: 3 cameras at 50 windows/s, heartbeats, then the JSON and the PNG."""
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    cameras = ["cam1", "cam2", "cam3"]
    stop = threading.Event()
    with Publisher("tcp://127.0.0.1:*") as pub:

        def publish() -> None:
            i = 0
            while not stop.is_set():
                for k, camera_id in enumerate(cameras):
                    pub.send(label_topic(camera_id), _label(camera_id, i, 4.0 + k, dropped_frames=i).to_payload())
                    if i % 10 == 0:
                        pub.send(status_topic(camera_id), _status(camera_id, 0, 0).to_payload())
                i += 1
                stop.wait(0.02)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        args = argparse.Namespace(
            endpoint=pub.endpoint,
            duration=1.5,
            json=str(tmp_path / "report.json"),
            plot=str(tmp_path / "profile.png"),
            topics=None,
            samples=1000,
            curve_server_key=None,
            curve_client_key=None,
        )
        try:
            assert profile_cmd.main(args) == 0
        finally:
            stop.set()
            thread.join(5)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["duration_s"] == pytest.approx(1.5, abs=0.01)
    assert report["topics"] == ["labels/", "status/", "events/"]
    assert sorted(report["cameras"]) == cameras  # in order of first message: the subscriber may join mid-round
    for camera_id in cameras:
        cam = report["cameras"][camera_id]
        assert list(cam["stages"]) == [*STAGES, RECEIVE_STAGE]
        for row in cam["stages"].values():
            assert row["count"] == cam["labels"] > 10
            assert 0 <= row["p50"] <= row["p90"] <= row["p99"] <= row["max"]
        assert cam["windows_per_s"] > 10
        # counters go up by 1 per window: the increase = windows received - 1 + windows lost
        assert cam["dropped_frames"] == cam["labels"] - 1 + cam["lost"]["labels"]
        assert cam["status"]["heartbeats"] >= 1
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "report written to" in out and "plot written to" in out and "cam3" in out


def test_nothing_received_is_exit_1_and_missing_matplotlib_fails_before_profiling(tmp_path, monkeypatch):
    with Publisher("tcp://127.0.0.1:*") as pub:
        profiler, report = profile(pub.endpoint, duration_s=0.3)
        assert report["cameras"] == {} and report["messages"]["received"] == 0 and not profiler.cameras
        assert "no label or status message arrived" in format_report(report)
        args = argparse.Namespace(
            endpoint=pub.endpoint, duration=0.2, json=None, plot=None, topics=None, samples=10,
            curve_server_key=None, curve_client_key=None,
        )  # fmt: skip
        assert profile_cmd.main(args) == 1
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
        args.plot = str(tmp_path / "p.png")
        start = time.monotonic()
        with pytest.raises(PipelineError, match=r"pip install 'emim-stream\[plot\]'"):
            profile_cmd.main(args)
        assert time.monotonic() - start < 0.2  # refused before the profiling period


def test_alert_delay_of_event_starts_against_numpy_and_stats_are_counted_not_profiled():
    """start_delay = publish time of each ``start`` - capture of the event's first frame; percentiles as numpy's."""
    delays_ms = [480.0, 530.5, 512.25, 610.0]
    profiler = Profiler()
    for i, delay in enumerate(delays_ms):
        start_ns = 1_000_000_000 * (i + 1)
        for phase in ("start", "update", "end"):
            event = EventMessage("cam1", f"{i:032x}", phase, "left", 0, 15, start_ns, 0, start_ns + 9, 0, 0.9, 0.9, 15,
                                 3, "exit" if phase == "end" else None,
                                 publish_mono_ns=start_ns + round(delay * 1e6) + 7 * (phase != "start"))  # fmt: skip
            profiler.add(Received("events/cam1/", event.to_payload(), 0, 0, 100, event))
    stats = {"schema": 1, "kind": "stats", "msg_seq": 0, "clock_domain": "b", "box_id": "box1", "uptime_s": 1.0,
             "interval_s": 1.0, "engine": {"name": "m", "backend": "torch", "precision": "fp32", "device": "cpu"},
             "cameras": {}, "latency_ms": None, "publish_dropped": 0, "outputs": {}, "publish_mono_ns": 1,
             "publish_wall_ns": 1}  # fmt: skip
    profiler.add(Received("stats/box1/", stats, 0, 0, 100, parse_payload(stats)))
    with Subscriber("tcp://127.0.0.1:9", ["events/"]) as sub:
        report = profiler.report(sub)
    events = report["cameras"]["cam1"]["events"]
    assert {k: events[k] for k in ("start", "update", "end")} == {"start": 4, "update": 4, "end": 4}
    delay = events["start_delay_ms"]
    for p in (50, 90, 99):
        assert delay[f"p{p}"] == pytest.approx(np.percentile(delays_ms, p), abs=1e-6)
    assert (delay["count"], delay["max"]) == (4, 610.0)
    assert (report["messages"]["events"], report["messages"]["stats"], report["messages"]["unreadable"]) == (12, 1, 0)
    assert "alert delay (ms; event start published - capture of the event's first frame):" in format_report(report)
