"""tools/gpu-check's own machinery on the CPU: time boxes, partial results, wheels, the report.

The whole rehearsal (``tools/gpu-check --cpu-rehearsal``) is run by CI; these are its parts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up
_spec.loader.exec_module(gpu_check)


def test_a_step_past_its_box_is_interrupted_with_its_children(tmp_path):
    child_pid = tmp_path / "child.pid"
    # A step that obeys SIGINT, also where the test runs with SIGINT ignored (a background job of a
    # non-interactive shell passes SIG_IGN down, and Python then keeps it).
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    with open(tmp_path / "log", "w") as log:
        t0 = time.monotonic()
        status, rc = gpu_check.run_boxed([sys.executable, "-c", script], 2, log)
    assert status == "timeout" and rc != 0
    assert time.monotonic() - t0 < 2 + gpu_check.GRACE_S
    proc = Path(f"/proc/{child_pid.read_text()}")
    deadline = time.monotonic() + 5
    while proc.exists() and time.monotonic() < deadline:  # killed with the group; init reaps the orphan
        time.sleep(0.05)
    assert not proc.exists(), "the step's child outlived its time box"


@pytest.mark.parametrize(("code", "status"), [("0", "ok"), ("3", "failed")])
def test_a_step_within_its_box_reports_its_exit_code(tmp_path, code, status):
    with open(tmp_path / "log", "w") as log:
        assert gpu_check.run_boxed([sys.executable, "-c", f"raise SystemExit({code})"], 30, log) == (status, int(code))


def test_rows_survive_a_torn_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"kind": "meta", "macs": 5}) + "\n" + json.dumps({"kind": "row", "batch": 1}) + '\n{"kind": "ro'
    )
    rows, meta = gpu_check.read_rows(path)
    assert rows == [{"batch": 1}] and meta == {"macs": 5}
    assert gpu_check.read_rows(tmp_path / "missing.jsonl") == ([], {})


def test_only_wheels_for_this_python_are_installed(tmp_path):
    for name in ("anywhere-1.0-py3-none-any.whl", "elsewhere-1.0-cp299-cp299-manylinux_2_28_x86_64.whl"):
        (tmp_path / name).touch()
    fit, other = gpu_check.fitting_wheels(tmp_path)
    assert [w.name for w in fit] == ["anywhere-1.0-py3-none-any.whl"]
    assert [w.name for w in other] == ["elsewhere-1.0-cp299-cp299-manylinux_2_28_x86_64.whl"]


def test_report_tables_show_measured_rows_failures_and_skips():
    report = {
        "date": "2026-12-01T03:00:00+00:00",
        "rehearsal": False,
        "versions": {"gpu": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0"},
        "git": "abc1234",
        "elapsed_s": 400.0,
        "budget_s": 470,
        "peak_tflops": 790.0,
        "steps": [
            {"name": "pytest", "status": "failed", "seconds": 90, "box_s": 160, "note": "", "meta": {},
             "rows": [{"test": "t::a", "outcome": "failed", "message": "assert 0.2 <= 0.1"},
                      {"test": "t::b", "outcome": "skipped", "message": "no aoti"},
                      {"test": "t::c", "outcome": "skipped", "message": "no aoti"}]},
            {"name": "table-eager", "status": "timeout", "seconds": 50, "box_s": 45, "note": "",
             "meta": {"model": "emim_s", "clip": [16, 224, 224], "macs": 85e9, "floor_ms": 0.215},
             "rows": [{"mode": "eager", "kernel": "triton", "precision": "bf16", "batch": 32, "clip_ms_p50": 0.9,
                       "clip_ms_p90": 1.0, "clips_per_s": 1111.0, "floor_ratio": 4.2, "rel_err": 0.01,
                       "top1_agree": 1.0, "first_calls_s": 3.0},
                      {"mode": "eager", "kernel": "reference", "precision": "fp16", "error": "OutOfMemoryError: x"}]},
            {"name": "cameras", "status": "ok", "seconds": 60, "box_s": 80, "note": "", "meta": {},
             "rows": [{"cameras": n, "labels_per_s": 7.5 * n, "served": 1.0, "p50_middle_ms": 20.0, "p50_last_ms": 21.0,
                       "drift": 1.05, "p99_ms": 30.0 + n, "sustained": n < 16} for n in (1, 8, 16)]},
        ],
    }  # fmt: skip
    md = gpu_check.render_markdown(report)
    assert md.startswith("### gpu-check 2026-12-01: NVIDIA H200")
    assert "| table-eager | timeout | 50 (45) |" in md
    assert "- failed: `t::a` assert 0.2 <= 0.1" in md and "- skipped (2): no aoti" in md
    assert "| eager | triton | bf16 | 32 | 0.900 | 1.000 | 1111.0 | 4.2 | 1.0e-02 | 100% | 3.0 |" in md
    assert "failed: OutOfMemoryError: x" in md
    assert "- bf16 batch 32, best: 0.900 ms per clip (eager triton bf16); target <= 0.65 ms" in md
    assert "- cameras sustained: 8 (p99 38.0 ms); target >= 32 at p99 <= 50.0 ms" in md
    assert "| 16 | 120.0 | 100.0% | 20.0 | 21.0 | 1.05 | 46.0 | NOT sustained |" in md


def test_wrapper_runs_the_given_python():
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run([str(ROOT / "tools" / "gpu-check"), "--help"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "--cpu-rehearsal" in out.stdout


def test_a_failed_step_is_recorded_with_its_last_line_and_the_next_step_still_runs(tmp_path):
    check = gpu_check.Check(gpu_check.rehearsal_plan(), tmp_path, True, None, tmp_path / "no-wheels")
    try:
        failed = check.step("doctor", [sys.executable, "-c", "print('step output'); print('boom: no GPU'); exit(3)"])
        after = check.step("pytest", [sys.executable, "-c", "pass"])
    finally:
        check.close()
    assert (failed.status, failed.rc, failed.note) == ("failed", 3, "boom: no GPU")
    assert after.status == "ok"
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("doctor", "failed"), ("pytest", "ok")]
    assert "| doctor | failed |" in (tmp_path / "gpu-check.md").read_text()
    assert "boom: no GPU" in (tmp_path / "gpu-check.log").read_text()


@pytest.mark.parametrize("plan", [gpu_check.gpu_plan(), gpu_check.rehearsal_plan()], ids=["gpu", "rehearsal"])
def test_every_step_has_a_box_and_the_gpu_run_fits_eight_minutes(plan):
    steps = {"wheels", "env", "doctor", "pytest", "op", "cameras", "decode"}
    steps |= {name for name, _ in plan.table + plan.compiled}
    assert set(plan.boxes) == steps
    assert plan.budget_s <= (470 if plan.device == "cuda" else 170)
    if plan.device == "cuda":  # every step gets its whole box within the budget
        assert sum(plan.boxes.values()) <= plan.budget_s


@pytest.mark.parametrize("only", [None, {"table"}, {"table-aoti"}])
def test_the_rehearsals_aoti_build_runs_only_when_named(tmp_path, only):
    check = gpu_check.Check(gpu_check.rehearsal_plan(), tmp_path, True, only, tmp_path / "no-wheels")
    try:
        step = check.step("table-aoti", [sys.executable, "-c", "pass"])
    finally:
        check.close()
    if only == {"table-aoti"}:
        assert (step.status, step.note) == ("ok", "")
    else:
        assert step.status == "skipped" and step.note == "runs on request (--only table-aoti)"
