"""Camera-process supervision: spawn, watch, restart with backoff, and clean up on every exit path.

The supervisor creates (and so owns) each camera's shared-memory ring and spawns its process.
A process that crashes (any exit code but the clean ones of :class:`emim_stream.pipeline.capture.camera.CameraExit`)
is restarted after a delay that doubles per restart up to a cap; the ring stays, so the new
process continues the sequence numbers. ``stop()`` closes the stop pipe, joins, terminates then
kills what is left, and unlinks every ring. If the main process itself dies, camera processes
die with it (``PR_SET_PDEATHSIG``; elsewhere they see the stop pipe close) and Python's resource
tracker unlinks the rings it owns. If the whole process group is killed, nothing is left to clean
up: the next start reclaims those rings (:func:`emim_stream.pipeline.capture.ring.reclaim_stale_rings`).

The supervisor uses no named semaphores (the stop signal is a pipe), so a killed run leaves
nothing in ``/dev/shm`` but its rings. Use it from one thread that outlives its cameras: Linux
sends the death signal when the thread that spawned a process ends, not only its process.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from emim_stream.engines.sampling import SamplingRequest
from emim_stream.pipeline.capture.camera import CameraExit, camera_main
from emim_stream.pipeline.capture.ring import SharedRing, reclaim_stale_rings
from emim_stream.pipeline.capture.sources import open_source
from emim_stream.pipeline.config import CameraConfig, SupervisorConfig

__all__ = ["CameraHandle", "CameraSupervisor"]

_log = logging.getLogger(__name__)
_JOIN_S = 3.0


@dataclass
class CameraHandle:
    """One supervised camera: its config, ring, process and history."""

    cfg: CameraConfig
    ring: SharedRing
    process: BaseProcess | None = None
    notes: Connection | None = None
    restarts: int = 0
    next_start_mono: float = 0.0
    finished: int | None = None
    """The clean exit code once the camera is done for good (ended, source or config error); None while it runs."""
    detail: str = ""
    """The latest one-line note from the camera process or the supervisor."""
    history: list[str] = field(default_factory=list)


class CameraSupervisor:
    """Owns the rings and processes of all cameras.

    Args:
        cameras: camera config sections.
        slots, height, width: ring geometry (frames are written at the model's input size).
        cfg: restart backoff settings.
        sampling: per camera id, the model's sampling it must deliver.
        all_frames: ids of the cameras that write every frame, the model's samples marked (the recorder wants
            them all).
    """

    def __init__(
        self,
        cameras: tuple[CameraConfig, ...],
        slots: int,
        height: int,
        width: int,
        cfg: SupervisorConfig,
        sampling: Mapping[str, SamplingRequest],
        all_frames: Collection[str] = (),
    ) -> None:
        for cam in cameras:  # bad source URIs fail here, in the main process, with the field named
            open_source(
                cam.source,
                loop=cam.loop,
                pace=cam.pace,
                open_timeout_s=cam.open_timeout_s,
                read_timeout_s=cam.read_timeout_s,
                rtsp_transport=cam.rtsp_transport,
                decoder=cam.decoder,
                size=(height, width),
                resize=cam.resize,
                hwaccel=cam.hwaccel,
            )
        self.cfg, self.sampling, self.all_frames = cfg, dict(sampling), frozenset(all_frames)
        self._ctx = multiprocessing.get_context("spawn")
        self._stop_r, self._stop_w = self._ctx.Pipe(duplex=False)
        self._stopping = False
        self.cameras: dict[str, CameraHandle] = {}
        reclaim_stale_rings()
        try:
            for cam in cameras:
                self.cameras[cam.id] = CameraHandle(cam, SharedRing.create(slots, height, width))
        except BaseException:
            self._unlink_all()
            raise

    def start(self) -> None:
        """Spawn every camera process."""
        for handle in self.cameras.values():
            self._spawn(handle)

    def _spawn(self, handle: CameraHandle) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        backoff = (self.cfg.restart_backoff_s, self.cfg.restart_backoff_max_s)
        process = self._ctx.Process(
            target=camera_main,
            args=(
                handle.cfg, handle.ring.name, self._stop_r, send, self.sampling[handle.cfg.id],
                handle.cfg.id in self.all_frames,
                backoff, logging.getLogger().level,
            ),
            name=f"camera-{handle.cfg.id}",
            daemon=True,
        )
        process.start()
        send.close()
        if handle.notes is not None:
            handle.notes.close()
        handle.process, handle.notes = process, receive

    def poll(self) -> list[tuple[str, str]]:
        """Collect notes, restart crashed processes when their backoff has passed.

        Returns:
            ``(camera_id, note)`` pairs that arrived since the last call.
        """
        notes: list[tuple[str, str]] = []
        now = time.monotonic()
        for cam_id, handle in self.cameras.items():
            notes += [(cam_id, text) for text in self._drain(handle)]
            process = handle.process
            if process is None or process.is_alive() or handle.finished is not None or self._stopping:
                if process is None and handle.finished is None and now >= handle.next_start_mono:
                    self._spawn(handle)
                continue
            code = process.exitcode
            process.join(0)
            if code in (CameraExit.ENDED, CameraExit.SOURCE_ERROR, CameraExit.CONFIG_ERROR):
                handle.finished = code
                continue
            handle.restarts += 1
            delay = min(self.cfg.restart_backoff_s * 2 ** (handle.restarts - 1), self.cfg.restart_backoff_max_s)
            text = f"camera process exited with code {code}; restarting in {delay:.1f} s"
            handle.detail = text
            notes.append((cam_id, text))
            _log.warning("camera %s: %s", cam_id, text)
            handle.process, handle.next_start_mono = None, now + delay
        return notes

    def _drain(self, handle: CameraHandle) -> list[str]:
        texts = []
        try:
            while handle.notes is not None and handle.notes.poll():
                texts.append(str(handle.notes.recv()))
        except (EOFError, OSError):  # the process died; a new pipe comes with the restart
            pass
        if texts:
            handle.detail = texts[-1]
            handle.history = (handle.history + texts)[-20:]
        return texts

    def all_finished(self) -> bool:
        """True when every camera is done for good (ended or failed)."""
        return all(h.finished is not None for h in self.cameras.values())

    def stop(self) -> None:
        """Stop every camera process and unlink every ring (idempotent)."""
        self._stopping = True
        self._stop_w.close()  # every camera's stop pipe now reads as closed
        deadline = time.monotonic() + _JOIN_S
        for handle in self.cameras.values():
            if handle.process is not None:
                handle.process.join(max(0.0, deadline - time.monotonic()))
        for handle in self.cameras.values():
            process = handle.process
            if process is not None and process.is_alive():
                _log.warning("camera %s: process did not stop in %.0f s; terminating", handle.cfg.id, _JOIN_S)
                process.terminate()
                process.join(1.0)
                if process.is_alive():
                    process.kill()
                    process.join(1.0)
            if handle.notes is not None:
                handle.notes.close()
                handle.notes = None
        self._stop_r.close()
        self._unlink_all()

    def _unlink_all(self) -> None:
        for handle in self.cameras.values():
            handle.ring.close()
            handle.ring.unlink()

    def __enter__(self) -> CameraSupervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
