"""Which frames of a camera a model sees: its clip sampling matched to the camera's frame rate, frame by frame.

A checkpoint states how its clips were sampled in time (:class:`emim_stream.engines.clip.ClipSampling`); a camera
delivers frames at its own rate. :func:`plan_sampling` matches the two once, when a source opens and its rate is
known, and a :class:`FrameSampler` then decides for every frame, in O(1), how many of the model's samples it
is (usually 0 or 1)::

    camera / model rate   plan                         e.g. (model 7.5 frames/s: 16x4 at 30 fps)
    an integer n (1%)     every n-th frame             30 fps: every 4th; 15 fps: every 2nd
    1 / an integer m      each frame m times           (model 30 frames/s) 15 fps: each frame twice
    anything else         the nearest frame to each    25 fps: frames 0, 3, 7, 10, 13, 17, ... (never drifting:
                          sampling time                the times are t0 + k x period, not accumulated)
    below 1/2             refused (ConfigError)        5 fps for a 30 frames/s model: most samples would repeat

Nearest frame: a frame with timestamp ``t`` stands for the sampling times in ``(t - d/2, t + d/2]``, ``d`` the
camera's frame period (the one the source states, else the median of its last intervals), in exact rational
arithmetic, so
a tie goes to the earlier frame and the choice equals an offline ``argmin |t_frame - t_k|`` over the same
timestamps. A sampling time more than ``d`` before the frame that follows it had no frame near it (frames were
lost): its sample number is skipped, so the consumer sees a gap and restarts its window, never a clip with a
hole in time.

Timestamps: the source's presentation times (a file's or the synthetic scene's own timeline, a stream's
camera clock) while they increase, else the capture times (``CLOCK_MONOTONIC``); a source whose presentation
times stop increasing is sampled by capture time from then on.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

from emim_stream.engines.clip import ClipSampling, ClipSpec
from emim_stream.engines.errors import ConfigError

__all__ = ["FrameSampler", "SamplingPlan", "SamplingRequest", "plan_sampling"]

_log = logging.getLogger(__name__)
_NS = 10**9
_RATIO_TOLERANCE = 0.01  # a camera within 1% of an integer multiple of the model's rate takes every n-th frame
_INTERVALS = 9  # a source that states no frame rate: its frame period is the median of this many intervals


def _fraction(value: float) -> Fraction:
    """An exact rational close to ``value`` (29.97 -> 2997/100), for drift-free arithmetic."""
    return Fraction(value).limit_denominator(1_000_000)


@dataclass(frozen=True)
class SamplingRequest:
    """What the model asks of every camera: its clip sampling, or a fixed interval that overrides it.

    Args:
        sampling: the checkpoint's (None: it states none and is fed consecutive frames).
        frames: clip length T (a uniformly sampled clip spreads T frames over its span).
        stride: sampled frames between classified windows (for the start-up line only).
        frame_interval: ``window.frame_interval`` / ``cameras[].frame_interval``: every N-th camera frame,
            whatever the camera's rate (mmaction2's ``frame_interval``, in the camera's own frames).
    """

    sampling: ClipSampling | None
    frames: int
    stride: int = 1
    frame_interval: int | None = None

    @classmethod
    def for_clip(cls, clip: ClipSpec, stride: int, frame_interval: int | None = None) -> SamplingRequest:
        """The request of a checkpoint's clip spec (``frame_interval``: the config's override, if any)."""
        return cls(clip.sampling, clip.frames, stride, frame_interval)

    def sampled_fps(self) -> Fraction | None:
        """The model's sampled frames per second; None when the camera's own rate decides."""
        if self.frame_interval is not None or self.sampling is None:
            return None
        fps = self.sampling.sampled_fps(self.frames)
        return None if fps is None else _fraction(fps)

    def describe(self) -> str:
        """Where the sampling comes from, in words."""
        if self.frame_interval is not None:
            return f"frame_interval {self.frame_interval} set in the config (the checkpoint's sampling is overridden)"
        if self.sampling is None:
            return "the checkpoint states no sampling: consecutive frames"
        return f"checkpoint: {self.sampling.describe(self.frames)}"


@dataclass(frozen=True)
class SamplingPlan:
    """How one camera meets a :class:`SamplingRequest` at its frame rate.

    Exactly one of ``every`` (every N-th frame, each ``repeat`` times) and ``period_ns`` (the nearest frame to
    each sampling time) is set.
    """

    request: SamplingRequest
    camera_fps: float
    """The rate the source states (0.0: unknown)."""
    every: int | None = None
    repeat: int = 1
    period_ns: Fraction | None = None
    frame_period_ns: Fraction | None = None
    """The camera's frame period (None: measured from the timestamps frame by frame)."""

    @property
    def sampled_fps(self) -> float | None:
        """Samples per second the camera gives the model (None: unknown camera rate and a rate-free request)."""
        if self.period_ns is not None:
            return float(_NS / self.period_ns)
        if self.camera_fps and self.every is not None:
            return self.camera_fps * self.repeat / self.every
        return None

    @property
    def repeated(self) -> float:
        """Share of the samples that repeat the frame before them (the camera is slower than the model)."""
        if self.every is not None:
            return 1 - 1 / self.repeat
        if self.frame_period_ns is None or self.period_ns is None:
            return 0.0
        return max(0.0, 1 - float(self.period_ns / self.frame_period_ns))

    def describe(self) -> str:
        """One line for the start of a run, e.g. ``30 fps camera: every 4th frame (7.5 frames/s, ...)``."""
        camera = f"{self.camera_fps:.4g} fps camera" if self.camera_fps else "camera of unstated fps"
        if self.every is not None:
            how = "every frame" if self.every == 1 else f"every {_ordinal(self.every)} frame"
            if self.repeat > 1:
                how += f", each {self.repeat} times"
        else:
            how = f"the nearest frame to every {float(self.period_ns or 0) / 1e6:.1f} ms"
        rate, frames, stride = self.sampled_fps, self.request.frames, self.request.stride
        if rate:
            span = f"a window's {frames} frames span {(frames - 1) / rate:.2f} s, one label every {stride / rate:.2f} s"
            return f"{camera}: {how} ({rate:.3g} frames/s; {span}); {self.request.describe()}"
        return f"{camera}: {how}; {self.request.describe()}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plan_sampling(request: SamplingRequest, camera_fps: float) -> SamplingPlan:
    """Match ``request`` to a camera of ``camera_fps`` (its stated rate; 0: unknown).

    Raises:
        ConfigError: the camera delivers less than half the model's sampled frames per second (most samples
            would repeat a frame); the message names the override settings.
    """
    camera_fps = camera_fps if math.isfinite(camera_fps) and camera_fps > 0 else 0.0
    frame_period = _NS / _fraction(camera_fps) if camera_fps else None
    rate = request.sampled_fps()
    if rate is None:
        every = request.frame_interval or (request.sampling.frame_interval if request.sampling else 1)
        return SamplingPlan(request, camera_fps, every=every, frame_period_ns=frame_period)
    if not camera_fps:
        return SamplingPlan(request, camera_fps, period_ns=_NS / rate)
    ratio = camera_fps / float(rate)
    if abs(ratio - round(ratio)) <= _RATIO_TOLERANCE * round(ratio) and round(ratio) >= 1:
        return SamplingPlan(request, camera_fps, every=round(ratio), frame_period_ns=frame_period)
    if ratio < 0.5 * (1 - _RATIO_TOLERANCE):
        raise ConfigError(
            f"the camera delivers {camera_fps:.4g} fps but the model samples {float(rate):.4g} frames/s "
            f"({request.describe()}); it needs a camera of at least {float(rate) / 2:.4g} fps, or set "
            "window.frame_interval (cameras[].frame_interval for one camera) to feed it every N-th frame instead"
        )
    if abs(1 / ratio - round(1 / ratio)) <= _RATIO_TOLERANCE * round(1 / ratio):
        return SamplingPlan(request, camera_fps, every=1, repeat=round(1 / ratio), frame_period_ns=frame_period)
    return SamplingPlan(request, camera_fps, period_ns=_NS / rate, frame_period_ns=frame_period)


