"""`emim-stream run` / `subscribe` against poisoned inputs: overflowing scores, ports, bounds, nested JSON."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml
import zmq

from emim_stream.engines.checkpoints.io import save_checkpoint
from emim_stream.engines.clip import ClipSpec
from emim_stream.engines.models import build_model
from emim_stream.pipeline.comms.subscribe import Subscriber
from tests.integration.conftest import ROOT, engine_section, free_port


def config(port: int | str, **engine) -> dict:
    return {
        "cameras": [{"id": "cam1", "source": "synthetic://?seed=1&fps=30&size=64x48"}],
        "engine": engine_section(**engine),
        "window": {"stride": 2},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.25},
    }


def cli(tmp_path, cfg: dict, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "emim_stream.cli", "run", "--config", str(path), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def test_overflowing_scores_are_counted_and_skipped_never_a_crash(pipeline_factory, tmp_path):
    """Finite weights so large that the logits overflow (what fp16 does to a real model): NaN at run time."""
    model = build_model("emim_xs").eval()
    with torch.no_grad():
        model.head.weight.fill_(3e38)
        model.head.bias.fill_(3e38)
    path = tmp_path / "overflow.pt"
    save_checkpoint(path, model, model.default_cfg.label_names, ClipSpec(4, 64, 64))
    port = free_port()
    cfg = config(port, model=None, checkpoint=str(path))
    p = pipeline_factory(cfg, duration=60)
    with Subscriber(f"tcp://127.0.0.1:{port}", topics=(b"labels/", b"status/"), timeout_s=1.0) as sub:
        statuses = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "non-finite scores" not in p.output():
            got = sub.recv(0.5)
            if got is not None:
                statuses.append(got)
        assert "non-finite scores" in p.output(), p.output()[-3000:]
        for _ in range(8):  # the pipeline keeps going: heartbeats still come
            if (got := sub.recv(1.0)) is not None:
                statuses.append(got)
    assert statuses and all(m.payload["kind"] == "status" for m in statuses), "a NaN label was published"
    assert sub.malformed == 0
    assert p.terminate() == 0
    out = p.output()
    assert "Traceback" not in out and "camera cam1: 0 labels" in out
    skipped = int(out.split("camera cam1: 0 labels, ")[1].split(" dropped frames, ")[1].split()[0])
    assert skipped >= 1, out[-2000:]


def test_banner_comes_after_the_bind_with_the_bound_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli(tmp_path, config(taken.getsockname()[1]), "--duration", "1")
    assert busy.returncode == 7, busy.stderr
    assert "publishing on" not in busy.stdout and "cannot bind publisher" in busy.stderr
    anyport = cli(tmp_path, config(0), "--duration", "1")
    assert anyport.returncode == 0, anyport.stderr
    banner = next(line for line in anyport.stdout.splitlines() if "publishing on" in line)
    port = int(banner.split("tcp://127.0.0.1:")[1].split()[0])
    assert 0 < port <= 65535


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "ring.slots=4"], "ring.slots: must exceed the clip length 4, got 4"),
        (["--set", "publish.endpoint=tcp://127.0.0.1:99999"], "publish.endpoint: port '99999' must be 1-65535"),
        (["--set", "cameras.0.id=010"], "cameras[0].id: must be a string, got the number 8; quote it"),
        (["--set", "cameras.0.source=synthetic://?size=100000x100000"], "each in 8..4096"),
        (["--duration", "nan"], "argument --duration: must be > 0"),
        (["--duration", "-5"], "argument --duration: must be > 0"),
    ],
)
def test_out_of_range_settings_exit_2_naming_the_field(tmp_path, args, message):
    result = cli(tmp_path, config(free_port()), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_subscribe_survives_deeply_nested_json(tmp_path):
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as pub:
        pub.linger = 0
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub = subprocess.Popen(
            [sys.executable, "-m", "emim_stream.cli", "subscribe", "--endpoint", f"tcp://127.0.0.1:{port}",
             "--topic", "status/", "--count", "1", "--timeout", "60"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            valid = json.dumps(_status()).encode()
            deadline = time.monotonic() + 60
            while sub.poll() is None and time.monotonic() < deadline:  # until the subscription is through
                pub.send_multipart([b"status/cam1/", b"[" * 200_000])
                pub.send_multipart([b"status/cam1/", valid])
                time.sleep(0.2)
            out, err = sub.communicate(timeout=10)
        finally:
            sub.kill()
    assert sub.returncode == 0 and "Traceback" not in err and "RecursionError" not in err, err
    assert "status/cam1/ #0" in out or "cam1" in out, out
    assert "received 1" in err and "malformed " in err and int(err.split("malformed ")[1].split()[0]) >= 1, err


def _status() -> dict:
    from emim_stream.pipeline.comms.messages import StatusMessage

    return {
        **StatusMessage(
            camera_id="cam1", state="live", fps=30.0, staleness_ms=None, latest_seq=1, reconnects=0, frames_lost=0,
            dropped_frames=0, source_width=8, source_height=8, heartbeat_mono_ns=1, publish_mono_ns=1,
            publish_wall_ns=1, config_hash="x", detail="",
        ).to_payload(),
        "msg_seq": 0,
    }
