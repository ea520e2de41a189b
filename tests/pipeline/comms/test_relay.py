"""Relay: two publishers behind one XSUB/XPUB proxy, one subscriber sees both; clean shutdown on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emim_stream.pipeline.comms.messages import StatusMessage, label_topic
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.comms.relay import Relay
from emim_stream.pipeline.comms.subscribe import Received, Subscriber
from emim_stream.pipeline.errors import PublishError

REPO = Path(__file__).resolve().parents[3]


def _msg(i: int) -> dict:
    """A valid status payload numbered ``i`` (its ``latest_seq``): the subscriber drops payloads of no schema."""
    return StatusMessage(
        camera_id="cam", state="live", fps=30.0, staleness_ms=None, latest_seq=i, reconnects=0, frames_lost=0,
        dropped_frames=0, source_width=8, source_height=8, heartbeat_mono_ns=0, publish_mono_ns=0,
        publish_wall_ns=0, config_hash="x",
    ).to_payload()


def _join(pubs: dict[str, Publisher], sub: Subscriber, timeout_s: float = 5.0) -> None:
    """Probe every publisher until its probe has come through the relay (subscriptions travel upstream)."""
    pending = dict(pubs)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for name, pub in pending.items():
            pub.send(f"labels/probe-{name}/".encode(), _msg(0))
        received = sub.recv(0.02)
        while received is not None:
            pending.pop(received.topic.split("/")[1].removeprefix("probe-"), None)
            received = sub.recv(0)
    assert not pending, f"never joined through the relay: {sorted(pending)}"


def _collect(sub: Subscriber, want: int, timeout_s: float = 5.0) -> list[Received]:
    out: list[Received] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        received = sub.recv(0.1)
        if received is not None and not received.topic.startswith("labels/probe-"):
            out.append(received)
    return out


def test_one_subscriber_sees_both_pipelines_through_the_relay(tmp_path):
    with (
        Publisher(f"ipc://{tmp_path}/a.sock") as pub_a,
        Publisher(f"ipc://{tmp_path}/b.sock") as pub_b,
        Relay(f"ipc://{tmp_path}/relay.sock", [pub_a.endpoint, pub_b.endpoint]) as relay,
        Subscriber(relay.endpoint, ["labels/"]) as sub,
    ):
        assert relay.running
        _join({"a": pub_a, "b": pub_b}, sub)
        for i in range(10):
            assert pub_a.send(label_topic("cam-a"), _msg(i))
            assert pub_b.send(label_topic("cam-b"), _msg(i))
        got = _collect(sub, 20)
        stats = relay.stats()
        final = relay.close()
        assert not relay.running
    by_topic: dict[str, list[int]] = {}
    for received in got:
        by_topic.setdefault(received.topic, []).append(received.payload["latest_seq"])
    assert by_topic == {"labels/cam-a/": list(range(10)), "labels/cam-b/": list(range(10))}
    assert sub.lost["labels/cam-a/"] == 0 and sub.lost["labels/cam-b/"] == 0
    assert stats.frames >= 40 and stats.subscriptions >= 1  # 20 label messages of 2 frames, plus probes
    assert final is not None and final.frames >= stats.frames
    assert relay.close() is None  # idempotent


def test_subscriptions_travel_upstream_through_the_relay(tmp_path):
    """A subscriber of one camera gets only that camera's topic; the prefix filter still holds behind the relay."""
    with (
        Publisher(f"ipc://{tmp_path}/a.sock") as pub,
        Relay(f"ipc://{tmp_path}/relay.sock", [pub.endpoint]) as relay,
        Subscriber(relay.endpoint, [label_topic("cam1"), b"labels/probe-"]) as sub,
    ):
        _join({"a": pub}, sub)
        for i in range(5):
            pub.send(label_topic("cam10"), _msg(i))
            pub.send(label_topic("cam1"), _msg(i))
        got = _collect(sub, 5)
        assert sub.recv(0.2) is None
    assert [r.topic for r in got] == ["labels/cam1/"] * 5


def test_bad_endpoints_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(PublishError, match="not a loopback address"):
        Relay("tcp://0.0.0.0:5999", [f"ipc://{tmp_path}/a.sock"])
    with pytest.raises(PublishError, match="at least one upstream"):
        Relay(f"ipc://{tmp_path}/r.sock", [])
    with pytest.raises(PublishError, match="upstream endpoint 'udp://x:1' is not supported"):
        Relay(f"ipc://{tmp_path}/r.sock", ["udp://x:1"])
    with (
        Relay("tcp://127.0.0.1:*", [f"ipc://{tmp_path}/a.sock"]) as first,
        pytest.raises(PublishError, match="cannot bind relay"),
    ):
        Relay(first.endpoint, [f"ipc://{tmp_path}/a.sock"])


_RELAY_MAIN = (
    "import argparse, sys\n"
    "from emim_stream.cli.commands import relay\n"
    "parser = argparse.ArgumentParser()\n"
    "relay.add_arguments(parser)\n"
    "sys.exit(relay.main(parser.parse_args(sys.argv[1:])))\n"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_relay_command_relays_and_stops_cleanly_on_signal(tmp_path, sig):
    listen = f"ipc://{tmp_path}/relay.sock"
    with Publisher(f"ipc://{tmp_path}/a.sock") as pub:
        proc = subprocess.Popen(
            [sys.executable, "-c", _RELAY_MAIN, "--listen", listen, "--connect", pub.endpoint],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            banner = proc.stdout.readline()
            assert "emim-stream relay:" in banner and listen in banner, banner
            with Subscriber(listen, ["labels/"]) as sub:
                _join({"a": pub}, sub)
                pub.send(label_topic("cam1"), _msg(1))
                assert [r.topic for r in _collect(sub, 1)] == ["labels/cam1/"]
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, out
    assert "relayed" in out and "Traceback" not in out
    relayed = int(out.split("relayed ", 1)[1].split(" ", 1)[0])
    assert relayed >= 4  # a probe and a label, 2 frames each
    assert f"relayed {relayed} message parts ({relayed // 2} messages of topic + payload" in out
