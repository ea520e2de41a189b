"""atomic_write: the target holds the old content or the whole new one, and no temporary file stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from emim_stream.engines.files import atomic_write


def test_atomic_write_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_write_suffix_ends_the_temporary_name(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "a.npy", suffix=".npy") as tmp:
        assert tmp.name.endswith(".npy")
        tmp.write_bytes(b"x")
    assert (tmp_path / "a.npy").read_bytes() == b"x"
