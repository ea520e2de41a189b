"""Fault matrix: how `emim-stream run` stops and fails, per process-level fault and camera state.

Each case starts a real `emim-stream run` as the leader of its own process group (as systemd and docker
run it), waits until camera ``a`` is in the wanted state (read from its ``status/a/`` messages), applies
one fault and asserts: the exit status, the time to exit, that no process of the group is left and that
no ``/dev/shm`` file the group had mapped (ring segments, semaphores) is left; for SIGKILL of the whole
group, after the next start, which must reclaim the rings and say so.

States of camera ``a``: ``live`` (a synthetic camera), ``reconnecting`` (an RTSP URL on a port where
nothing listens) and ``ended`` (a short video file that has ended; a second, live camera keeps the run
going). Faults: SIGTERM / SIGINT to the group, SIGKILL of main, SIGKILL of the group, SIGKILL of the
camera process (it must be restarted, then SIGTERM ends the run), SIGSTOP of the camera (then SIGTERM
ends the run: the supervisor kills what does not stop). An ended camera has no process, so the two
camera faults do not apply to it: 16 cases, and the 6 faults of the reconnecting state again with the OpenCV decoder
(the others use FFmpeg's, the default). Recording cases follow: SIGKILL of the group while recording
(every file plays), SIGTERM and SIGKILL of the group while a camera's main stream is recorded as it comes from a
real RTSP camera (no process left, every segment decodes), a full disk (an ERROR line within a second, the camera's
status, the summary) and a read-only record directory (one line, exit 2). Last, a first run stopped while its
engine is built in the background (Ctrl-C 5 s in, SIGTERM 30 s in, ``--duration`` ending first): the build's own
process group ends with the run, and nothing is left and nothing warns.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml

from emim_stream.pipeline.comms.subscribe import Subscriber
from tests.integration.conftest import ROOT, engine_section, free_port
from tests.rtsp_rig import rtsp_camera  # noqa: F401 - a fixture
from tests.tmpfs import filling, remount, small_tmpfs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fault matrix reads /proc and /dev/shm (Linux)")

CLEAN_EXIT_S = 10.0
"""A clean stop (SIGTERM/SIGINT) must end the whole group within this (measured on an idle 2-core box: 0.6-2 s;
the margin is for a loaded CI machine; a hang is what this catches)."""
STOPPED_CAMERA_EXIT_S = 15.0
"""With a SIGSTOPped camera: the supervisor's 3 s join, then terminate and kill (1 s each), plus that margin."""
ORPHAN_EXIT_S = 5.0
"""After SIGKILL of main, its camera processes and resource tracker must be gone within this (measured: < 0.3 s)."""

