"""EventTracker: scripted score sequences give exactly the expected events and their start/update/end messages;
config bounds are enforced."""

from __future__ import annotations

import itertools

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


def lifecycle(sequence: list[tuple[str, float] | None], cfg: EventsConfig) -> list[tuple[int, EventMessage]]:
    """Feed the sequence (None = frames lost before the next window); (window index, message) per event message."""
    tracker = EventTracker("cam1", LABELS, cfg)
    out: list[tuple[int, EventMessage]] = []
    for k, item in enumerate(sequence):
        if item is None:
            out += [(k, e) for e in tracker.interrupt()]
        else:
            out += [(k, e) for e in tracker.push(window(k), scores(*item))]
    out += [(len(sequence), e) for e in tracker.interrupt("stopped")]
    return out


def run(sequence: list[tuple[str, float] | None], cfg: EventsConfig) -> list[tuple[int, EventMessage]]:
    """(window index, event) per closed event: its ``end`` message."""
    return [(k, e) for k, e in lifecycle(sequence, cfg) if e.phase == "end"]


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
    for _, ev in lifecycle([("left", 0.9)] * 3, CFG):
        parsed = parse_payload(ev.to_payload())
        assert parsed == ev and isinstance(parsed, EventMessage)


def test_start_at_the_opening_window_and_end_share_one_id_with_running_figures():
    seq = [("static", 0.9), ("left", 0.7), ("left", 0.9), ("left", 0.8), ("left", 0.5), ("left", 0.39), ("static", 1)]
    (k0, start), (k1, end) = lifecycle(seq, CFG)
    assert (k0, start.phase, k1, end.phase) == (3, "start", 5, "end")  # start with the min_windows-th window
    assert start.id == end.id and len(start.id) == 32 and int(start.id, 16) >= 0
    assert (start.first_seq, start.last_seq, start.windows, start.end_reason) == (4, window(3).last_seq, 3, None)
    assert (start.peak_score, start.peak_seq) == (pytest.approx(0.9, abs=1e-6), window(2).last_seq)
    assert start.mean_score == pytest.approx((0.7 + 0.9 + 0.8) / 3, abs=1e-6)
    assert (end.windows, end.end_reason, end.peak_seq) == (4, "exit", window(2).last_seq)


def test_updates_every_update_s_of_video_while_open():
    update_s = 0.5  # windows are 4 frames of 33 ms apart: an update every 4th window (0.528 s)
    seq = [("left", 0.9)] * 20 + [("static", 0.9)]
    messages = [e for _, e in lifecycle(seq, EventsConfig(enter=0.6, exit=0.4, min_windows=3, update_s=update_s))]
    phases = [e.phase for e in messages]
    assert phases == ["start", "update", "update", "update", "update", "end"], phases
    assert len({e.id for e in messages}) == 1
    sent = [e.end_mono_ns for e in messages[:-1]]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(update_s * 1e9 <= g < update_s * 1e9 + STRIDE * FRAME_NS for g in gaps), gaps
    assert [e.windows for e in messages] == [3, 7, 11, 15, 19, 20]
    assert [e.phase for _, e in lifecycle(seq, CFG)] == ["start", "end"]  # update_s = 0: no updates


def test_takeover_ends_the_old_event_before_starting_the_new_one():
    seq = [("left", 0.9)] * 4 + [("right", 0.62)] * 3
    messages = [(e.phase, e.label, e.end_reason) for _, e in lifecycle(seq, EventsConfig(exit=0.15))]
    assert messages == [("start", "left", None), ("end", "left", "takeover"), ("start", "right", None),
                        ("end", "right", "stopped")]  # fmt: skip


def test_event_ids_differ_between_events_and_trackers():
    seq = [("left", 0.9)] * 3 + [None] + [("left", 0.9)] * 3
    ids = [e.id for _ in range(2) for _, e in lifecycle(seq, CFG) if e.phase == "start"]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_peak_seqs_name_the_peak_frames_of_the_open_event_and_a_challenger():
    tracker = EventTracker("cam1", LABELS, EventsConfig(exit=0.15))
    for k, p in enumerate((0.7, 0.95, 0.8)):
        tracker.push(window(k), scores("left", p))
    assert tracker.peak_seqs() == {window(1).last_seq}
    tracker.push(window(3), scores("right", 0.7))  # a challenger's run: its first window is its peak so far
    assert tracker.peak_seqs() == {window(1).last_seq, window(3).last_seq}
    tracker.push(window(4), scores("left", 0.9))  # the challenge fails: its windows join the open event
    assert tracker.peak_seqs() == {window(1).last_seq}


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


def test_subscribe_prints_one_line_per_event_message():
    (_, start), (_, end) = lifecycle([("left", 0.9)] * 3, CFG)
    lines = [describe(Received("events/cam1/", replace(e, msg_seq=n).to_payload(), 0, 0, 100, replace(e, msg_seq=n)))
             for n, e in enumerate((start, end))]  # fmt: skip
    assert lines == [
        f"cam1 #0 event start left {start.duration_s:.2f} s frames 0-15 peak 0.90 mean 0.90 id {start.id[:8]}",
        f"cam1 #1 event end left {end.duration_s:.2f} s frames 0-15 peak 0.90 mean 0.90 (stopped) id {end.id[:8]}",
    ]
