"""End to end with ``engine.backend: aoti`` on an empty cache: eager serves at once, the compiled engine swaps in.

The run itself is the session's ``aoti_warmup`` fixture (tests/conftest.py), whose package the
engine tests reuse; this checks what the pipeline published and logged (docs/architecture.md#warm-up).
"""

from __future__ import annotations

import itertools

from tests.conftest import AOTI_LABELS
from tests.integration.conftest import alive


def test_first_labels_come_from_eager_then_the_package_swaps_in(aoti_warmup):
    run = aoti_warmup
    tail = run.output[-4000:]
    backends = [m.model.backend for m in run.labels]
    assert backends and backends[0] == "torch", f"the first labels waited for the build:\n{tail}"
    assert backends.count("aoti") >= AOTI_LABELS, f"the compiled engine never served:\n{tail}"
    swap = backends.index("aoti")
    assert set(backends[:swap]) == {"torch"} and set(backends[swap:]) == {"aoti"}  # one swap, no way back
    for a, b in itertools.pairwise(run.labels):  # one stream across the swap: nothing restarted
        assert b.msg_seq == a.msg_seq + 1 and b.window.last_seq > a.window.last_seq
    assert run.labels[swap].model.checkpoint_sha256 == run.labels[0].model.checkpoint_sha256
    out = run.output
    assert run.build_pid is not None and "aoti build: 2/2 AOTInductor compile" in out  # progress from the build
    assert "engine swapped at a window boundary" in out and "-> aoti fp32 on cpu" in out
    assert run.exit_code == 0 and "Traceback" not in out
    assert not alive(run.build_pid), "the build process outlived the pipeline"
