"""End to end: the demo model on a synthetic camera scripted through ``left`` then ``right`` gives one event each
(a ``start`` and an ``end`` with one id), read over ZeroMQ by the Python Subscriber and by
``emim-stream subscribe --topic events/``."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from emim_stream.engines.backends import load_engine
from emim_stream.engines.backends.base import EngineConfig
from emim_stream.pipeline.capture.preprocess import Preprocessor
from emim_stream.pipeline.capture.sources import SyntheticSource
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage
from emim_stream.pipeline.comms.subscribe import Subscriber
from emim_stream.pipeline.config import EventsConfig
from emim_stream.pipeline.inference.events import EventTracker, WindowSpan
from emim_stream.pipeline.inference.postprocess import Postprocessor
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow
from tests.integration.conftest import ROOT, free_port

FPS, SEGMENT_S, STRIDE = 30, 4, 4
CHANGE = FPS * SEGMENT_S  # first frame of the right segment
# A scene the demo model labels steadily inside both segments: these tests check where events start and end, not
# the model. (Seed 2 gives one event per segment with the stage-5 and stage-6 weights; with stage 5, seeds 3 and 5 of
# 1-5 split the right segment in two: a 2-window flicker to recede or rotate_ccw mid-segment ends the event.)
SEED = 2
JITTER_NS = 20e6  # capture times of a paced camera vary by a few ms around n / fps


def test_left_then_right_segments_give_one_event_each_at_the_changes(pipeline_factory):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    config = {
        "cameras": [
            {"id": "cam1", "source": f"synthetic://?seed={SEED}&fps={FPS}&size=320x240&segment_s={SEGMENT_S}&label=left,right"}
        ],
        # one torch thread leaves the other core to the camera process: no window skipped near the changes
        "engine": {"backend": "torch", "device": "cpu", "checkpoint": "emim_xs.demo", "threads": 1},
        "window": {"stride": STRIDE},
        "publish": {"endpoint": endpoint},
        "events": {"exclude": ["static"]},
    }
    labels: list[LabelMessage] = []
    messages: list[EventMessage] = []
    # a second reader, the subscribe command on events/ only, started first: its imports do not compete with the
    # pipeline near the first change (ZeroMQ connects once the pipeline binds)
    cli = subprocess.Popen(
        [sys.executable, "-m", "emim_stream.cli", "subscribe", "--endpoint", endpoint, "--topic", "events/",
         "--count", "4", "--timeout", "180"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        p = pipeline_factory(config)
        # segments: left (frames 0-119), right (120-239), left again (240-): both events end while the pipeline runs
        with Subscriber(endpoint, topics=(b"labels/", b"events/"), timeout_s=1.0) as sub:
            deadline = time.monotonic() + 120
            done_seq = 2 * CHANGE + 4 * STRIDE  # windows past the second change have been classified
            while time.monotonic() < deadline and p.proc.poll() is None:
                if len(messages) >= 4 and labels and labels[-1].window.last_seq >= done_seq:
                    break
                p.watch_children()
                got = sub.recv(0.5)
                if got is None:
                    continue
                if got.payload["kind"] == "event":
                    messages.append(EventMessage.from_payload(got.payload))
                else:
                    labels.append(LabelMessage.from_payload(got.payload))
            assert sub.total_lost == 0
        cli_out, cli_err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:  # the test failed before both events came
            cli.kill()
            cli.wait(10)
    assert p.terminate() == 0, p.output()[-3000:]
    by_last_seq = {m.window.last_seq: m for m in labels}
    for change in (CHANGE, 2 * CHANGE):
        near = sorted(s for s in by_last_seq if change - 2 * STRIDE <= s <= change + 3 * STRIDE)
        assert len(near) >= 4, f"windows near frame {change} were skipped (machine overloaded?): {near}"
    events = [m for m in messages if m.phase == "end"]
    assert len(events) == 2, f"{messages}\n{p.output()[-3000:]}"
    assert [(m.phase, m.id) for m in messages[:4]] == [(ph, e.id) for e in events for ph in ("start", "end")]
    assert cli.returncode == 0, cli_err

    left, right = events
    assert (left.label, right.label) == ("left", "right")
    assert {left.end_reason, right.end_reason} <= {"exit", "takeover"}  # the score fell, or the next class took over
    assert left.first_seq <= 2 * STRIDE  # from the first windows on
    for event, start, end in ((left, 0, CHANGE), (right, CHANGE, 2 * CHANGE)):
        if start:
            assert abs(event.first_seq - start) <= STRIDE, (event, start)
        assert abs(event.last_seq - (end - 1)) <= STRIDE, (event, end)
        # times: the end is the capture of the last window's newest frame, as its label message says; the start and
        # end are within one stride (plus capture jitter) of the capture of the segment's first and last frame,
        # interpolated from the labels' capture times
        assert (event.end_mono_ns, event.end_wall_ns) == (
            by_last_seq[event.last_seq].capture_mono_ns,
            by_last_seq[event.last_seq].capture_wall_ns,
        )
        for frame, stamp in ((start, event.start_mono_ns), (end - 1, event.end_mono_ns)):  # first / last frame
            if frame:
                nearest = min(by_last_seq, key=lambda s, f=frame: abs(s - f))
                frame_ns = by_last_seq[nearest].capture_mono_ns + (frame - nearest) * 1e9 / FPS
                assert abs(stamp - frame_ns) <= STRIDE * 1e9 / FPS + JITTER_NS, (event, frame)
        assert 0.6 <= event.peak_score <= 1 and 0.4 <= event.mean_score <= event.peak_score
        assert event.windows >= 3 and event.start_mono_ns < event.end_mono_ns

    out = p.output()
    assert out.count(" event  left ") >= 2 and out.count(" event  right ") == 2, out[-3000:]  # start and end
    lines = [line for line in cli_out.splitlines() if " event " in line]
    phases_labels = [tuple(line.split(" event ")[1].split()[:2]) for line in lines]
    assert phases_labels == [("start", "left"), ("end", "left"), ("start", "right"), ("end", "right")], cli_out


def test_event_boundaries_of_the_demo_model_frame_by_frame():
    """The same stages in one process without real time (no window skipped, whatever the machine's load): the
    windows that straddle a cut are a flicker (at most 2 < min_windows), so each segment gives exactly one event
    whose first and last frames are within one stride of the segment's."""
    engine = load_engine(EngineConfig(backend="torch", device="cpu", checkpoint="emim_xs.demo", threads=2))
    spec, vmp = engine.input_spec, engine.vmp
    stage = VmpStage(vmp, engine.device, (vmp.mean,) * 3, (vmp.std,) * 3, dtype=torch.float32)
    window = ClipWindow(spec.frames, STRIDE, spec.height, spec.width, engine.device, torch.float32)
    post = Postprocessor(engine.labels, 3)
    tracker = EventTracker("cam1", engine.labels, EventsConfig(exclude=("static",)))
    pre = Preprocessor(spec.height, spec.width, "area")
    uri = f"synthetic://?seed={SEED}&fps={FPS}&size=320x240&segment_s={SEGMENT_S}&label=left,right"
    events: list[EventMessage] = []
    with SyntheticSource(uri, pace=False) as source:
        for seq in range(3 * CHANGE):
            prompt = stage.push(torch.as_tensor(pre(source.read().image)), seq)
            if prompt is None or not window.push(prompt, seq):
                continue
            post(engine.infer(window.clip().unsqueeze(0))[0])
            span = WindowSpan(window.first_seq, seq, window.first_seq, 0, seq, 0)  # "times" = frame numbers
            events += [e for e in tracker.push(span, post.scores) if e.phase == "end"]
    events += tracker.interrupt("stopped")
    engine.close()
    assert [e.label for e in events] == ["left", "right", "left"]
    for event, (first, last) in zip(events, [(0, CHANGE - 1), (CHANGE, 2 * CHANGE - 1)], strict=False):
        assert abs(event.first_seq - first) <= STRIDE + 1 and abs(event.last_seq - last) <= STRIDE, event
        assert (event.start_mono_ns, event.end_mono_ns) == (event.first_seq, event.last_seq)
        assert event.peak_score > 0.99 and event.mean_score > 0.9


def test_event_config_out_of_range_exits_2_naming_the_field():
    done = subprocess.run(
        [sys.executable, "-m", "emim_stream.cli", "run", "--set", "events.exit=0.9", "--duration", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "events.exit: must be in [0, events.enter = 0.6], got 0.9" in done.stderr
    assert "Traceback" not in done.stderr
