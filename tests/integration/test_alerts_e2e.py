"""End to end on a real Mosquitto, read by ``mosquitto_sub`` (Mosquitto's own client): the event lifecycle, the box's
availability with its last will, and Home Assistant discovery across three starts of ``emim-stream run``.

1. Two cameras, discovery on: each event's ``start``, ``update``s and ``end`` carry one id and arrive in order; the
   discovery configs are valid JSON with the fields Home Assistant requires; SIGTERM gives ``stopped``.
2. The same config again: the same configs (stable ids); SIGKILL of the whole process group makes the broker deliver
   the last will, ``offline``, within 1.5 x the keep-alive.
3. Camera ``cam2`` removed from the config: its configs are cleared, ``cam1``'s stay; SIGSTOP of the group (a box
   that hangs, or loses its network) gives ``offline`` within 1.5 x the keep-alive (+ the broker's whole-second clock),
   SIGCONT gives ``online`` again, SIGTERM ``stopped``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.integration.conftest import ROOT, engine_section, free_port, rings_of
from tests.mqtt_broker import MISSING

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

MOSQUITTO_SUB = shutil.which("mosquitto_sub")
KEEPALIVE_S = 5
BROKER_CHECK_S = 5.0
"""How much later than 1.5 x keep-alive Mosquitto 2.0 may send the last will of a silent client: it counts in whole
seconds (a client is dropped once more than floor(1.5 x keep-alive) whole seconds have passed: up to 2 s late) and
checks about once a second, and a loaded 2-core box adds its scheduling delays (measured 6.8 to over 10 s for a
keep-alive of 5 s)."""
ENTITIES_PER_CAMERA = 4


class MosquittoSub:
    """``mosquitto_sub`` printing ``<arrival unix time> <retain> <topic> <payload>`` per message, read by a thread."""

    def __init__(self, port: int, *topics: str) -> None:
        args = [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-F", "%U %r %t %p"]
        for topic in topics:
            args += ["-t", topic]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str, str]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            stamp, _, topic, payload = line.rstrip("\n").split(" ", 3)
            with self.cond:
                self.lines.append((float(stamp), topic, payload))
                self.cond.notify_all()

    def wait_for(self, predicate, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.lines), timeout_s)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def retained_bytes(port: int, topic_filter: str) -> dict[str, bytes]:
    """The retained payloads under ``topic_filter`` as bytes (``mosquitto_sub`` prints them in hex)."""
    out = subprocess.run(
        [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-t", topic_filter, "--retained-only", "-W", "2",
         "-F", "%t %x"], capture_output=True, text=True, timeout=20,
    ).stdout  # fmt: skip
    return {topic: bytes.fromhex(payload) for topic, payload in (line.split(" ", 1) for line in out.splitlines())}


def retained(port: int, topic_filter: str) -> dict[str, dict]:
    """The retained JSON messages under ``topic_filter``, as ``mosquitto_sub --retained-only`` reads them."""
    out = subprocess.run(
        [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-t", topic_filter, "--retained-only", "-W", "2", "-v"],
        capture_output=True, text=True, timeout=20,
    ).stdout  # fmt: skip
    return {topic: json.loads(payload) for topic, payload in (line.split(" ", 1) for line in out.splitlines())}


class Run:
    """``emim-stream run`` as the leader of a new process group."""

    def __init__(self, tmp_path: Path, name: str, config: dict) -> None:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = tmp_path / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "emim_stream.cli", "run", "--config", str(path)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text()

    def signal(self, sig: int) -> float:
        """Send ``sig`` to the whole group; returns the wall-clock time it was sent."""
        sent = time.time()
        os.killpg(self.proc.pid, sig)
        return sent

    def kill_all(self) -> None:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
        if self.proc.poll() is None:
            self.proc.wait(5)


def config(broker_port: int, cameras: list[str]) -> dict:
    return {
        "cameras": [{"id": c, "source": f"synthetic://?seed={i + 1}&fps=15&size=64x48"} for i, c in enumerate(cameras)],
        "engine": engine_section(),
        "window": {"stride": 4},
        "postprocess": {"print_labels": False},
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "heartbeat_s": 0.5, "stats_s": 1.0},
        # an untrained model: every window's best label passes enter, so an event opens at once and ends when
        # another label takes over or the run stops; an update every half second of video in between
        "events": {"enter": 0.01, "exit": 0.0, "min_windows": 1, "update_s": 0.5},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "box_id": "box1", "prefix": "fleet", "home_assistant": True,
                 "keepalive_s": KEEPALIVE_S, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
    }  # fmt: skip


def availability(lines) -> list[tuple[float, str]]:
    """(arrival time, payload) of every availability message."""
    return [(stamp, payload) for stamp, topic, payload in lines if topic == "fleet/box1/available"]


def now_available(lines) -> str | None:
    """The last availability payload received (None: none yet)."""
    seen = availability(lines)
    return seen[-1][1] if seen else None


def check_discovery(configs: dict[str, dict], cameras: list[str]) -> None:
    """Valid configs with the fields Home Assistant requires, for exactly these cameras and the box."""
    pattern = re.compile(r"homeassistant/(sensor|binary_sensor|event|image)/emim_box1/([A-Za-z0-9_-]+)/config")
    assert len(configs) == 2 + ENTITIES_PER_CAMERA * len(cameras), sorted(configs)
    for topic, cfg in configs.items():
        match = pattern.fullmatch(topic)
        assert match, topic
        assert cfg["unique_id"] == f"emim_box1_{match[2]}"
        assert cfg["state_topic" if match[1] != "image" else "image_topic"].startswith("fleet/box1/")
        assert cfg["availability"][0]["topic"] == "fleet/box1/available"
        assert cfg["device"]["identifiers"][0].startswith("emim_box1")
    named = {cfg["device"]["name"] for cfg in configs.values()} - {"emim-stream box1"}
    assert named == set(cameras)


def test_lifecycle_availability_and_discovery_over_three_starts(tmp_path, mosquitto, record_property):
    broker = mosquitto()
    sub = MosquittoSub(broker.port, "fleet/box1/+/event", "fleet/box1/available")
    runs: list[Run] = []
    try:
        # 1: lifecycle, discovery, clean stop
        runs.append(first := Run(tmp_path, "first", config(broker.port, ["cam1", "cam2"])))
        updated = lambda lines: sum('"phase":"update"' in p for _, _, p in lines) >= 4  # noqa: E731
        assert sub.wait_for(updated, 120), first.output()[-3000:]
        first.signal(signal.SIGTERM)
        assert first.proc.wait(30) == 0, first.output()[-3000:]
        assert sub.wait_for(lambda lines: now_available(lines) == "stopped", 10)
        with sub.cond:
            events = [json.loads(p) for _, t, p in sub.lines if t.endswith("/event")]
        by_id: dict[str, list[dict]] = {}
        for event in events:
            by_id.setdefault(event["id"], []).append(event)
        for event_id, messages in by_id.items():
            phases = "".join(m["phase"][0] for m in messages)  # s, u, e
            assert re.fullmatch("su*e", phases), (event_id, phases)
            seqs = [m["msg_seq"] for m in messages]
            assert seqs == sorted(seqs) and len({m["camera_id"] for m in messages}) == 1
            assert messages[-1]["end_reason"] in ("takeover", "stopped")
            assert all(m["label"] == messages[0]["label"] for m in messages)
        assert {m["camera_id"] for m in events} == {"cam1", "cam2"}
        assert all(m["has_snapshot"] for m in events)
        snapshots = retained_bytes(broker.port, "fleet/box1/+/snapshot")
        assert set(snapshots) == {"fleet/box1/cam1/snapshot", "fleet/box1/cam2/snapshot"}
        for jpeg in snapshots.values():
            picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert picture is not None and picture.shape[0] > 360  # the picture at record.height and the band
        assert [p for _, p in availability(sub.lines)] == ["online", "stopped"]
        configs = retained(broker.port, "homeassistant/#")
        check_discovery(configs, ["cam1", "cam2"])
        assert "announced 10 retained topic(s) under homeassistant/+/emim_box1/+/config" in first.output()

        # 2: the same configs again; SIGKILL of the group: the broker sends the last will
        runs.append(second := Run(tmp_path, "second", config(broker.port, ["cam1", "cam2"])))
        assert sub.wait_for(lambda lines: len(availability(lines)) == 3, 120), second.output()[-3000:]  # online
        assert sub.wait_for(lambda lines: len(lines) > len(events) + 10, 60), second.output()[-3000:]
        assert retained(broker.port, "homeassistant/#") == configs  # stable across starts
        killed = second.signal(signal.SIGKILL)
        assert second.proc.wait(10) == -signal.SIGKILL
        assert sub.wait_for(lambda lines: now_available(lines) == "offline", 1.5 * KEEPALIVE_S + 5)
        offline_after_s = availability(sub.lines)[-1][0] - killed
        assert offline_after_s <= 1.5 * KEEPALIVE_S, offline_after_s

        # 3: cam2 removed: its configs are cleared; a hung box goes offline and comes back online
        runs.append(third := Run(tmp_path, "third", config(broker.port, ["cam1"])))
        assert sub.wait_for(lambda lines: now_available(lines) == "online", 120), third.output()[-3000:]
        deadline = time.monotonic() + 30
        while "cleared 4 stale" not in third.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "cleared 4 stale" in third.output(), third.output()[-3000:]
        expected = {t: c for t, c in configs.items() if "/emim_box1/cam2_" not in t}
        # the line is logged once the clears are handed to the client; the broker has them a moment later
        deadline, now = time.monotonic() + 15, retained(broker.port, "homeassistant/#")
        while now != expected and time.monotonic() < deadline:
            now = retained(broker.port, "homeassistant/#")
        check_discovery(now, ["cam1"])
        assert now == expected
        time.sleep(1.0)  # the pipeline publishes, then hangs
        stopped = third.signal(signal.SIGSTOP)
        assert sub.wait_for(lambda lines: now_available(lines) == "offline", 1.5 * KEEPALIVE_S + 10)
        hung_after_s = availability(sub.lines)[-1][0] - stopped
        assert KEEPALIVE_S <= hung_after_s <= 1.5 * KEEPALIVE_S + BROKER_CHECK_S, hung_after_s  # the keep-alive
        third.signal(signal.SIGCONT)
        assert sub.wait_for(lambda lines: now_available(lines) == "online", 30), third.output()[-3000:]
        third.signal(signal.SIGTERM)
        assert third.proc.wait(30) == 0, third.output()[-3000:]
        assert sub.wait_for(lambda lines: now_available(lines) == "stopped", 10)
        assert "Traceback" not in first.output() + third.output()
        record_property("offline_after_kill_s", round(offline_after_s, 3))
        record_property("offline_after_hang_s", round(hung_after_s, 3))
        print(
            f"\navailability: offline {offline_after_s:.2f} s after SIGKILL of the group, {hung_after_s:.2f} s after "
            f"SIGSTOP (keep-alive {KEEPALIVE_S} s: 1.5 x = {1.5 * KEEPALIVE_S:.1f} s); {len(by_id)} events in the "
            f"first run, {sum(len(m) for m in by_id.values())} messages"
        )
    finally:
        sub.close()
        for run in runs:
            run.kill_all()
    left = rings_of(*(run.proc.pid for run in runs))
    assert not left, f"shared memory left behind: {left}"
