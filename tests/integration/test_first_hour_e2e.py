"""A new user's first hour, end to end with real processes: `run` from any directory on the embedded default
with its truth column, a labelled video file, Ctrl-C in `train`, `soak`'s verdict, `doctor` and `evaluate`."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import yaml

from emim_stream.engines.data.synthetic import render_clip
from emim_stream.pipeline.capture.sources import SyntheticSource
from emim_stream.pipeline.comms.messages import LabelMessage
from emim_stream.pipeline.comms.subscribe import Subscriber
from emim_stream.pipeline.config import DEFAULT_CONFIG
from tests.integration.conftest import ROOT, engine_section, free_port, rings_of

EMIM_STREAM = str(Path(sys.executable).with_name("emim-stream"))  # the installed entry point
_LABEL_LINE = re.compile(r"^\s+cam1 frames\s+\d+-(\d+)\s+(\S+)\s+[\d.]+\s+\(.*\)\s+latency [\d.]+ ms(.*)$")


def _labels_until_exit(endpoint: str, proc: subprocess.Popen, timeout_s: float) -> list[LabelMessage]:
    """Every label published at ``endpoint`` until ``proc`` exits (or ``timeout_s`` passes), and those in flight."""
    out = []
    deadline = time.monotonic() + timeout_s
    with Subscriber(endpoint, topics=["labels/"], timeout_s=1.0) as sub:
        while time.monotonic() < deadline:
            got = sub.recv(0.2 if proc.poll() is None else 1.0)
            if got is not None:
                out.append(LabelMessage.from_payload(got.payload))
            elif proc.poll() is not None:
                break
    return out


def _cli(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([EMIM_STREAM, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_run_from_anywhere_uses_the_embedded_default_and_scores_against_the_truth(tmp_path):
    """`emim-stream run --duration` in an empty directory: the packaged default, labels with their truth."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    stdout, stderr = (tmp_path / "run.out").open("w+"), (tmp_path / "run.err").open("w+")
    proc = subprocess.Popen(
        [EMIM_STREAM, "run", "--duration", "10", "--set", f"publish.endpoint={endpoint}", "--set", "metrics.port=0"],
        cwd=tmp_path, stdout=stdout, stderr=stderr, text=True,
    )  # fmt: skip
    try:
        msgs = _labels_until_exit(endpoint, proc, timeout_s=120)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        stdout.close()
        stderr.close()
    out, err = (tmp_path / "run.out").read_text(), (tmp_path / "run.err").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert len(re.findall(r"metrics on http://127\.0\.0\.1:\d+/metrics", err)) == 1  # logged once
    assert len(msgs) >= 2 and all(m.model.name == "emim_xs" for m in msgs)  # the demo checkpoint of the default
    camera = SyntheticSource(yaml.safe_load(DEFAULT_CONFIG.read_text())["cameras"][0]["source"], pace=False)
    for m in msgs:  # camera frame seq n is scene frame n; the window covers first_seq - 1 (VMP's reference) .. last
        first, last = m.window.first_seq - 1, m.window.last_seq
        one_scene = first // camera.scene.segment_frames == last // camera.scene.segment_frames
        assert m.truth == (camera.label_at(last) if one_scene else None), (first, last, m.truth)
    assert any(m.truth is not None for m in msgs)
    lines = [m for m in map(_LABEL_LINE.match, out.splitlines()) if m]
    by_last_seq = {m.window.last_seq: m for m in msgs}
    assert {int(line[1]) for line in lines} >= set(by_last_seq)  # every message has its printed line
    marks = [line[3].strip() for line in lines]
    scored = [mark for mark in marks if mark not in ("", "-")]
    seen_truth = False
    for line, mark in zip(lines, marks, strict=True):  # the column says what the message says
        m = by_last_seq.get(int(line[1]))
        unscored = "-" if seen_truth else ""  # '-' once the camera has shown it knows the truth
        if m is not None:
            truth = m.truth
            assert mark == (unscored if truth is None else "ok" if line[2] == truth else f"WRONG (true: {truth})")
        seen_truth |= mark not in ("", "-")
    right = scored.count("ok")
    if scored:
        summary = re.search(r"top-1 vs truth ([\d.]+)% \((\d+)/(\d+) windows\)", out)
        assert summary and (int(summary[2]), int(summary[3])) == (right, len(scored)), out[-2000:]
    assert not rings_of(proc.pid)  # its rings are unlinked