class FrameSampler:
    """Decides, frame by frame and in O(1), which samples of the model each camera frame is.

    Sample numbers count the model's sampling times: consecutive numbers are consecutive samples of one clip;
    a skipped number is a sample without a frame (the consumer restarts its window there).

    Args:
        plan: from :func:`plan_sampling`.
        first_sample: the number of the first sample (a reopened source continues after a gap).
    """

    def __init__(self, plan: SamplingPlan, first_sample: int = 0) -> None:
        self.plan = plan
        self.next_sample = first_sample
        """The number the next sample gets (sampling times without a frame included)."""
        self._frames = 0
        self._use_pts: bool | None = None
        self._t0: int | None = None
        self._base = first_sample
        self._k = 0  # the next sampling time not yet given a frame, counted from t0
        self._prev_t: int | None = None
        self._intervals: deque[int] = deque(maxlen=_INTERVALS)

    def offer(self, pts_ns: int, capture_ns: int) -> tuple[int, int]:
        """A frame with its presentation time (-1: unknown) and capture time, in ns.

        Returns:
            ``(first, count)``: the frame is samples ``first .. first + count - 1``; ``count`` 0: the model never
            sees it (``first`` is then the next sample's number).
        """
        plan = self.plan
        if plan.every is not None:
            taken = self._frames % plan.every == 0
            self._frames += 1
            if not taken:
                return self.next_sample, 0
            first = self.next_sample
            self.next_sample += plan.repeat
            return first, plan.repeat
        period = plan.period_ns
        if period is None:  # pragma: no cover - plan_sampling sets every or period_ns
            raise ValueError(f"a sampling plan needs every or period_ns: {plan}")
        t = self._timestamp(pts_ns, capture_ns)
        if self._t0 is None or (self._prev_t is not None and t <= self._prev_t):
            self._restart(t)
        if self._prev_t is not None:
            self._intervals.append(t - self._prev_t)
        d = plan.frame_period_ns  # the camera's frame period, else the median of its last intervals
        if d is None:
            d = Fraction(statistics.median_low(self._intervals) if self._intervals else 0)
        x = t - (self._t0 if self._t0 is not None else t)
        start = max(self._k, math.ceil((x - d) / period))  # earlier sampling times had no frame near them
        end = math.floor((x + d / 2) / period)  # the last sampling time this frame is nearest to
        count = max(0, end - start + 1)
        self._k = max(start, end + 1)
        self._prev_t = t
        self.next_sample = self._base + self._k
        return self._base + start, count

    def _restart(self, t: int) -> None:
        """A new schedule from ``t``: the first frame, or timestamps that went backwards (a gap of one sample)."""
        if self._t0 is not None:
            self._base += self._k + 1
        self._t0, self._k, self._prev_t = t, 0, None
        self._intervals.clear()

    def _timestamp(self, pts_ns: int, capture_ns: int) -> int:
        if self._use_pts is None:
            self._use_pts = pts_ns >= 0
        if self._use_pts and (pts_ns < 0 or (self._prev_t is not None and pts_ns <= self._prev_t)):
            _log.warning("the source's presentation times stopped increasing: sampling by capture time from now on")
            self._use_pts = False
            self._restart(capture_ns)
        return pts_ns if self._use_pts else capture_ns
