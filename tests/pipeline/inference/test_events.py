"""EventTracker: scripted score sequences give exactly the expected events; config bounds are enforced."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from emim_stream.cli.commands.subscribe import describe
from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.comms.messages import EventMessage, parse_payload
from emim_stream.pipeline.comms.subscribe import Received
from emim_stream.pipeline.config import DEFAULT_CONFIG, EventsConfig, load_config
from emim_stream.pipeline.inference.events import EventTracker, WindowSpan

LABELS = ("static", "left", "right")
T, STRIDE = 8, 4
FRAME_NS = 33_000_000
WALL0 = 1_700_000_000_000_000_000


def window(k: int) -> WindowSpan:
    """Window k: frames 4k..4k+7; capture time of frame n = n * FRAME_NS (wall: + WALL0)."""
    first, last = k * STRIDE, k * STRIDE + T - 1
    return WindowSpan(first, last, first * FRAME_NS, WALL0 + first * FRAME_NS, last * FRAME_NS, WALL0 + last * FRAME_NS)


def scores(label: str, p: float) -> list[float]:
    """``label`` at ``p``, the rest shared evenly by the other labels."""
    rest = (1.0 - p) / (len(LABELS) - 1)
    return [p if name == label else rest for name in LABELS]


def run(sequence: list[tuple[str, float] | None], cfg: EventsConfig) -> list[tuple[int, EventMessage]]:
    """Feed the sequence (None = frames lost before the next window); (window index, event) per closed event."""
    tracker = EventTracker("cam1", LABELS, cfg)
    out: list[tuple[int, EventMessage]] = []
    for k, item in enumerate(sequence):
        if item is None:
            out += [(k, e) for e in tracker.interrupt()]
        else:
            out += [(k, e) for e in tracker.push(window(k), scores(*item))]
    out += [(len(sequence), e) for e in tracker.interrupt("stopped")]
    return out


CFG = EventsConfig(enter=0.6, exit=0.4, min_windows=3, exclude=("static",))


def test_flicker_below_min_windows_opens_no_event():
    seq = [("left", 0.9), ("left", 0.9), ("static", 0.9)] * 3 + [("right", 0.95), ("static", 0.9)]
    assert run(seq, CFG) == []


def test_one_event_with_exact_span_times_and_scores():
    seq = [("static", 0.9), ("left", 0.7), ("left", 0.9), ("left", 0.8), ("left", 0.5), ("left", 0.39), ("static", 1)]
    [(k, ev)] = run(seq, CFG)
    assert k == 5  # closed by the window whose score fell below exit
    assert (ev.camera_id, ev.label, ev.end_reason, ev.windows) == ("cam1", "left", "exit", 4)
    assert (ev.first_seq, ev.last_seq) == (window(1).first_seq, window(4).last_seq) == (4, 23)
    assert (ev.start_mono_ns, ev.end_mono_ns) == (4 * FRAME_NS, 23 * FRAME_NS)
    assert (ev.start_wall_ns, ev.end_wall_ns) == (WALL0 + 4 * FRAME_NS, WALL0 + 23 * FRAME_NS)
    assert ev.peak_score == pytest.approx(0.9, abs=1e-6)
    assert ev.mean_score == pytest.approx((0.7 + 0.9 + 0.8 + 0.5) / 4, abs=1e-6)  # between enter and exit counts


def test_score_between_exit_and_enter_keeps_the_event_open():
    seq = [("left", 0.8)] * 3 + [("left", 0.45)] * 10 + [("left", 0.8)]
    [(_, ev)] = run(seq, CFG)
    assert (ev.windows, ev.end_reason) == (14, "stopped")


def test_a_gap_closes_the_open_event_and_restarts_the_count():
    seq = [("left", 0.9)] * 4 + [None] + [("left", 0.9)] * 2 + [None] + [("left", 0.9)] * 3
    events = run(seq, CFG)
    summary = [(k, e.label, e.end_reason, e.windows) for k, e in events]
    assert summary == [(4, "left", "gap", 4), (11, "left", "stopped", 3)]
    assert events[1][1].first_seq == window(8).first_seq  # two windows before the second gap never opened one


def test_takeover_closes_the_event_where_the_new_label_began():
    # right rises to >= enter while left stays above exit: right takes over after min_windows
    seq = [("left", 0.9)] * 4 + [("right", 0.55), ("right", 0.62), ("right", 0.62), ("right", 0.62), ("right", 0.9)]
    events = run(seq, EventsConfig(enter=0.6, exit=0.15, min_windows=3))
    (k1, left), (_, right) = events
    assert (k1, left.label, left.end_reason) == (7, "left", "takeover")
    assert left.windows == 5 and left.last_seq == window(4).last_seq  # the window before right's run
    assert (right.label, right.first_seq, right.windows) == ("right", window(5).first_seq, 4)
    assert right.end_reason == "stopped"


def test_a_failed_challenger_leaves_its_windows_in_the_open_event():
    seq = [("left", 0.9)] * 3 + [("right", 0.62), ("right", 0.62), ("left", 0.9)]
    [(_, ev)] = run(seq, EventsConfig(enter=0.6, exit=0.15, min_windows=3))
    assert (ev.label, ev.windows, ev.last_seq) == ("left", 6, window(5).last_seq)


def test_excluded_labels_make_no_events_and_unknown_exclusions_warn(caplog):
    assert run([("static", 0.99)] * 10, CFG) == []
    [(_, ev)] = run([("static", 0.99)] * 10, EventsConfig(exclude=()))
    assert ev.label == "static"
    EventTracker("cam1", LABELS, EventsConfig(exclude=("wave",)))
    assert "events.exclude: wave not among the model's labels" in caplog.text


def test_event_message_round_trip():
    [(_, ev)] = run([("left", 0.9)] * 3, CFG)
    parsed = parse_payload(ev.to_payload())
    assert parsed == ev and isinstance(parsed, EventMessage)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("events.exit=0.7", "events.exit"),
        ("events.min_windows=0", "events.min_windows"),
        ("events.enter=0", "events.enter"),
    ],
)
def test_event_config_out_of_range_names_the_field(override, field):
    with pytest.raises(ConfigError, match=rf"{field}: must"):
        load_config(None, ["cameras=[{id: c, source: 'synthetic://'}]", override])


def test_embedded_default_has_events_on_without_static():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.events.enabled and cfg.events.exclude == ("static",)


def test_subscribe_prints_one_line_per_event():
    [(_, ev)] = run([("left", 0.9)] * 3, CFG)
    payload = replace(ev, msg_seq=4).to_payload()
    line = describe(Received("events/cam1/", payload, 0, 0, 100, parse_payload(payload)))
    assert line == f"cam1 #4 event left {ev.duration_s:.2f} s frames 0-15 peak 0.90 mean 0.90 (stopped)"
