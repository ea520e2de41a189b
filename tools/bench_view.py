"""What the live view costs the pipeline's latency: interleaved runs with and without the view, pooled percentiles.

    .venv/bin/python tools/bench_view.py [--rounds 6] [--seconds 40] [--client chromium|curl|none] [--json OUT]

Each round starts ``emim-stream run`` (the embedded default, or ``--config``) twice, once with the view closed
(``view.preview_fps=0``: no previews, no page process) and once with ``--view PORT`` and a client on the page
(headless Chromium through Playwright, or ``curl`` on ``/events`` plus a frame fetch every 0.25 s); the order
alternates (off/on, on/off, ...) so that drift in the machine's load falls on both sides alike. After the first
label from ``--backend`` (the embedded default's aoti engine is built in the background on a first run)
and ``--warmup`` seconds, the ``total`` latency of every window published in the next ``--seconds`` is kept.
Printed: per condition the pooled p50 / p90 / p99 / p99.9 and each run's p99, the on/off ratios, and a 95%
interval of the p99 ratio from a bootstrap over windows. Needs a quiet machine: anything else running widens
the spread, and a p99 over a few hundred windows is only the few largest values, so use several rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emim_stream.pipeline.comms.subscribe import Subscriber  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PERCENTILES = (50, 90, 99, 99.9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def pipeline(args: argparse.Namespace, endpoint: str, view_port: int | None) -> Iterator[subprocess.Popen]:
    """``emim-stream run`` in its own process group; SIGINT (then SIGKILL) on exit."""
    command = [sys.executable, "-m", "emim_stream.cli", "run", "--quiet", "--set", f"publish.endpoint={endpoint}"]
    if args.config:
        command += ["--config", args.config]
    command += ["--view", str(view_port)] if view_port else ["--set", "view.preview_fps=0"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def client(kind: str, url: str) -> Iterator[None]:
    """A client on the page for the duration of the block: chromium, curl, or none."""
    if kind == "none":
        yield
    elif kind == "curl":
        events = subprocess.Popen(["curl", "-sN", url + "events"], stdout=subprocess.DEVNULL)
        stop = threading.Event()

        def fetch_frames() -> None:
            while not stop.wait(0.25):
                try:
                    with urllib.request.urlopen(url + "api/state", timeout=2) as r:
                        cameras = json.load(r)["cameras"]
                    for camera in cameras:
                        with urllib.request.urlopen(f"{url}frame/{camera['id']}.jpg", timeout=2) as r:
                            r.read()
                except OSError:
                    pass

        thread = threading.Thread(target=fetch_frames, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            events.terminate()
            events.wait()
            thread.join()
    else:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 900, "height": 800})
                page.goto(url)
                page.wait_for_selector(".tile", timeout=60_000)
                yield
            finally:
                browser.close()


def wait_for_view(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the pipeline exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the view did not answer within {timeout_s} s")


def one_run(args: argparse.Namespace, with_view: bool) -> np.ndarray:
    """``total`` latency (ms) of every window published during the measured period of one run."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    view_port = free_port() if with_view else None
    url = f"http://127.0.0.1:{view_port}/"
    totals: list[float] = []
    with pipeline(args, endpoint, view_port) as proc, Subscriber(endpoint, ["labels/"], timeout_s=1.0) as sub:
        deadline = time.monotonic() + args.start_timeout
        while (received := sub.recv(1.0)) is None or received.payload["model"]["backend"] != args.backend:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"no {args.backend} label from the pipeline: {proc.stderr.read()[-2000:]}")
        if with_view:
            wait_for_view(url, proc)
        with client(args.client if with_view else "none", url):
            end_warmup = time.monotonic() + args.warmup
            while time.monotonic() < end_warmup:
                sub.recv(0.5)
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                received = sub.recv(0.5)
                if received is not None:
                    totals.append(float(received.payload["latency"]["stages"]["total"]))
        if proc.poll() is not None:
            raise SystemExit(f"the pipeline exited during the run: {proc.stderr.read()[-2000:]}")
    return np.asarray(totals)


def summary(values: np.ndarray) -> dict[str, float]:
    return {f"p{p:g}": float(np.percentile(values, p)) for p in PERCENTILES} | {"n": int(values.size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="runs per condition (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=40, help="measured seconds per run (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=8, help="seconds after the first label before measuring")
    parser.add_argument("--client", choices=["chromium", "curl", "none"], default="chromium")
    parser.add_argument("--config", help="pipeline config (default: the embedded default)")
    parser.add_argument("--backend", default="aoti",
                        help="measure once labels come from this backend (the config's; default %(default)s)")
    parser.add_argument("--start-timeout", type=float, default=600,
                        help="seconds to wait for the first label from --backend")
    parser.add_argument("--json", help="write the runs' latencies and the summary as JSON")
    args = parser.parse_args()

    runs: dict[str, list[np.ndarray]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for condition in (("off", "on") if r % 2 == 0 else ("on", "off")):
            totals = one_run(args, condition == "on")
            runs[condition].append(totals)
            print(f"round {r + 1}/{args.rounds} view {condition:>3}: {totals.size} windows, "
                  f"p50 {np.percentile(totals, 50):.1f} ms, p99 {np.percentile(totals, 99):.1f} ms", flush=True)

    pooled = {c: np.concatenate(v) for c, v in runs.items()}
    stats = {c: summary(v) for c, v in pooled.items()}
    rng = np.random.default_rng(0)
    ratios = [
        np.percentile(rng.choice(pooled["on"], pooled["on"].size), 99)
        / np.percentile(rng.choice(pooled["off"], pooled["off"].size), 99)
        for _ in range(2000)
    ]
    low, high = np.percentile(ratios, [2.5, 97.5])
    print(f"\nclient: {args.client}; {args.rounds} runs per condition of {args.seconds:g} s, interleaved")
    print(f"{'view':>5} {'windows':>8} " + " ".join(f"{'p' + format(p, 'g'):>7}" for p in PERCENTILES)
          + "   per-run p99")
    for c in ("off", "on"):
        per_run = " ".join(f"{np.percentile(v, 99):.1f}" for v in runs[c])
        print(f"{c:>5} {stats[c]['n']:>8} " + " ".join(f"{stats[c][f'p{p:g}']:>7.1f}" for p in PERCENTILES)
              + f"   {per_run}")
    print("ratio on/off: " + ", ".join(f"p{p:g} {stats['on'][f'p{p:g}'] / stats['off'][f'p{p:g}']:.3f}"
                                       for p in PERCENTILES)
          + f"; p99 ratio 95% bootstrap interval {low:.3f}..{high:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "summary": stats, "p99_ratio_interval": [low, high],
             "runs": {c: [v.tolist() for v in runs[c]] for c in runs}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