STATES = ("live", "reconnecting", "ended")
FAULTS = ("term-group", "int-group", "kill-main", "kill-group", "kill-camera", "stop-camera")
CASES = [
    pytest.param(state, fault, "ffmpeg", id=f"{fault}-{state}")
    for fault in FAULTS
    for state in STATES
    if not (state == "ended" and fault.endswith("-camera"))
] + [pytest.param("reconnecting", fault, "opencv", id=f"{fault}-reconnecting-opencv") for fault in FAULTS]
"""Cameras read files and streams with the default decoder (FFmpeg in the camera process); the reconnecting cases run
with the OpenCV decoder too."""


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...); None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_pids(pgid: int) -> set[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[2] == str(pgid) and fields[0] != "Z":
            pids.add(int(entry))
    return pids


def camera_pids(pgid: int) -> set[int]:
    """The group's camera processes (spawned children that are not the resource tracker)."""
    found = set()
    for pid in group_pids(pgid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.add(pid)
    return found


def shm_files(pids: set[int]) -> set[str]:
    """``/dev/shm`` files (rings, semaphores) that processes ``pids`` have mapped."""
    files = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            path = line.split(maxsplit=5)[-1]
            if path.startswith("/dev/shm/"):
                files.add(path.removesuffix(" (deleted)"))
    return files


def wait_until(predicate, timeout_s: float, what: str, log: Path) -> float:
    """Poll ``predicate`` until true; returns the seconds it took, fails naming ``what`` with the run's log."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} not within {timeout_s} s; run log:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def ended_video(tmp_path_factory) -> Path:
    """A 1 s video file (10 frames at 10 fps, 64x48)."""
    path = tmp_path_factory.mktemp("video") / "short.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, dtype=np.uint8))
    writer.release()
    return path


def config_for(state: str, port: int, video: Path, decoder: str = "ffmpeg") -> dict:
    live = {"id": "b", "source": "synthetic://?seed=3&fps=15&size=64x48"}
    camera = {
        "live": {"id": "a", "source": "synthetic://?seed=1&fps=15&size=64x48"},
        "reconnecting": {"id": "a", "source": f"rtsp://127.0.0.1:{free_port()}/cam", "open_timeout_s": 2.0},
        "ended": {"id": "a", "source": str(video)},
    }[state] | {"decoder": decoder}
    return {
        "cameras": [camera, live] if state == "ended" else [camera],
        "engine": engine_section(),
        "window": {"stride": 4},
        "postprocess": {"print_labels": False},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.2},
        "supervisor": {"restart_backoff_s": 0.2, "restart_backoff_max_s": 1.0},
    }


class Run:
    """`emim-stream run` as the leader of a new process group."""

    def __init__(self, tmp_path: Path, config: dict, name: str, *extra: str) -> None:
        cfg_path = tmp_path / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        self.log = tmp_path / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "emim_stream.cli", "run", "--config", str(cfg_path), *extra],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text()

    def kill_all(self) -> None:
        """Test cleanup: whatever is left of the group gets SIGCONT and SIGKILL."""
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
        if self.proc.poll() is None:
            self.proc.wait(5)


def wait_for_state(endpoint: str, state: str, run: Run, timeout_s: float = 60) -> None:
    """Block until a ``status/a/`` message reports ``state``."""
    deadline = time.monotonic() + timeout_s
    with Subscriber(endpoint, topics=(b"status/a/",), timeout_s=1.0) as sub:
        while time.monotonic() < deadline:
            got = sub.recv(0.5)
            if got is not None and got.payload["state"] == state:
                return
            if run.proc.poll() is not None:
                break
    raise AssertionError(f"camera a never reported {state!r}; run log:\n{run.output()[-3000:]}")


@pytest.mark.parametrize(("state", "fault", "decoder"), CASES)
def test_fault(tmp_path, ended_video, state, fault, decoder, record_property):
    port = free_port()
    run = Run(tmp_path, config_for(state, port, ended_video, decoder), "run")
    try:
        wait_for_state(f"tcp://127.0.0.1:{port}", state, run)
        cameras = camera_pids(run.pgid)
        assert cameras, "no camera process found"
        files = shm_files(group_pids(run.pgid))
        assert any(Path(f).name.startswith(f"emim_{run.pgid}_") for f in files), f"no ring mapped: {files}"
        start = time.monotonic()

        if fault in ("term-group", "int-group"):
            os.killpg(run.pgid, signal.SIGTERM if fault == "term-group" else signal.SIGINT)
            assert run.proc.wait(30) == 0, run.output()[-3000:]
            limit = CLEAN_EXIT_S
        elif fault == "kill-main":
            run.proc.kill()
            assert run.proc.wait(5) == -signal.SIGKILL
            limit = ORPHAN_EXIT_S
        elif fault == "kill-group":
            os.killpg(run.pgid, signal.SIGKILL)
            assert run.proc.wait(5) == -signal.SIGKILL
            limit = ORPHAN_EXIT_S
        else:
            (camera,) = cameras  # the only camera in the states a camera fault applies to
            if fault == "kill-camera":
                os.kill(camera, signal.SIGKILL)
                wait_until(lambda: camera_pids(run.pgid) - {camera}, 20, "a restarted camera process", run.log)
                wait_for_state(f"tcp://127.0.0.1:{port}", state, run)
                files |= shm_files(group_pids(run.pgid))
                limit = CLEAN_EXIT_S
            else:
                os.kill(camera, signal.SIGSTOP)
                time.sleep(0.5)
                limit = STOPPED_CAMERA_EXIT_S
            start = time.monotonic()
            os.killpg(run.pgid, signal.SIGTERM)
            assert run.proc.wait(30) == 0, run.output()[-3000:]

        wait_until(lambda: not group_pids(run.pgid), 30, "the end of every process of the group", run.log)
        took = time.monotonic() - start
        record_property("seconds_to_exit", round(took, 2))
        print(f"{fault} / {state}: whole group gone {took:.2f} s after the fault")
        assert took < limit, f"the group took {took:.2f} s to exit (limit {limit} s)"
        if fault != "kill-group":
            assert "Traceback" not in run.output(), run.output()[-3000:]
            wait_until(lambda: not any(os.path.exists(f) for f in files), 3, f"removal of {files}", run.log)
            return

        left = {f for f in files if os.path.exists(f)}
        rings = {f for f in left if Path(f).name.startswith("emim_")}
        assert rings, "SIGKILL of the group should leave the rings for the next start to reclaim"
        nxt_port = free_port()
        nxt = Run(tmp_path, config_for("live", nxt_port, ended_video), "next", "--duration", "0.5")
        try:
            assert nxt.proc.wait(60) == 0, nxt.output()[-3000:]
        finally:
            nxt.kill_all()
        out = nxt.output()
        assert "Traceback" not in out
        # Every start reclaims every stale ring on the box (its log line is checked in test_stale_rings.py): on a
        # shared machine another pipeline starting meanwhile may get there first, so only the result is checked
        still = {f for f in left if os.path.exists(f)}
        assert not still, f"left in /dev/shm after the next start: {still}"
    finally:
        run.kill_all()



# --- recording faults: SIGKILL while recording, a full disk, a read-only directory --------------------------------

SEGMENT_S = 5.0
"""Segment length of the recording cases (short, so a 20 s recording spans several segments)."""


def ffprobe_frames(path: Path) -> int | None:
    """Video frames ffprobe reads from ``path``; None when it cannot read the file."""
    done = subprocess.run(
        ["ffprobe", "-v", "quiet", "-select_streams", "v:0", "-count_packets", "-show_entries",
         "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    count = done.stdout.strip().rstrip(",")
    return int(count) if done.returncode == 0 and count.isdigit() else None


def recording_config(port: int, directory: Path) -> dict:
    config = config_for("live", port, Path("unused"))
    config["cameras"][0]["source"] = "synthetic://?seed=1&fps=15&size=96x96"
    config["record"] = {"dir": str(directory), "segment_s": SEGMENT_S, "height": 192, "retry_s": 1.0}
    return config


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe (apt-get install ffmpeg)")
def test_sigkill_while_recording_loses_at_most_the_last_fragment(tmp_path, record_property):
    """SIGKILL of the group 20 s into a recording: every file plays, the playable total within one segment."""
    port, directory = free_port(), tmp_path / "rec"
    run = Run(tmp_path, recording_config(port, directory), "run")
    try:
        wait_for_state(f"tcp://127.0.0.1:{port}", "live", run)
        wait_until(lambda: list(directory.glob("a_*.mp4")), 60, "the first segment", run.log)
        started = time.monotonic()
        time.sleep(20)
        os.killpg(run.pgid, signal.SIGKILL)
        recorded_s = time.monotonic() - started
        assert run.proc.wait(5) == -signal.SIGKILL
    finally:
        run.kill_all()
    files = sorted(directory.glob("a_*.mp4"))
    frames = {f.name: ffprobe_frames(f) for f in files}
    assert all(frames[f.name] for f in files[:-1]), f"every file but the one being written plays: {frames}"
    # the next start reclaims the rings and removes a segment killed before its first fragment
    nxt = Run(tmp_path, recording_config(free_port(), directory), "next", "--duration", "0.5")
    try:
        assert nxt.proc.wait(60) == 0, nxt.output()[-3000:]
    finally:
        nxt.kill_all()
    if not frames[files[-1].name]:
        assert not files[-1].exists() and "left unplayable by an earlier run" in nxt.output()
        files = files[:-1]
    playable_s = sum(frames[f.name] for f in files) / 15.0
    record_property("recorded_s", round(recorded_s, 2))
    record_property("playable_s", round(playable_s, 2))
    print(f"recorded {recorded_s:.1f} s in {len(files)} segments, playable after SIGKILL {playable_s:.1f} s")
    assert len(files) >= 20 / SEGMENT_S
    assert recorded_s - SEGMENT_S <= playable_s <= recorded_s + SEGMENT_S


@pytest.mark.parametrize("fault", ["term-group", "kill-group"])
def test_a_main_stream_recording_ends_with_the_group_and_every_segment_plays(tmp_path, rtsp_camera, fault):  # noqa: F811
    """A camera on its sub-stream, its main stream recorded as it comes (``record_source``, a thread of the main
    process): SIGTERM or SIGKILL of the group leaves no process, and every segment decodes from its first key frame
    to its end (after SIGKILL, once the next start cut the half-written fragment)."""
    camera = rtsp_camera(size=(640, 360), sub_size=(320, 240))
    port, directory = free_port(), tmp_path / "rec"
    config = recording_config(port, directory)
    config["cameras"][0].update(source=camera.sub_url, record_source=camera.url, open_timeout_s=2.0, read_timeout_s=2.0)
    run = Run(tmp_path, config, "run")
    try:
        wait_for_state(f"tcp://127.0.0.1:{port}", "live", run)
        wait_until(lambda: len(list(directory.glob("a_*.mp4"))) >= 2, 60, "a second segment", run.log)
        time.sleep(1.0)  # into the second segment
        os.killpg(run.pgid, signal.SIGTERM if fault == "term-group" else signal.SIGKILL)
        assert run.proc.wait(30) == (0 if fault == "term-group" else -signal.SIGKILL), run.output()[-3000:]
        wait_until(lambda: not group_pids(run.pgid), 15, "the end of every process of the group", run.log)
    finally:
        run.kill_all()
    if fault == "kill-group":
        # the next start looks at the leftover; its main stream is unreachable, so it adds no file
        config["cameras"][0].update(source="synthetic://?seed=1&fps=15&size=96x96", record_source="rtsp://127.0.0.1:9/x")
        config["publish"]["endpoint"] = f"tcp://127.0.0.1:{free_port()}"
        nxt = Run(tmp_path, config, "next", "--duration", "0.5")
        try:
            assert nxt.proc.wait(60) == 0, nxt.output()[-3000:]
        finally:
            nxt.kill_all()
    files = sorted(directory.glob("a_*.mp4"))
    assert len(files) >= 2
    for path in files:
        with av.open(str(path)) as container:
            pictures = list(container.decode(video=0))
        assert pictures and pictures[0].key_frame and (pictures[0].width, pictures[0].height) == (640, 360), path


def test_a_full_disk_while_recording_is_an_error_line_a_status_and_a_summary(tmp_path):
    port = free_port()
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\1" * 1_700_000)
        run = Run(tmp_path, recording_config(port, disk / "rec"), "run")
        try:
            wait_for_state(f"tcp://127.0.0.1:{port}", "live", run)
            with filling(disk) as filled_at:
                wait_until(lambda: "No space left on device" in run.output(), 60, "the ERROR line", run.log)
            took = time.monotonic() - filled_at[0]
            print(f"ERROR line {took:.2f} s after the disk filled")
            assert took < 1.0
            with Subscriber(f"tcp://127.0.0.1:{port}", topics=(b"status/a/",), timeout_s=1.0) as sub:
                status = next(
                    got.payload["outputs"]["record"] for got in sub.iter_messages(total_timeout_s=10)
                )
            assert status["state"] == "write_error" and status["lost"] > 0 and "No space" in status["detail"]
            os.killpg(run.pgid, signal.SIGTERM)
            assert run.proc.wait(30) == 0, run.output()[-3000:]
        finally:
            run.kill_all()
        out = run.output()
        assert "Traceback" not in out
        (line,) = [x for x in out.splitlines() if x.startswith("recording a:")]
        lost = int(line.split(", ")[-1].split(" frames lost to write errors")[0])
        assert lost > 0, line
        unreadable = [f for f in (disk / "rec").glob("*.mp4") if not ffprobe_frames(f)]
        assert not unreadable, f"no unreadable file is left: {unreadable}"


def test_a_read_only_record_directory_is_one_line_and_exit_2(tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        remount(disk, "ro")
        run = Run(tmp_path, recording_config(free_port(), disk), "run", "--duration", "5")
        try:
            assert run.proc.wait(60) == 2
        finally:
            run.kill_all()
    out = run.output()
    assert "Traceback" not in out
    assert f"record.dir: '{disk}' is not writable" in out


# --- stopping a first run while its engine is being built ----------------------------------------------------------

BUILD_EXIT_S = 15.0
"""A stop during the build: the loop's clean stop, then the build's group gets SIGTERM (5 s grace, then SIGKILL)."""


def build_config(port: int, cache: Path) -> dict:
    """A new user's first run (the shipped demo model, aoti on the CPU) on an empty cache: the run serves eagerly
    while the package builds."""
    return {
        "cameras": [{"id": "a", "source": "synthetic://?seed=1&fps=15&size=64x48"}],
        "engine": {"backend": "aoti", "device": "cpu", "checkpoint": "emim_xs.demo", "plan_cache_dir": str(cache)},
        "window": {"stride": 4},
        "postprocess": {"print_labels": False},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.2},
    }


def build_pid(run: Run) -> int:
    """The build process (leader of its own process group), from the run's announcement of the build."""
    found: list[int] = []

    def announced() -> bool:
        found[:] = [int(m) for m in re.findall(r"in the background \(process (\d+),", run.output())]
        return bool(found) or run.proc.poll() is not None

    wait_until(announced, 120, "the announcement of the background build", run.log)
    assert found, f"no background build announced; run log:\n{run.output()[-3000:]}"
    return found[0]


def assert_first_run_ended_cleanly(run: Run, build: int, files: set[str]) -> None:
    """Exit 0, no process of either group left, nothing left in /dev/shm, no warning of Python or a library."""
    assert run.proc.wait(60) == 0, run.output()[-3000:]
    wait_until(lambda: not group_pids(run.pgid) and not group_pids(build), 30, "the end of both groups", run.log)
    wait_until(lambda: not any(os.path.exists(f) for f in files), 3, f"removal of {files}", run.log)
    out = run.output()
    noisy = [line for line in out.splitlines() if re.search(r"Warning|leaked| WARNING |Traceback", line)]
    assert not noisy, "\n".join(noisy)
    announced = [line for line in out.splitlines() if f"(process {build}," in line]
    assert len(announced) == 1 and " INFO " in announced[0], announced


@pytest.mark.parametrize(
    ("phase", "after_s", "sig"),
    [
        pytest.param("export", 5, signal.SIGINT, id="ctrl-c-5s"),
        pytest.param("compile", 30, signal.SIGTERM, id="term-30s"),
    ],
)
def test_stop_during_the_engine_build(tmp_path, phase, after_s, sig):
    """Ctrl-C 5 s into the build, SIGTERM 30 s into it (and at least 5 s into the compiler, where a pool of
    compile workers would leave semaphores): the build's whole tree ends with the run, quietly."""
    port = free_port()
    run = Run(tmp_path, build_config(port, tmp_path / "cache"), "run")
    build = None
    try:
        build = build_pid(run)
        announced = time.monotonic()
        if phase == "compile":
            wait_until(lambda: "2/2 AOTInductor compile" in run.output(), 900, "the compile step", run.log)
            time.sleep(5)
        time.sleep(max(0.0, announced + after_s - time.monotonic()))
        assert "package built" not in run.output(), "the build ended before the stop: nothing to test"
        files = shm_files(group_pids(run.pgid) | group_pids(build))
        assert any(Path(f).name.startswith(f"emim_{run.pgid}_") for f in files), f"no ring mapped: {files}"
        start = time.monotonic()
        os.killpg(run.pgid, sig)
        assert_first_run_ended_cleanly(run, build, files)
        took = time.monotonic() - start
        print(f"stop {after_s} s into the build ({phase}): both groups gone {took:.2f} s after the signal")
        assert took < BUILD_EXIT_S, f"the run and its build took {took:.2f} s to exit (limit {BUILD_EXIT_S} s)"
    finally:
        run.kill_all()
        if build is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(build, signal.SIGKILL)


def test_a_first_run_whose_duration_ends_during_the_build_exits_quietly(tmp_path):
    """The acceptance case of a new user's first `run --duration`: exit 0, no warning, nothing left behind."""
    port = free_port()
    run = Run(tmp_path, build_config(port, tmp_path / "cache"), "run", "--duration", "8")
    build = None
    try:
        build = build_pid(run)
        wait_for_state(f"tcp://127.0.0.1:{port}", "live", run)
        files = shm_files(group_pids(run.pgid) | group_pids(build))
        assert any(Path(f).name.startswith(f"emim_{run.pgid}_") for f in files), f"no ring mapped: {files}"
        assert_first_run_ended_cleanly(run, build, files)
        assert "package built" not in run.output(), "the build ended within the run: nothing to test"
    finally:
        run.kill_all()
        if build is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(build, signal.SIGKILL)
