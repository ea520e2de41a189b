"""``tools/gpu-check``: a GPU acceptance benchmark, the whole GPU path of a CUDA box measured in one time-boxed run.

Steps, in order, each a subprocess with its own time box (on overrun: SIGINT to its process
group, then SIGKILL), so a failing or hanging step never loses the others' results:

1. ``wheels``: on a box without network, install the wheels brought along in ``tools/wheels/`` (fetched on a
   machine with network by ``--fetch-wheels``) into a temporary folder put first on ``PYTHONPATH`` (the box's
   torch is not touched); nothing to do where the dependencies are installed.
2. ``env``: the versions (torch, CUDA, Triton, GPU, driver) and the CLI's start-up imports.
   ``doctor``: ``emim-stream doctor``.
3. ``pytest``: ``pytest -m gpu tests/gpu`` (outcome of every test from its JUnit XML).
4. ``table-*``: the engine table (tools/gpu_measure.py ``table``), one step per group of rows;
   the groups that compile (``table-compile``, ``table-aoti``) come last, after
5. ``op``: the EMIM op kernels (what ``emim-stream bench --op`` runs) per dtype, and
6. ``cameras``: the pipeline's camera capacity (what ``emim-stream bench-cameras`` runs).
7. ``decode``: N 1080p30 H.264 streams at once through the ``nvidia`` hardware decode preset's ``ffmpeg`` command
   (``cameras[].hwaccel``; the rehearsal runs ``none`` at 360p): frames/s per stream and CPU per frame.

``gpu-check.json`` (every figure, versions, date), ``gpu-check.md`` (the tables) and
``gpu-check.log`` (every step's output) are rewritten after each step in the output folder.
``--cpu-rehearsal`` runs the same steps on the CPU at tiny sizes in under 3 minutes (CI).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "tools" / "wheels"
MEASURE = ROOT / "tools" / "gpu_measure.py"
NAMESPACE = ROOT / ".namespace"
"""Links that make the checkout importable as ``emim_stream.*`` without installing it (pyproject's package-dir)."""
PEAK_TFLOPS = 790.0
"""H200 dense bf16 matrix throughput: the FLOP floor of the engine table is MACs x 2 / this."""
OFFLINE_BOX_HAS = {
    *("torch", "numpy", "pyyaml", "opencv-python-headless", "onnx", "onnxruntime", "onnxscript", "psutil"),
    *("prometheus-client", "matplotlib", "pytest", "triton"),
}
"""Distributions an offline CUDA box is expected to have already (a CUDA build of torch, with Triton);
``--fetch-wheels`` downloads the rest of pyproject's dependencies as wheels to bring along."""
GRACE_S = 15
"""After SIGINT, how long a step may take to clean up (camera processes, shared memory) before SIGKILL."""


@dataclass(frozen=True)
class Plan:
    """What a run measures: sizes, devices and the time box of each step (seconds).

    Arguments are command-line strings of tools/gpu_measure.py (``table``, ``op``, ``cameras``) and of
    ``emim-stream doctor``.
    """

    device: str
    budget_s: int
    boxes: dict[str, int]
    table: list[tuple[str, str]]
    """(step name, ``table`` arguments) per group of rows."""
    compiled: list[tuple[str, str]]
    """Table groups that compile (torch.compile, aoti): run last, as their time is the least certain."""
    op: str
    cameras: str
    decode: str
    doctor: str
    env: dict[str, str] = field(default_factory=dict)
    on_request: frozenset[str] = frozenset()
    """Steps that run only when ``--only`` names them."""


def gpu_plan() -> Plan:
    """The run on a CUDA box: EMIM-S at 16x224x224, subsets chosen to fit 8 minutes (docs/gpu-boxes.md)."""
    clip = "--model emim_s --frames 16 --size 224"
    shape = f"{clip} --batches 1 8 32"
    return Plan(
        device="cuda",
        budget_s=470,
        boxes={
            "wheels": 20,
            "env": 30,
            "doctor": 25,
            "pytest": 140,
            "table-eager": 45,
            "table-graphs": 25,
            "table-compile": 40,
            "table-aoti": 45,
            "op": 25,
            "cameras": 55,
            "decode": 20,
        },
        table=[
            ("table-eager", f"{shape} --mode eager --kernels triton reference --precisions bf16 fp16 fp32"),
            ("table-graphs", f"{shape} --mode graphs --kernels triton reference --precisions bf16"),
        ],
        compiled=[
            ("table-compile", f"{shape} --mode compile+graphs --kernels triton --precisions bf16"),
            ("table-aoti", f"{shape} --mode aoti --kernels triton --precisions bf16"),
        ],
        op="--precisions bf16 fp32 --min-time 0.3",
        cameras=f"{clip} --precision bf16 --max-batch 32 --counts 1 8 16 32 --seconds 10",
        decode="--preset nvidia --counts 1 4 8 16 --video-s 4",
        doctor="--device cuda --model emim_s",
    )


def rehearsal_plan() -> Plan:
    """The same steps on the CPU at tiny sizes (CI): emim_xs at 4x64x64; the Triton kernel interpreted at
    2x32x32 (the interpreter is slow); ``table-aoti`` (a one-block-per-stage emim_xs) only on request: inductor's
    C++ build takes 2-3 minutes of 2 cores, and the CPU suite builds and tests the aoti backend already."""
    clip = "--model emim_xs --frames 4 --size 64"
    quick = "--threads 2 --min-time 0.1 --min-iters 2 --warmup 1 --numerics-clips 2"
    shape = f"{clip} {quick}"
    small = f"{shape} --depths 1 1 1 1 --batches 2 --kernels reference --precisions fp32"
    return Plan(
        device="cpu",
        budget_s=170,
        boxes={
            "wheels": 20,
            "env": 20,
            "doctor": 20,
            "pytest": 25,
            "table-eager": 20,
            "table-triton": 30,
            "table-graphs": 15,
            "op": 20,
            "cameras": 30,
            "decode": 10,
            "table-aoti": 420,
        },
        table=[
            ("table-eager", f"{shape} --mode eager --batches 1 2 --kernels reference --precisions fp32 bf16"),
            (
                "table-triton",
                "--model emim_xs --frames 2 --size 32 --threads 2 --min-time 0.1 --min-iters 1 --warmup 0 "
                "--numerics-clips 1 --mode eager --batches 1 --kernels triton --precisions fp32",
            ),
            ("table-graphs", f"{shape} --mode graphs --batches 1 2 --kernels reference --precisions fp32"),
        ],
        # torch.compile shares inductor with aoti and the harness path with the other modes: left out
        compiled=[("table-aoti", f"{small} --mode aoti")],
        on_request=frozenset({"table-aoti"}),
        op="--tiny --no-natten --precisions fp32 --min-time 0.1 --warmup 0 --min-iters 1 --threads 2",
        cameras=f"{clip} --precision fp32 --max-batch 2 --threads 1 --counts 1 2 --seconds 6",
        decode="--preset none --counts 1 2 --video-s 1 --source-size 640 360 --size 64",
        doctor="--device cpu --model emim_xs",
        env={"TRITON_INTERPRET": "1"},  # the Triton kernel runs on the CPU only through its interpreter
    )


@dataclass
class Step:
    """One step's outcome, as written to gpu-check.json."""

    name: str
    command: list[str]
    box_s: float
    status: str = "not run"
    """ok | failed | timeout | skipped | not run."""
    rc: int | None = None
    seconds: float = 0.0
    note: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def run_boxed(
    command: list[str], box_s: float, log: Any, env: dict[str, str] | None = None, pids: list[int] | None = None
) -> tuple[str, int | None]:
    """Run ``command`` in its own process group for at most ``box_s`` seconds, output appended to ``log``.

    Returns:
        ``(status, rc)``: ``ok`` / ``failed`` by exit code, or ``timeout`` (SIGINT to the group, then
        SIGKILL after :data:`GRACE_S`), whose rc is the exit code after the interrupt.
    """
    log.flush()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    if pids is not None:
        pids.append(proc.pid)
    try:
        rc = proc.wait(timeout=max(box_s, 1))
        return ("ok" if rc == 0 else "failed"), rc
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rc = proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        return "timeout", rc
    finally:
        with contextlib.suppress(ProcessLookupError):  # leftovers of the group never outlive the step
            os.killpg(proc.pid, signal.SIGKILL)


def read_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and the last meta record of a gpu_measure.py JSON lines file (a torn last line is skipped)."""
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.pop("kind", "row") == "meta":
                meta = record
            else:
                rows.append(record)
    return rows, meta


def read_junit(path: Path) -> list[dict[str, Any]]:
    """One row per test case: ``{"test", "outcome", "seconds", "message"}``."""
    if not path.exists():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (found.get("message") or "").splitlines()[0][:300] if found.get("message") else ""
                break
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        rows.append({"test": name, "outcome": outcome, "seconds": float(case.get("time") or 0), "message": message})
    return rows


def fitting_wheels(wheels: Path) -> tuple[list[Path], list[Path]]:
    """The wheels in ``wheels`` this interpreter can install, and those built for another Python or platform."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pip, which installs them, carries its own copy
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename

    here = set(sys_tags())
    fit: list[Path] = []
    other: list[Path] = []
    for wheel in sorted(wheels.glob("*.whl")):
        (fit if here & set(parse_wheel_filename(wheel.name)[3]) else other).append(wheel)
    return fit, other


def fetch_wheels(wheels: Path, python_version: str = "3.12") -> int:
    """Download (on a machine with network) the wheels of pyproject's dependencies an offline box lacks."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    present = {canonicalize_name(d) for d in OFFLINE_BOX_HAS}
    missing = [d for d in deps if canonicalize_name(Requirement(d).name) not in present]
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--no-deps",
        "--python-version",
        python_version,
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "manylinux_2_28_x86_64",
        "--dest",
        str(wheels),
        *missing,
    ]
    print("fetching:", " ".join(missing), flush=True)
    rc = subprocess.run(command).returncode
    print(f"wheels in {wheels}: {', '.join(sorted(w.name for w in wheels.glob('*.whl')))}")
    return rc


class Check:
    """One gpu-check run: steps, their results and the report files."""

    def __init__(self, plan: Plan, out: Path, rehearsal: bool, only: set[str] | None, wheels: Path) -> None:
        self.plan, self.out, self.rehearsal, self.only, self.wheels = plan, out, rehearsal, only, wheels
        self.start = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.site = self.tmp / "site"
        path = os.pathsep.join([str(self.site), str(NAMESPACE), str(ROOT)])
        self.env = {**os.environ, **plan.env, "PYTHONPATH": path}
        self.env["XDG_CACHE_HOME"] = str(self.tmp / "cache")  # a fresh plan cache: aoti builds are measured
        self.steps: list[Step] = []
        self.versions: dict[str, Any] = {}
        self.pids: list[int] = []
        """Every step's process: a pipeline names its shared memory emim_<pid>_..."""
        self.report: dict[str, Any] = {}
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "gpu-check.log", "w")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def left_s(self) -> float:
        return self.plan.budget_s - (time.monotonic() - self.start)

    def step(self, name: str, command: list[str], then: Callable[[Step], None] | None = None) -> Step:
        """Run one step within its box (and what is left of the budget), record it and rewrite the reports."""
        step = Step(name, command, max(0.0, min(self.plan.boxes[name], self.left_s() - GRACE_S)))
        self.steps.append(step)
        if self.only is not None and name not in self.only and name.split("-")[0] not in self.only:
            step.status, step.note = "skipped", "not asked for (--only)"
        elif name in self.plan.on_request and name not in (self.only or ()):
            step.status, step.note = "skipped", f"runs on request (--only {name})"
        elif not command:
            step.status = "skipped"
        elif step.box_s < 5:
            step.status, step.note = "skipped", f"the run's {self.plan.budget_s} s budget is spent"
        else:
            print(f"gpu-check: {name} (box {step.box_s:.0f} s): {' '.join(command)}", flush=True)
            self.log.write(f"\n===== {name}: {' '.join(command)}\n")
            self.log.flush()
            start = self.log.tell()
            t0 = time.monotonic()
            step.status, step.rc = run_boxed(command, step.box_s, self.log, self.env, self.pids)
            step.seconds = round(time.monotonic() - t0, 1)
            if then is not None:
                try:
                    then(step)
                except (OSError, ValueError, ET.ParseError) as err:
                    step.note = f"results unreadable: {err}"
            if step.status == "failed" and not step.note:  # the step's last words, e.g. an error line
                with open(self.log.name, errors="replace") as log:
                    log.seek(start)
                    said = [line.strip() for line in log if line.strip()]
                step.note = said[-1][:200] if said else f"exit code {step.rc}"
            print(f"gpu-check: {name} {step.status} in {step.seconds:.0f} s {step.note}", flush=True)
        self.write()
        return step

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def run(self) -> None:
        fit, other = fitting_wheels(self.wheels) if self.wheels.is_dir() else ([], [])
        wheels = self.step(
            "wheels",
            self.python(
                "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(self.site), *map(str, fit)
            )
            if fit
            else [],
        )
        wheels.meta = {"installed": [w.name for w in fit], "for_another_python": [w.name for w in other]}
        if not fit:
            wheels.note = f"no wheel for this Python in {self.wheels}" + (
                f" ({len(other)} for another)" if other else ""
            )
        self.measure("env", [])
        self.versions = self.steps[-1].meta
        self.step("doctor", self.python("-m", "emim_stream.cli", "doctor", *shlex.split(self.plan.doctor)))
        junit = self.tmp / "junit.xml"
        self.step(
            "pytest",
            self.python(
                "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}", "tests/gpu"
            ),
            lambda s: s.rows.extend(read_junit(junit)),
        )
        cache = ["--cache-dir", str(self.tmp / "plans"), "--peak-tflops", str(PEAK_TFLOPS)]
        for name, args in self.plan.table:
            self.measure(name, ["table", *cache, *shlex.split(args)])
        self.measure("op", ["op", *shlex.split(self.plan.op)])
        self.measure("cameras", ["cameras", *shlex.split(self.plan.cameras)])
        self.measure("decode", ["decode", *shlex.split(self.plan.decode)])
        for name, args in self.plan.compiled:
            self.measure(name, ["table", *cache, *shlex.split(args)])
        self.report["shm_left"] = sorted(n for n in _shm() if n.split("_")[1] in {str(p) for p in self.pids})
        self.write()

    def measure(self, name: str, args: list[str]) -> Step:
        """A tools/gpu_measure.py step whose JSON lines become the step's rows and meta."""
        rows = self.tmp / f"{name}.jsonl"
        what = args[0] if args else name
        command = self.python(str(MEASURE), what, "--out", str(rows), "--device", self.plan.device, *args[1:])
        return self.step(name, command, lambda s: _take_rows(s, rows))

    def write(self) -> None:
        """Rewrite gpu-check.json and gpu-check.md from what has run so far."""
        self.report.update(
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            host=socket.gethostname(),
            rehearsal=self.rehearsal,
            budget_s=self.plan.budget_s,
            elapsed_s=round(time.monotonic() - self.start, 1),
            git=_git_head(),
            versions=self.versions,
            peak_tflops=PEAK_TFLOPS,
            steps=[vars(s) for s in self.steps],
        )
        self.report["targets"] = targets(self.report["steps"])
        (self.out / "gpu-check.json").write_text(json.dumps(self.report, indent=1, default=str) + "\n")
        (self.out / "gpu-check.md").write_text(render_markdown(self.report))


