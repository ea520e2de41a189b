"""Action events: turn one camera's stream of window scores into event lifecycles with hysteresis.

Users act on events ("left at cam1 from 12:01:07 to 12:01:09, peak 0.94"), not on every window, and alerting wants
to hear the moment one starts. Per camera, :class:`EventTracker` watches the (smoothed) probability of every label
that is not excluded:

- an event of label L **opens** when L is the best eligible label with a score >= ``enter`` for ``min_windows``
  consecutive windows; the event starts at the first of those windows (so a shorter flicker opens nothing) and a
  ``start`` message goes out with the window that opened it;
- while it is open, an ``update`` message (running peak, mean, duration) goes out at most every ``update_s``
  seconds of video (capture time), when ``update_s`` is set;
- it **closes** at the first window whose score of L is below ``exit`` (``end_reason`` ``exit``), when another
  label opens an event (``takeover``; the windows of that label's run belong to the new event only), when frames
  were lost (``gap``: :meth:`EventTracker.interrupt`) or when the pipeline stops (``stopped``), with an ``end``
  message. A takeover's ``end`` comes before the new event's ``start``.

Every message of one event carries the same ``id``, a random UUID (unique across restarts and boxes).

An event spans frames ``first_seq`` (oldest frame of its first window) to ``last_seq`` (newest frame of its last
window); its start and end times are the capture times of those two frames. Consecutive windows overlap, so an
event that follows another directly may share up to T - stride frames with it. The tracker keeps a constant
amount of state per camera (running peak, sum and count), whatever the run length.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from emim_stream.pipeline.comms.messages import EventMessage, EventPhase
from emim_stream.pipeline.config import EventsConfig

__all__ = ["EventTracker", "WindowSpan"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """The frames of one classified window: seqs and capture times (ns) of its oldest and newest frame."""

    first_seq: int
    last_seq: int
    start_mono_ns: int
    start_wall_ns: int
    end_mono_ns: int
    end_wall_ns: int


class _Run:
    """Consecutive windows of one label: where they start and end, peak (and its window's newest frame), sum and
    count of its scores."""

    __slots__ = ("end", "label", "peak", "peak_seq", "start", "total", "windows")

    def __init__(self, label: int, window: WindowSpan, score: float) -> None:
        self.label = label
        self.start = self.end = window
        self.peak = self.total = score
        self.peak_seq = window.last_seq
        self.windows = 1

    def add(self, window: WindowSpan, score: float) -> None:
        self.end = window
        if score > self.peak:
            self.peak, self.peak_seq = score, window.last_seq
        self.total += score
        self.windows += 1

    def extend(self, later: _Run) -> None:
        """Append the windows of ``later`` (same label, directly after this run)."""
        self.end = later.end
        if later.peak > self.peak:
            self.peak, self.peak_seq = later.peak, later.peak_seq
        self.total += later.total
        self.windows += later.windows


class EventTracker:
    """The event state machine of one camera (see the module docstring).

    Args:
        camera_id: the camera the events belong to.
        labels: class names in score order.
        cfg: thresholds, ``min_windows``, excluded labels and the update period. Excluded names that are not labels
            are ignored with a warning (a checkpoint without ``static`` keeps working with the default config).
    """

    def __init__(self, camera_id: str, labels: Sequence[str], cfg: EventsConfig) -> None:
        self.camera_id = camera_id
        self.labels = tuple(labels)
        self.enter, self.exit, self.min_windows = cfg.enter, cfg.exit, cfg.min_windows
        self.update_ns = round(cfg.update_s * 1e9)
        unknown = sorted(set(cfg.exclude) - set(self.labels))
        if unknown:
            _log.warning(
                "events.exclude: %s not among the model's labels (%s); ignored", ", ".join(unknown), ", ".join(labels)
            )
        self._eligible = [i for i, name in enumerate(self.labels) if name not in cfg.exclude]
        self._open: _Run | None = None
        self._open_id = ""
        self._sent_mono_ns = 0  # capture time of the window of the open event's last start or update
        self._held: _Run | None = None  # windows of the open label while another label's run may take over
        self._candidate: _Run | None = None  # a run of another label >= enter, shorter than min_windows so far

    def peak_seqs(self) -> set[int]:
        """The newest frames of the peak windows of the open event and of the runs that may join or follow it: the
        frames a snapshot may be taken of."""
        return {run.peak_seq for run in (self._open, self._held, self._candidate) if run is not None}

    def push(self, window: WindowSpan, scores: Sequence[float]) -> list[EventMessage]:
        """Add the next window of this camera; return the event messages it makes, in order (at most an ``end``
        and a ``start``, or one ``update``).

        Args:
            window: the window's frames and capture times.
            scores: probability of every label (index order of ``labels``), smoothed as published.
        """
        if len(scores) != len(self.labels):
            raise ValueError(f"expected {len(self.labels)} scores, got {len(scores)}")
        best = max(self._eligible, key=lambda i: scores[i], default=None)
        open_label = None if self._open is None else self._open.label
        if best is None or scores[best] < self.enter or best == open_label:
            self._candidate = None
            self._release_held()
        elif self._candidate is not None and self._candidate.label == best:
            self._candidate.add(window, scores[best])
        else:
            self._release_held()
            self._candidate = _Run(best, window, scores[best])
        out: list[EventMessage] = []
        if self._open is not None:
            score = scores[self._open.label]
            if score < self.exit:
                self._release_held()
                out.append(self._close(self._open, "exit"))
            elif self._candidate is None:
                self._open.add(window, score)
            elif self._held is None:
                self._held = _Run(self._open.label, window, score)
            else:
                self._held.add(window, score)
        if self._candidate is not None and self._candidate.windows >= self.min_windows:
            if self._open is not None:
                self._held = None  # the windows of the candidate's run belong to the new event only
                out.append(self._close(self._open, "takeover"))
            self._open, self._candidate = self._candidate, None
            self._open_id = uuid.uuid4().hex
            out.append(self._message(self._open, "start"))
        elif self._open is not None and self._update_due(self._open, window):
            out.append(self._message(self._open, "update"))
        return out

    def interrupt(self, reason: str = "gap") -> list[EventMessage]:
        """Close the open event (frames were lost, or the pipeline stops) and forget any run in progress."""
        self._candidate = None
        self._release_held()
        return [self._close(self._open, reason)] if self._open is not None else []

    def _update_due(self, run: _Run, window: WindowSpan) -> bool:
        """An update of ``run``, the open event, is on: it took this window and ``update_s`` of video passed since
        the last."""
        return self.update_ns > 0 and run.end is window and window.end_mono_ns - self._sent_mono_ns >= self.update_ns

    def _release_held(self) -> None:
        """A candidate run ended without taking over: the windows held back stay in the open event."""
        if self._held is not None and self._open is not None:
            self._open.extend(self._held)
        self._held = None

    def _close(self, run: _Run, reason: str) -> EventMessage:
        """The end message of ``run``, the open event, which closes."""
        message = self._message(run, "end", reason)
        self._open = self._held = None
        return message

    def _message(self, run: _Run, phase: EventPhase, end_reason: str | None = None) -> EventMessage:
        """``run``, the open event, as a ``phase`` message (its running figures, or the final ones at ``end``)."""
        self._sent_mono_ns = run.end.end_mono_ns
        return EventMessage(
            camera_id=self.camera_id,
            id=self._open_id,
            phase=phase,
            label=self.labels[run.label],
            first_seq=run.start.first_seq,
            last_seq=run.end.last_seq,
            start_mono_ns=run.start.start_mono_ns,
            start_wall_ns=run.start.start_wall_ns,
            end_mono_ns=run.end.end_mono_ns,
            end_wall_ns=run.end.end_wall_ns,
            peak_score=round(run.peak, 6),
            mean_score=round(run.total / run.windows, 6),
            peak_seq=run.peak_seq,
            windows=run.windows,
            end_reason=end_reason,
        )
