"""The alert delay on the embedded default: from the first frame of an action (the synthetic camera's segment start,
known from its schedule) to the arrival of that event's ``start`` message at a ZeroMQ subscriber; and, without real
time (frame by frame, whatever the machine's load), the frames from that first frame to the window that starts it.

Stated (docs/outputs/alerts.md): ``(T - 1 + (events.min_windows - 1) x stride) / fps`` for the windows the event needs
(the first window entirely inside the action ends T - 1 frames after its first frame; ``min_windows`` - 1 more
windows follow, ``stride`` frames apart) plus the pipeline's per-window latency. The embedded default (``emim_xs.demo``,
T = 8, stride 4, 30 fps, min_windows 3): (7 + 8) / 30 = 0.50 s + latency (tens of ms on an idle 2-core box).
"""

from __future__ import annotations

import time

import pytest
import torch

from emim_stream.engines.backends import load_engine
from emim_stream.engines.backends.base import EngineConfig
from emim_stream.pipeline.capture.preprocess import Preprocessor
from emim_stream.pipeline.capture.sources import SyntheticSource
from emim_stream.pipeline.comms.messages import EventMessage, LabelMessage
from emim_stream.pipeline.comms.subscribe import Subscriber
from emim_stream.pipeline.config import DEFAULT_CONFIG, load_config
from emim_stream.pipeline.inference.events import EventTracker, WindowSpan
from emim_stream.pipeline.inference.postprocess import Postprocessor
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from emim_stream.pipeline.inference.window import ClipWindow
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

T, STRIDE, FPS, MIN_WINDOWS = 8, 4, 30, 3  # the embedded default's model, window and events settings
STATED_S = (T - 1 + (MIN_WINDOWS - 1) * STRIDE) / FPS
CI_MARGIN_S = 2.0
"""For a shared 2-core CI box: the inference latency of a loaded machine, and the windows it skips (each skipped
window between the event's windows adds stride / fps = 0.13 s); measured 1.0 and 1.9 s with a load of 13-16 on 2
cores. The frame-by-frame test below checks the stated windows without real time."""


def test_first_action_start_arrives_within_the_stated_delay(pipeline_factory, record_property):
    cfg = load_config(DEFAULT_CONFIG)
    assert (cfg.window.stride, cfg.events.min_windows) == (STRIDE, MIN_WINDOWS)
    scene = SyntheticSource(cfg.cameras[0].source, pace=False).scene
    assert scene.fps == FPS
    # the first segment boundary after the start whose new segment is an action (segment 0 starts with the stream)
    k = next(k for k in range(1, 10) if scene.label_at(k * scene.segment_frames) not in cfg.events.exclude)
    first_frame, action = k * scene.segment_frames, scene.label_at(k * scene.segment_frames)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # the embedded default's camera, model, window and events, with eager torch (its aoti package may still be
    # building) on one thread (the other core stays with the camera process) and a free port
    p = pipeline_factory(
        {"cameras": [{"id": "cam1", "source": cfg.cameras[0].source}],
         "engine": {"backend": "torch", "device": "cpu", "checkpoint": "emim_xs.demo", "threads": 1},
         "window": {"stride": STRIDE}, "publish": {"endpoint": endpoint},
         "postprocess": {"print_labels": False}, "events": {"exclude": list(cfg.events.exclude)}},
    )  # fmt: skip
    start: tuple[EventMessage, int] | None = None
    labels: list[LabelMessage] = []
    with Subscriber(endpoint, topics=(b"events/", b"labels/"), timeout_s=1.0) as sub:
        deadline = time.monotonic() + 120
        while start is None and time.monotonic() < deadline and p.proc.poll() is None:
            got = sub.recv(0.5)
            if got is None:
                continue
            if got.payload["kind"] == "label":
                labels.append(LabelMessage.from_payload(got.payload))
                continue
            event = EventMessage.from_payload(got.payload)
            if event.phase == "start" and event.label == action and event.last_seq > first_frame:
                start = event, got.recv_mono_ns
        assert sub.total_lost == 0
    assert p.terminate() == 0, p.output()[-3000:]
    assert start is not None, f"no start of {action!r} (segment from frame {first_frame}):\n{p.output()[-3000:]}"
    event, received_ns = start
    # capture time of the action's first frame, from the event's own first frame (a paced 30 fps camera)
    first_frame_ns = event.start_mono_ns + (first_frame - event.first_seq) * 1e9 / FPS
    delay_s = (received_ns - first_frame_ns) / 1e9
    latency_s = (received_ns - event.end_mono_ns) / 1e9  # from the capture of the newest frame of its window
    skipped = labels[-1].dropped_windows if labels else -1
    record_property("alert_delay_s", round(delay_s, 3))
    print(
        f"\n{action} from frame {first_frame}: start received {delay_s:.3f} s after its first frame (stated "
        f"{STATED_S:.2f} s + latency; this window's latency {latency_s:.3f} s; windows {event.first_seq}-"
        f"{event.last_seq}, {skipped} windows skipped so far)"
    )
    assert event.windows == MIN_WINDOWS  # sent with the window that opened it
    assert delay_s <= STATED_S + CI_MARGIN_S, (delay_s, event)


def test_the_window_that_starts_each_action_ends_within_the_stated_frames():
    """Frame by frame through the default camera's first four segments: each action's ``start`` comes with a window
    whose newest frame is T - 1 + (min_windows - 1) x stride frames after the action's first frame, within a stride
    either way (where the stride grid falls against the cut; a window straddling the cut may already count)."""
    cfg = load_config(DEFAULT_CONFIG)
    engine = load_engine(EngineConfig(backend="torch", device="cpu", checkpoint="emim_xs.demo", threads=2))
    spec, vmp = engine.input_spec, engine.vmp
    assert spec.frames == T
    stage = VmpStage(vmp, engine.device, (vmp.mean,) * 3, (vmp.std,) * 3, dtype=torch.float32)
    window = ClipWindow(T, STRIDE, spec.height, spec.width, engine.device, torch.float32)
    post = Postprocessor(engine.labels, 3)
    tracker = EventTracker("cam1", engine.labels, cfg.events)
    pre = Preprocessor(spec.height, spec.width, cfg.cameras[0].resize)
    starts: list[EventMessage] = []
    with SyntheticSource(cfg.cameras[0].source, pace=False) as source:
        scene = source.scene
        for seq in range(4 * scene.segment_frames):
            prompt = stage.push(torch.as_tensor(pre(source.read().image)), seq)
            if prompt is None or not window.push(prompt, seq):
                continue
            post(engine.infer(window.clip().unsqueeze(0))[0])
            span = WindowSpan(window.first_seq, seq, 0, 0, 0, 0)
            starts += [e for e in tracker.push(span, post.scores) if e.phase == "start"]
    engine.close()
    stated = T - 1 + (MIN_WINDOWS - 1) * STRIDE
    frames = {}
    for k in range(1, 4):
        first = k * scene.segment_frames
        action = scene.label_at(first)
        if action in cfg.events.exclude:
            continue
        start = next(e for e in starts if e.label == action and e.last_seq >= first)
        frames[action] = start.last_seq - first
    print(f"\nframes from an action's first frame to the window that starts it: {frames} (stated {stated})")
    assert frames and all(abs(n - stated) <= STRIDE for n in frames.values()), frames
