"""Helpers for end-to-end tests: real `emim-stream run` processes, real sockets, leak checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.loopback import free_port  # noqa: F401 - the tests here import it from this module
from tests.mqtt_broker import mosquitto  # noqa: F401 - a fixture for the tests here
from tests.rtsp_rig import rtsp_camera  # noqa: F401 - a fixture for the tests here

ROOT = Path(__file__).resolve().parents[2]


def rings_of(*owners: int) -> set[str]:
    """The shared-memory rings in /dev/shm that the processes ``owners`` created (named emim_<pid>_...).

    Only these: other pipelines on the box (a test session beside this one) come and go meanwhile.
    """
    prefixes = tuple(f"emim_{pid}_" for pid in owners)
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(prefixes)}
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


def children_of(pid: int) -> set[int]:
    """Direct child processes of ``pid`` (none when it is gone)."""
    try:
        return {child.pid for child in psutil.Process(pid).children()}
    except psutil.NoSuchProcess:
        return set()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class PipelineProcess:
    """`emim-stream run` in a subprocess with a config written for the test."""

    def __init__(self, tmp_path: Path, config: dict, duration: float | None = None, extra: tuple[str, ...] = ()):
        self.config_path = tmp_path / "pipeline.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        args = [sys.executable, "-m", "emim_stream.cli", "run", "--config", str(self.config_path), *extra]
        if duration is not None:
            args += ["--duration", str(duration)]
        self.log = open(tmp_path / "run.log", "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.seen_children: set[int] = set()

    def watch_children(self) -> set[int]:
        self.seen_children |= children_of(self.proc.pid)
        return self.seen_children

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"pipeline did not exit within {timeout} s:\n{self.output()[-3000:]}") from None

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def engine_section(**extra) -> dict:
    """A small, fast untrained engine for runtime tests (the runtime does not care what it predicts)."""
    return {
        "backend": "torch",
        "device": "cpu",
        "model": "emim_xs",
        "frames": 4,
        "height": 64,
        "width": 64,
        "threads": 1,
        **extra,
    }


@pytest.fixture
def pipeline_factory(tmp_path):
    started: list[PipelineProcess] = []

    def start(config: dict, duration: float | None = None, extra: tuple[str, ...] = ()) -> PipelineProcess:
        p = PipelineProcess(tmp_path, config, duration, extra)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(c) for c in p.seen_children):
            time.sleep(0.05)
        leftover = [c for c in p.seen_children if alive(c)]
        for c in leftover:
            os.kill(c, signal.SIGKILL)
        assert not leftover, f"camera processes outlived the pipeline: {leftover}"
    left = rings_of(*(p.proc.pid for p in started))
    assert not left, f"shared memory left behind: {left}"
