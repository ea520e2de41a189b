"""Rings left by killed runs: found by the owner pid in their name, reclaimed at the next start and by the doctor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emim_stream.pipeline.capture.ring import SharedRing, reclaim_stale_rings, stale_rings

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm (Linux)")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_ring_names_carry_the_owner_pid():
    with SharedRing.create(4, 8, 8) as ring:
        assert ring.name.startswith(f"emim_{os.getpid()}_")
        assert ring.name not in stale_rings()  # its owner (this process) is alive


def test_only_rings_of_gone_owners_are_reclaimed(tmp_path, caplog):
    gone = f"emim_{dead_pid()}_abc123"
    for name in (gone, f"emim_{os.getpid()}_def456", "emim_legacy0001", "other_1_abc"):
        (tmp_path / name).write_bytes(b"")
    assert stale_rings(str(tmp_path)) == [gone]
    with caplog.at_level("WARNING"):
        assert reclaim_stale_rings(str(tmp_path)) == [gone]
    assert [r.message for r in caplog.records if "reclaimed" in r.message] == [
        f"reclaimed 1 shared-memory ring(s) left by killed runs: {gone}"
    ]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"emim_{os.getpid()}_def456", "emim_legacy0001", "other_1_abc"]
    assert reclaim_stale_rings(str(tmp_path)) == []


def test_doctor_lists_then_cleans_a_stale_segment(tmp_path):
    """doctor's section on a folder of its own: every pipeline that starts on this box reclaims stale segments in
    /dev/shm, so one made there could vanish before doctor looks."""
    name = f"emim_{dead_pid()}_0fface"
    path = tmp_path / name
    path.write_bytes(b"\0" * 64)
    code = "from emim_stream.cli.commands.doctor import _report_stale_rings as r; r({}, {!r})"
    listed = subprocess.run([sys.executable, "-c", code.format(False, str(tmp_path))], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert f"stale rings  {path}" in listed.stdout and path.exists()
    cleaned = subprocess.run([sys.executable, "-c", code.format(True, str(tmp_path))], capture_output=True, text=True)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"removed stale rings  {path}" in cleaned.stdout and not path.exists()
