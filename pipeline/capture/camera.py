"""The camera process: source -> decode -> sampling -> RGB, resize, centre crop -> shared-memory ring.

With ``decoder: ffmpeg`` the source crops, scales and converts the sampled frames itself
(:mod:`emim_stream.pipeline.capture.ffmpeg`), and the preprocessor is not used.

One spawned process per camera (``camera_main``). It never waits for the consumer: the ring
overwrites its oldest slots. Every frame is decoded; only the frames the model sees (the checkpoint's
clip sampling matched to this camera's frame rate, :mod:`emim_stream.engines.sampling`) are prepared and
written, unless the recorder wants every frame (then each is written, the model's samples marked). A
network source that drops is reopened with capped exponential backoff; the frames expected during the
outage (outage x nominal fps) are counted as lost and skipped in the frame numbers, and the sampling
restarts after a gap, so the consumer restarts its window. Problems go to the supervisor as one-line
notes over a pipe (credentials redacted by the sources).

Stopping: every wait of the process (backoff sleeps, the frame loop) watches the supervisor's stop
pipe, which also reads as closed when the parent dies, and a SIGTERM flag (the handler only sets
it; ``signal.set_wakeup_fd`` wakes a wait). On Linux ``PR_SET_PDEATHSIG`` kills the process at once
when its parent dies, even inside a blocking open or read.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import Connection, wait

from emim_stream.engines.errors import ConfigError
from emim_stream.engines.sampling import FrameSampler, SamplingPlan, SamplingRequest, plan_sampling
from emim_stream.pipeline.capture.preprocess import Preprocessor
from emim_stream.pipeline.capture.ring import SharedRing
from emim_stream.pipeline.capture.sources import PreparedFrame, SourceFrame, SourceInfo, SourceState, open_source
from emim_stream.pipeline.config import CameraConfig
from emim_stream.pipeline.errors import EndOfStream, SourceConnectionError, SourceError

__all__ = ["STATE_CODES", "CameraExit", "camera_main", "state_from_code"]

_log = logging.getLogger(__name__)

STATE_CODES: dict[SourceState, int] = {state: i for i, state in enumerate(SourceState)}
_STATUS_EVERY_NS = 250_000_000


def state_from_code(code: int) -> SourceState:
    """The :class:`SourceState` stored in a ring header as an int."""
    states = list(SourceState)
    return states[code] if 0 <= code < len(states) else SourceState.CONNECTING


class CameraExit:
    """Exit codes of a camera process (the supervisor restarts only on others, i.e. crashes)."""

    STOPPED = 0
    """Asked to stop, or the parent went away."""
    ENDED = 10
    """A finite source (a file without loop) has no more frames."""
    SOURCE_ERROR = 11
    """The source cannot work (missing file, corrupt video, no such camera): restarting would not help."""
    CONFIG_ERROR = 12
    """The settings cannot work with this source (a camera too slow for the model's sampling)."""


class _CaptureState:
    """State of the capture loop of one camera."""

    def __init__(
        self,
        cfg: CameraConfig,
        ring: SharedRing,
        notes: Connection,
        backoff: tuple[float, float],
        sampling: SamplingRequest,
        all_frames: bool,
    ) -> None:
        self.cfg, self.ring, self.notes = cfg, ring, notes
        self.pre = Preprocessor(ring.height, ring.width, cfg.resize)
        self.request, self.all_frames = sampling, all_frames
        # A restarted process continues after the last written frame, its samples after a gap.
        self.seq = ring.latest_seq + 1
        self.frame_seq = ring.latest_frame_seq + 1
        self.next_sample = ring.latest_sample_seq + 2 if ring.latest_sample_seq >= 0 else 0
        self.sampler: FrameSampler | None = None
        self.plan: SamplingPlan | None = None
        self.backoff_s, self.backoff_max_s = backoff
        self.reconnects = 0
        self.frames_lost = 0
        self.fps = 0.0
        self.size = (0, 0)
        self._last_status_ns = 0
        self._fps_window: list[int] = []

    def note(self, text: str) -> None:
        _log.warning("camera %s: %s", self.cfg.id, text)
        with contextlib.suppress(BrokenPipeError, OSError):
            self.notes.send(text)

    def status(self, state: SourceState, force: bool = False) -> None:
        now = time.monotonic_ns()
        if force or now - self._last_status_ns >= _STATUS_EVERY_NS:
            self._last_status_ns = now
            self.ring.set_status(STATE_CODES[state], self.fps, self.reconnects, self.frames_lost, *self.size)

    def start_sampling(self, fps: float) -> None:
        """A new sampling schedule for a source (re)opened at ``fps``; the plan is logged when it changes.

        Raises:
            ConfigError: the camera cannot deliver the model's sampling.
        """
        plan = plan_sampling(self.request, fps)
        if self.sampler is not None:
            self.next_sample = self.sampler.next_sample + 1  # a gap: no window spans the outage
        self.sampler = FrameSampler(plan, self.next_sample)
        if plan != self.plan:
            _log.info("camera %s: %s", self.cfg.id, plan.describe())
            if plan.repeated > 0:
                self.note(
                    f"the camera is slower than the model's sampling: {plan.repeated:.0%} of its samples repeat "
                    "the frame before"
                )
        self.plan = plan

    def feed(self, frame: SourceFrame | PreparedFrame) -> None:
        """Prepare and write ``frame`` if the model sees it (once per sample), or once for the recorder; a frame the
        FFmpeg decoder prepares is scaled here, on first use, or never."""
        if self.sampler is None:  # pragma: no cover - a caller bug
            raise RuntimeError("feed() before start_sampling()")
        first, count = self.sampler.offer(frame.source_pts_ns, frame.capture_mono_ns)
        if count or self.all_frames:
            image = frame.image if isinstance(frame, PreparedFrame) else self.pre(frame.image, bgr=True)
            writes = [(first, count)] if self.all_frames else [(first + k, 1) for k in range(count)]
            for sample, samples in writes:
                self.ring.write(
                    image, self.seq, frame.capture_mono_ns, frame.capture_wall_ns, frame.source_pts_ns,
                    self.frame_seq, sample, samples,
                )
                self.seq += 1
        self.frame_seq += 1

    def count_frame(self, now_ns: int) -> None:
        self._fps_window.append(now_ns)
        while self._fps_window and now_ns - self._fps_window[0] > 2_000_000_000:
            self._fps_window.pop(0)
        if len(self._fps_window) > 1:
            self.fps = (len(self._fps_window) - 1) * 1e9 / (self._fps_window[-1] - self._fps_window[0])


class StopWatch:
    """Whether the camera should stop: the stop pipe is readable (stop asked, or parent gone) or SIGTERM came.

    Args:
        stop: read end of the supervisor's stop pipe; the supervisor closes the write end to stop
            every camera, and the kernel closes it when the parent dies.
    """

    def __init__(self, stop: Connection) -> None:
        self._stop = stop
        self._terminated = False
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._terminated = True  # only a flag: the handler may run inside any wait of this thread

    def is_set(self) -> bool:
        """True when asked to stop (also when the parent process is gone)."""
        return self._terminated or self._stop.poll()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when asked to stop meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wake_r in wait([self._stop, self._wake_r], left):
                os.read(self._wake_r, 512)
        return True


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (the camera owns nothing to clean up)."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the prctl
        raise SystemExit(CameraExit.STOPPED)


def camera_main(
    cfg: CameraConfig,
    ring_name: str,
    stop: Connection,
    notes: Connection,
    sampling: SamplingRequest,
    all_frames: bool = False,
    backoff: tuple[float, float] = (0.5, 10.0),
    log_level: int = logging.WARNING,
) -> None:
    """Entry point of a camera process (spawned by :class:`emim_stream.pipeline.capture.supervisor.CameraSupervisor`).

    Args:
        cfg: this camera's config section.
        ring_name: the shared-memory ring to attach (created by the supervisor, which owns it).
        stop: read end of the supervisor's stop pipe (readable or closed: end the process).
        notes: write end of a pipe for one-line problem reports.
        sampling: the model's clip sampling (or the config's fixed interval) to meet.
        all_frames: write every frame, not only the model's samples (for the recorder).
        backoff: (first, max) reconnect delay in seconds; it doubles per failed attempt.
        log_level: logging level in this process.

    Exits with a :class:`CameraExit` code.
    """
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(processName)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent coordinates
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        _die_with_parent(parent.pid)
    watch = StopWatch(stop)
    ring = SharedRing.attach(ring_name)
    try:
        raise SystemExit(_capture_loop(_CaptureState(cfg, ring, notes, backoff, sampling, all_frames), watch))
    finally:
        ring.close()


def _capture_loop(cam: _CaptureState, stop: StopWatch) -> int:
    cfg = cam.cfg
    delay = cam.backoff_s
    down_since_ns: int | None = None
    info: SourceInfo | None = None
    while not stop.is_set():
        source = open_source(
            cfg.source,
            loop=cfg.loop,
            pace=cfg.pace,
            open_timeout_s=cfg.open_timeout_s,
            read_timeout_s=cfg.read_timeout_s,
            rtsp_transport=cfg.rtsp_transport,
            decoder=cfg.decoder,
            size=(cam.ring.height, cam.ring.width),
            resize=cfg.resize,
            hwaccel=cfg.hwaccel,
        )
        try:
            cam.status(SourceState.RECONNECTING if cam.reconnects else SourceState.CONNECTING, force=True)
            info = source.open()
            cam.size = (info.width, info.height)
            if down_since_ns is not None:  # frames the camera sent while we were away
                lost = int((time.monotonic_ns() - down_since_ns) / 1e9 * (info.fps or cam.fps))
                cam.frames_lost += lost
                cam.frame_seq += lost
                cam.note(f"reconnected after {(time.monotonic_ns() - down_since_ns) / 1e9:.1f} s, ~{lost} frames lost")
                down_since_ns = None
            delay = cam.backoff_s
            cam.start_sampling(info.fps)
            cam.status(SourceState.LIVE, force=True)
            while not stop.is_set():
                frame = source.read()
                if frame is None:
                    cam.status(source.state)
                    continue
                if frame.source_size != cam.size:
                    cam.size = frame.source_size
                    cam.note(f"source resolution changed to {cam.size[0]}x{cam.size[1]}")
                cam.feed(frame)
                cam.count_frame(frame.capture_mono_ns)
                cam.status(SourceState.LIVE)
        except EndOfStream:
            cam.status(SourceState.ENDED, force=True)
            return CameraExit.ENDED
        except SourceConnectionError as err:
            cam.reconnects += 1
            down_since_ns = down_since_ns or time.monotonic_ns()
            cam.note(f"{err}; reconnecting in {delay:.1f} s")
            cam.status(SourceState.RECONNECTING, force=True)
            if stop.wait(delay):
                break
            delay = min(delay * 2, cam.backoff_max_s)
        except ConfigError as err:
            cam.note(str(err))
            cam.status(SourceState.ENDED, force=True)
            return CameraExit.CONFIG_ERROR
        except SourceError as err:
            cam.note(str(err))
            cam.status(SourceState.ENDED, force=True)
            return CameraExit.SOURCE_ERROR
        finally:
            source.close()
    cam.status(SourceState.ENDED, force=True)
    return CameraExit.STOPPED