def _write_video(path: Path, labels: list[str], frames_each: int, fps: float = 30.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (96, 96))
    for i, label in enumerate(labels):
        for rgb in render_clip(label, seed=11 + i, frames=frames_each, height=96, width=96):
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_file_with_a_sidecar_carries_the_truth(tmp_path, pipeline_factory):
    """Labels of a file source carry the sidecar's class of the frames they cover (None across the cut)."""
    video = tmp_path / "door.mp4"
    _write_video(video, ["left", "right"], frames_each=60)
    (tmp_path / "door.mp4.truth").write_text("# two scenes of 2 s\n0 2 left\n2 4 right\n")
    port = free_port()
    config = {
        "cameras": [{"id": "cam1", "source": str(video)}],
        "engine": engine_section(),
        "window": {"stride": 2},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}"},
    }
    proc = pipeline_factory(config)
    msgs = _labels_until_exit(f"tcp://127.0.0.1:{port}", proc.proc, timeout_s=90)
    assert proc.wait(30) == 0, proc.output()[-3000:]
    assert len(msgs) >= 10
    for m in msgs:  # window frames first_seq-1 (VMP's reference) .. last_seq; frame n is at n / 30 s
        first, last = m.window.first_seq - 1, m.window.last_seq
        expected = "left" if last < 60 else "right" if first >= 60 else None
        assert m.truth == expected, (first, last, m.truth)
    assert {m.truth for m in msgs} >= {"left", "right"}


def test_ctrl_c_in_train_saves_and_prints_the_resume_command(tmp_path):
    out = tmp_path / "ck.pt"
    argv = [
        sys.executable, "-m", "emim_stream.cli", "train", "--model", "emim_xs", "--data", "synthetic://?split=train&n=16",
        "--val-n", "0", "--epochs", "1", "--size", "32", "--frames", "4", "--batch-size", "2", "--threads", "1",
        "--log-every", "1", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for the first optimizer step
            line = proc.stderr.readline()
            if "step 1/8" in line or not line:
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopping after this step" in stderr
    match = re.search(r"saved (\S+)\ncontinue with:\n  (.+)", stdout)
    assert match, stdout
    assert Path(match[1]) == out.with_name("ck.pt.resume") and Path(match[1]).is_file() and not out.exists()
    resume = shlex.split(match[2])
    assert resume[0] == "emim-stream" and resume[-1] == "--resume"
    done = subprocess.run(
        [sys.executable, "-m", "emim_stream.cli", *resume[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and not Path(match[1]).exists()
    assert re.search(r"resuming .*ck\.pt\.resume at epoch 1 step [1-9]", done.stderr)


def test_soak_fails_its_verdict_with_exit_1(tmp_path):
    config = tmp_path / "soak.yaml"
    config.write_text(yaml.safe_dump({
        "cameras": [{"id": "cam1", "source": "synthetic://?seed=2&fps=30&size=96x96"}],
        "engine": engine_section(),
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
    }))  # fmt: skip
    strict = _cli("soak", "--config", str(config), "--minutes", "0.15", "--sample-s", "1", "--max-p99-ratio", "0.01",
                  cwd=tmp_path)  # fmt: skip
    assert strict.returncode == 1, strict.stderr[-2000:]
    assert "verdict: FAIL" in strict.stdout, strict.stdout
    assert re.search(r"FAILED\s+p99 last/first [\d.]+ <= 0.01 \([\d.]+ -> [\d.]+ ms\)", strict.stdout), strict.stdout
    rss = re.search(r"(ok|FAILED)\s+RSS growth after warm-up ([+-][\d.]+) MiB <= 50\n", strict.stdout)
    summary = re.search(r"^RSS: start .*, growth after warm-up ([+-][\d.]+) MiB$", strict.stdout, re.MULTILINE)
    assert rss and summary and summary[1] == rss[2], strict.stdout  # the check judges the figure the summary shows
    assert (rss[1] == "ok") == (float(rss[2]) <= 50), strict.stdout  # the default --max-rss-growth, applied


def test_doctor_without_config_shows_the_embedded_default(tmp_path):
    done = _cli("doctor", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "config: the embedded default" in done.stdout
    assert "[selection for backend=aoti device=cpu precision=fp32]" in done.stdout  # the default's, not auto


def test_evaluate_shows_progress(tmp_path):
    done = _cli("evaluate", "--checkpoint", "emim_xs.demo", "--data", "synthetic://?split=test&n=20",
                "--batch-size", "4", "--threads", "1", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    steps = re.findall(r"^evaluating clips (\d+)/20$", done.stderr, re.MULTILINE)  # not a terminal: a line per tenth
    assert steps[-1] == "20" and len(steps) >= 4
