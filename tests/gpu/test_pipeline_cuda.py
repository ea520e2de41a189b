"""The pipeline end to end on ``device: cuda``: 4 synthetic cameras, the demo model (with VMP) on the GPU.

Real camera processes, shared-memory rings and ZeroMQ sockets, as in tests/integration.
"""

from __future__ import annotations

import collections
import os

import pytest
import yaml

from emim_stream.pipeline.config import load_config
from emim_stream.pipeline.inference import vmp_stage
from emim_stream.pipeline.runtime import run
from tests.gpu.conftest import GPU
from tests.integration.conftest import free_port, rings_of
from tests.integration.test_pipeline_e2e import check_label_stream, collect

pytestmark = [*GPU, pytest.mark.slow]

CAMERAS = ("cam1", "cam2", "cam3", "cam4")


def cuda_config(port: int) -> dict:
    return {
        "cameras": [
            {"id": cam, "source": f"synthetic://?seed={i + 1}&fps=30&size=160x120"} for i, cam in enumerate(CAMERAS)
        ],
        "engine": {"backend": "torch", "device": "cuda", "checkpoint": "emim_xs.demo", "max_batch": 4},
        "window": {"stride": 4},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.5},
    }


def test_four_cameras_on_cuda_publish_labels_then_duration_leaves_nothing(pipeline_factory):
    """`emim-stream run --duration`: labels from every camera, computed on the GPU; the fixture then checks
    that no camera process and no /dev/shm segment outlives the run."""
    port = free_port()
    p = pipeline_factory(cuda_config(port), duration=12)
    payloads = collect(f"tcp://127.0.0.1:{port}", 60, 30, proc=p)
    for cam in CAMERAS:
        msgs = check_label_stream(payloads, cam)
        assert all(m.model.device.startswith("cuda") for m in msgs), msgs[0].model
    assert p.wait(60) == 0
    out = p.output()
    assert "duration reached" in out
    assert "no VMP parameters" not in out, "the demo checkpoint's VMP layer should run"
    assert p.watch_children(), "no camera process was seen"


def test_vmp_prompts_are_computed_on_the_gpu(tmp_path, monkeypatch):
    """In-process run: every prompt the VMP stage returns lives on the engine's CUDA device."""
    devices: collections.Counter[str] = collections.Counter()
    push = vmp_stage.VmpStage.push

    def recording_push(self, frame, seq):
        prompt = push(self, frame, seq)
        if prompt is not None:
            devices[prompt.device.type] += 1
        return prompt

    monkeypatch.setattr(vmp_stage.VmpStage, "push", recording_push)
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(cuda_config(free_port())))
    labels: collections.Counter[str] = collections.Counter()
    cfg = load_config(path, ["postprocess.print_labels=false"])
    report = run(cfg, 8.0, on_label=lambda m: labels.update([m.camera_id]))
    assert set(labels) == set(CAMERAS) and min(labels.values()) >= 10, labels
    assert devices["cuda"] >= 4 * 30 and set(devices) == {"cuda"}, devices
    assert report.engine.startswith("torch fp32 on cuda")
    assert not rings_of(os.getpid())  # the runtime in this process unlinked its rings
