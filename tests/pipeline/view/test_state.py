"""ViewState: the live view's per-camera state from pipeline messages, latency points against a float64 reference."""

from __future__ import annotations

import math
import random

import pytest

from emim_stream.pipeline.comms.messages import LabelMessage, ModelInfo, StatusMessage, WindowInfo
from emim_stream.pipeline.view.state import SILENT_AFTER_S, ViewState


def type7_percentile(values: list[float], q: float) -> float:
    """Hyndman & Fan type 7 (linear interpolation between closest ranks), written out in float64."""
    xs = sorted(values)
    h = (len(xs) - 1) * q / 100
    lo = math.floor(h)
    return xs[lo] + (h - lo) * (xs[min(lo + 1, len(xs) - 1)] - xs[lo])


def label(camera_id: str, total: float, infer: float, top: str = "left") -> dict:
    """A valid label payload (the view's subscriber drops invalid ones)."""
    return LabelMessage(
        camera_id=camera_id,
        window=WindowInfo(0, 7, 8, 4, 233.3),
        topk=((top, 0.9), ("right", 0.1)),
        model=ModelInfo("emim_xs", "torch", "fp32", "cpu"),
        capture_mono_ns=0, capture_wall_ns=0, vmp_done_mono_ns=0, infer_start_mono_ns=0, infer_end_mono_ns=0,
        publish_mono_ns=0, publish_wall_ns=1,
        latency_ms={"infer": infer, "total": total},
        msg_seq=0,
    ).to_payload()


def status(camera_id: str, state: str = "live") -> dict:
    """A valid status payload."""
    return StatusMessage(
        camera_id=camera_id, state=state, fps=30.0, staleness_ms=None, latest_seq=0, reconnects=0, frames_lost=0,
        dropped_frames=0, source_width=8, source_height=8, heartbeat_mono_ns=0, publish_mono_ns=0,
        publish_wall_ns=1, config_hash="x", msg_seq=0,
    ).to_payload()


def test_latency_points_are_percentiles_of_the_recent_labels():
    rng = random.Random(0)
    state = ViewState(window_s=60, point_s=5)
    samples = [(t * 0.1, rng.uniform(10, 90), rng.uniform(1, 9)) for t in range(200)]  # 20 s of labels
    for t, total, infer in samples:
        state.apply(label("cam1", total, infer), now_mono=t)
    state.tick(now_mono=19.95, now_wall=1000.0)
    recent = [(total, infer) for t, total, infer in samples if t >= 19.95 - 5]
    latency = state.changes(0)[1][0]["latency"]
    assert latency["t"] == [1000.0]
    assert latency["total_p50"][0] == pytest.approx(type7_percentile([r[0] for r in recent], 50), rel=1e-12)
    assert latency["total_p99"][0] == pytest.approx(type7_percentile([r[0] for r in recent], 99), rel=1e-12)
    assert latency["stages"]["infer"][0] == pytest.approx(type7_percentile([r[1] for r in recent], 50), rel=1e-12)
    minute = latency["minute"]
    assert minute["count"] == 200
    assert minute["p99"] == pytest.approx(type7_percentile([s[1] for s in samples], 99), rel=1e-12)


def test_old_samples_and_points_leave_the_window():
    state = ViewState(window_s=10, point_s=2)
    for t in range(30):
        state.apply(label("cam1", 100.0 + t, 1.0), now_mono=float(t))
        state.tick(now_mono=float(t), now_wall=float(t))
    latency = state.changes(0)[1][0]["latency"]
    assert latency["t"] == [float(t) for t in range(19, 30)], "points of the last window_s seconds only"
    assert latency["minute"]["count"] == 11  # samples at t = 19..29


def test_changes_carry_only_parts_newer_than_the_client_version():
    state = ViewState()
    state.apply(status("cam1"), now_mono=0.0)
    seen, updates = state.changes(0)
    assert updates == [{"id": "cam1", "status": {**updates[0]["status"]}}]
    assert updates[0]["status"]["state"] == "live"
    state.apply(label("cam1", 20.0, 5.0, top="right"), now_mono=0.1)
    version, updates = state.changes(seen)
    assert version > seen
    assert [set(u) for u in updates] == [{"id", "label"}]
    assert updates[0]["label"]["topk"][0] == {"label": "right", "score": 0.9}
    assert state.changes(version)[1] == []
    assert not state.wait(version, 0.01)


def test_a_camera_without_status_turns_silent_and_back():
    state = ViewState()
    state.apply(status("cam1"), now_mono=0.0)
    state.tick(now_mono=SILENT_AFTER_S - 0.5, now_wall=0.0)
    assert state.changes(0)[1][0]["status"]["silent"] is False
    version = state.version
    state.tick(now_mono=SILENT_AFTER_S + 0.5, now_wall=1.0)
    assert state.changes(version)[1][0]["status"]["silent"] is True
    state.apply(status("cam1", "ended"), now_mono=SILENT_AFTER_S + 1)
    now = state.changes(0)[1][0]["status"]
    assert now["state"] == "ended" and now["silent"] is False


def test_events_are_bounded_newest_first_and_bad_payloads_ignored():
    state = ViewState(max_events=3)
    for i in range(5):
        event = {"kind": "event", "camera_id": "cam1", "label": f"l{i}", "start_wall_ns": i, "end_wall_ns": i + 1}
        state.apply(event)
    assert [e["label"] for e in state.changes(0)[1][0]["events"]] == ["l4", "l3", "l2"]
    before = state.version
    bad = label("cam1", 1.0, 1.0)
    del bad["latency"]["stages"]["total"]
    unknown = {"kind": "x", "camera_id": "c"}
    for payload in (bad, unknown, {"kind": "label"}, {"kind": "preview", "camera_id": "c"}):
        state.apply(payload)
    assert state.version == before


def test_preview_frames_decode_to_their_jpeg_bytes():
    import base64

    state = ViewState()
    jpeg = b"\xff\xd8fake\xff\xd9"
    payload = {"kind": "preview", "camera_id": "cam1", "format": "jpeg", "data": base64.b64encode(jpeg).decode()}
    state.apply(payload | {"seq": 3, "width": 2, "height": 2, "capture_wall_ns": 0})
    assert state.frame_jpeg("cam1") == jpeg
    assert state.frame_jpeg("cam2") is None


def test_an_events_phases_make_one_entry_replaced_as_they_arrive():
    state = ViewState(max_events=3)

    def event(event_id: str, phase: str, end_ns: int) -> dict:
        reason = "exit" if phase == "end" else None
        return {"kind": "event", "camera_id": "cam1", "id": event_id, "phase": phase, "label": "left",
                "start_wall_ns": 0, "end_wall_ns": end_ns, "end_reason": reason}  # fmt: skip

    state.apply(event("a", "start", 1))
    state.apply(event("b", "start", 2))
    state.apply(event("a", "update", 3))
    state.apply(event("a", "end", 4))
    shown = state.changes(0)[1][0]["events"]
    assert [(e["id"], e["phase"], e["end_wall_ns"]) for e in shown] == [("b", "start", 2), ("a", "end", 4)]