def _take_rows(step: Step, path: Path) -> None:
    step.rows, step.meta = read_rows(path)
    errors = sum(1 for r in step.rows if "error" in r)
    if errors and step.status == "ok":
        step.status = "failed"
    if errors:
        step.note = f"{errors} configuration(s) failed"


def _shm() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("emim_")}
    except FileNotFoundError:
        return set()


def _git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "") or "unknown"


def _f(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


TARGETS = {"bf16_batch32_clip_ms": 0.65, "batch1_latency_ms": 2.0, "cameras": 32, "cameras_p99_ms": 50.0}
"""Issue 13's targets on the H200: EMIM-S 16x224x224, best backend."""


def targets(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The best measured figures against :data:`TARGETS` (None where nothing was measured)."""
    rows = [r for s in steps if s["name"].startswith("table-") for r in s["rows"] if "error" not in r]
    bf16_32 = min((r for r in rows if r["precision"] == "bf16" and r["batch"] == 32),
                  key=lambda r: r["clip_ms_p50"], default=None)  # fmt: skip
    batch1 = min((r for r in rows if r["batch"] == 1), key=lambda r: r["clip_ms_p50"], default=None)
    sustained = [r for s in steps if s["name"] == "cameras" for r in s["rows"] if r["sustained"]]
    best_cams = max(sustained, key=lambda r: r["cameras"], default=None)

    def which(r: dict[str, Any] | None) -> str | None:
        return None if r is None else f"{r['mode']} {r['kernel']} {r['precision']}"

    return {
        "bf16_batch32_clip_ms": bf16_32 and bf16_32["clip_ms_p50"],
        "bf16_batch32_by": which(bf16_32),
        "batch1_latency_ms": batch1 and batch1["batch_ms_p50"],
        "batch1_by": which(batch1),
        "cameras_sustained": best_cams and best_cams["cameras"],
        "cameras_p99_ms": best_cams and best_cams["p99_ms"],
        "goals": TARGETS,
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables as Markdown, ready to paste into a report or docs/gpu-boxes.md."""
    v = report.get("versions", {})
    machine = "CPU rehearsal, tiny sizes" if report["rehearsal"] else v.get("gpu", "GPU unknown")
    lines = [
        f"### gpu-check {report['date'][:10]}: {machine}",
        "",
        f"torch {v.get('torch', '?')}, CUDA {v.get('cuda') or '-'}, Triton {v.get('triton') or '-'}, driver "
        f"{v.get('driver') or '-'}, Python {v.get('python', '?')}; commit {report['git']}; {report['elapsed_s']:.0f} s "
        f"of a {report['budget_s']} s budget.",
        "",
        "| step | status | seconds (box) | note |",
        "|---|---|---|---|",
    ]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} ({s['box_s']:.0f}) | {s['note']} |")
    steps = {s["name"]: s for s in report["steps"]}
    tests = steps.get("pytest", {}).get("rows", [])
    if tests:
        counts = {o: sum(1 for t in tests if t["outcome"] == o) for o in ("passed", "failed", "error", "skipped")}
        lines += ["", "**pytest -m gpu**: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n), ""]
        lines += [
            f"- {t['outcome']}: `{t['test']}` {t['message']}" for t in tests if t["outcome"] in ("failed", "error")
        ]
        skipped = collections.Counter(t["message"] for t in tests if t["outcome"] == "skipped")
        lines += [f"- skipped ({n}): {message}" for message, n in skipped.items()]
    table = [(s, r) for s in report["steps"] if s["name"].startswith("table-") for r in s["rows"]]
    if table:
        meta = next((s["meta"] for s in report["steps"] if s["name"].startswith("table-") and s["meta"]), {})
        T, H, W = meta.get("clip", ("?", "?", "?"))
        lines += [
            "",
            f"**Engine table**: {meta.get('model', '?')} {T}x{H}x{W}, {_f(meta.get('macs', 0) / 1e9, '.1f')} GMAC per "
            f"clip; FLOP floor {_f(meta.get('floor_ms'), '.4f')} ms per clip at {report['peak_tflops']:g} TFLOP/s; "
            f"error and top-1 agreement against eager fp32 (reference kernel) on {meta.get('numerics_clips', '?')} "
            "random clips.",
            "",
            "| mode | kernel | precision | batch | clip p50 ms | clip p90 ms | clips/s | x floor | rel err | top-1 |"
            " first calls s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in table:
            if "error" in r:
                lines.append(f"| {r['mode']} | {r['kernel']} | {r['precision']} | | failed: {r['error']} |||||||")
                continue
            lines.append(
                f"| {r['mode']} | {r['kernel']} | {r['precision']} | {r['batch']} | {_f(r['clip_ms_p50'], '.3f')} | "
                f"{_f(r['clip_ms_p90'], '.3f')} | {_f(r['clips_per_s'], '.1f')} | {_f(r['floor_ratio'], '.1f')} | "
                f"{_f(r['rel_err'], '.1e')} | {_f(r['top1_agree'], '.0%')} | {_f(r['first_calls_s'], '.1f')} |"
            )
    ops = steps.get("op", {}).get("rows", [])
    if ops:
        lines += [
            "",
            "**EMIM op** (`bench --op`: logits + context, all T slots)",
            "",
            "| layer | kernel | precision | batch | p50 ms | p90 ms | GMAC/s | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['layer']} | {r['kernel']} | {r['precision']} | {r['batch']} | {_f(r['ms_p50'], '.3f')} | "
            f"{_f(r['ms_p90'], '.3f')} | {_f(r['gmac_per_s'], '.3g')} | {r['note']} |"
            for r in ops
        ]
    cams = steps.get("cameras", {})
    if cams.get("rows"):
        m = cams.get("meta", {})
        e = m.get("engine", {})
        lines += [
            "",
            f"**Cameras** (`bench-cameras`): {m.get('source')} x N, stride {m.get('stride')}, "
            f"{m.get('seconds')} s per N; "
            f"engine {e.get('backend')} {e.get('precision')} on {e.get('device')}, {e.get('model')} "
            f"{e.get('frames')}x{e.get('height')}x{e.get('width')}, max_batch {e.get('max_batch')}, kernel "
            f"{e.get('kernel')}, CUDA graphs {e.get('cuda_graphs')}",
            "",
            "| cameras | labels/s | served | p50 mid ms | p50 last ms | drift | p99 ms | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['cameras']} | {_f(r['labels_per_s'], '.1f')} | {_f(r['served'], '.1%')} | "
            f"{_f(r['p50_middle_ms'], '.1f')} | {_f(r['p50_last_ms'], '.1f')} | {_f(r['drift'], '.2f')} | "
            f"{_f(r['p99_ms'], '.1f')} | {'sustained' if r['sustained'] else 'NOT sustained'} |"
            for r in cams["rows"]
        ]
    dec = steps.get("decode", {})
    if dec.get("rows"):
        m = dec.get("meta", {})
        lines += [
            "",
            f"**Decode** (`cameras[].hwaccel: {m.get('preset')}`): N streams of {m.get('source')} H.264 at once, "
            f"each decoded and scaled by `{' '.join(m.get('command', []))}`",
            "",
            "| streams | frames/s per stream | CPU ms per frame | complete |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['streams']} | {_f(r['fps_per_stream'], '.1f')} | {_f(r['cpu_ms_per_frame'], '.2f')} | "
            f"{'yes' if r['ok'] else 'NO'} |"
            for r in dec["rows"]
        ]
    t = report.get("targets") or targets(report["steps"])
    goals = t["goals"]
    lines += [
        "",
        "**Targets**" + (" (a rehearsal's figures are not comparable)" if report["rehearsal"] else "") + ":",
        f"- bf16 batch 32, best: {_f(t['bf16_batch32_clip_ms'], '.3f')} ms per clip ({t['bf16_batch32_by'] or '-'}); "
        f"target <= {goals['bf16_batch32_clip_ms']} ms",
        f"- batch 1 latency, best: {_f(t['batch1_latency_ms'], '.2f')} ms ({t['batch1_by'] or '-'}); "
        f"target <= {goals['batch1_latency_ms']} ms",
        f"- cameras sustained: {t['cameras_sustained'] or 0} (p99 {_f(t['cameras_p99_ms'], '.1f')} ms); "
        f"target >= {goals['cameras']} at p99 <= {goals['cameras_p99_ms']} ms",
    ]
    if report.get("shm_left"):
        lines += ["", f"Shared memory left in /dev/shm: {', '.join(report['shm_left'])}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="folder for gpu-check.json/.md/.log (default: $OUT, else ./gpu-check)")
    parser.add_argument("--cpu-rehearsal", action="store_true", help="every step on the CPU at tiny sizes (< 3 min)")
    parser.add_argument(
        "--only", nargs="+", metavar="STEP",
        help="run only these steps (wheels env doctor pytest table op cameras decode)",
    )
    parser.add_argument(
        "--box", action="append", default=[], metavar="STEP=SECONDS", help="another time box for a step (repeatable)"
    )
    parser.add_argument("--budget", type=int, metavar="SECONDS", help="another budget for the whole run")
    parser.add_argument(
        "--wheels", type=Path, default=WHEELS,
        help=f"wheels to install first on an offline box (default {WHEELS.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--fetch-wheels", action="store_true", help="download the wheels an offline box lacks, then exit"
    )
    args = parser.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.wheels)
    out = Path(args.out or os.environ.get("OUT") or "gpu-check")
    plan = rehearsal_plan() if args.cpu_rehearsal else gpu_plan()
    boxes = dict(plan.boxes)
    for item in args.box:
        step, _, seconds = item.partition("=")
        if step not in boxes or not seconds.isdigit():
            parser.error(f"--box {item!r}: expected STEP=SECONDS with STEP one of {', '.join(boxes)}")
        boxes[step] = int(seconds)
    plan = dataclasses.replace(plan, boxes=boxes, budget_s=args.budget or plan.budget_s)
    check = Check(plan, out, args.cpu_rehearsal, set(args.only) if args.only else None, args.wheels)
    try:
        check.run()
    finally:
        check.close()
    print(f"gpu-check: wrote {out}/gpu-check.json, gpu-check.md, gpu-check.log in {check.report['elapsed_s']:.0f} s")
    failed = [s.name for s in check.steps if s.status == "failed"]
    late = [s.name for s in check.steps if s.status == "timeout"]
    if late:
        print(f"gpu-check: timed out (rows measured before are kept): {', '.join(late)}")
    if failed:
        print(f"gpu-check: failed: {', '.join(failed)}")
    # a rehearsal checks that every step still works; a slow CI machine may run out of time, which is not rot
    return 1 if failed or (late and not args.cpu_rehearsal) else 0


if __name__ == "__main__":
    sys.exit(main())
