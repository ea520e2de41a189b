"""Poisoned and malformed checkpoints: refused at load with exit 3, a message naming the file and the keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emim_stream.engines.checkpoints.io import load_checkpoint, save_checkpoint, weights_sha256
from emim_stream.engines.clip import ClipSpec
from emim_stream.engines.errors import CheckpointError
from emim_stream.engines.models import build_model

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "good.pt"
    model = build_model("emim_xs")
    save_checkpoint(path, model, model.default_cfg.label_names, ClipSpec(4, 64, 64))
    return path


def rewrite(good: Path, out: Path, change) -> Path:
    """``good`` with ``change(record)`` applied, the content hash recomputed (so only the change is wrong)."""
    record = torch.load(good, weights_only=True)
    change(record)
    record["weights_sha256"] = weights_sha256(record["state_dict"], record.get("vmp"))
    torch.save(record, out)
    return out


def nan_weight(record) -> None:
    record["state_dict"]["head.weight"][0, 0] = float("nan")


def inf_weight(record) -> None:
    record["state_dict"]["blocks1.0.pos_embed.weight"].view(-1)[3] = float("inf")


def misfit(record) -> None:
    record["state_dict"]["head.weight"] = torch.zeros(3, 7)
    record["state_dict"]["stray.weight"] = torch.zeros(1)


CASES = {
    "nan": (nan_weight, r"non-finite \(NaN/Inf\) weights in \['head.weight'\]"),
    "inf": (inf_weight, r"non-finite .*blocks1.0.pos_embed.weight"),
    "misfit": (misfit, r"does not fit emim_xs: missing \[\], unexpected \['stray.weight'\], shape mismatch "
               r"\['head.weight \(3, 7\) vs \(\d+, \d+\)'\]"),
    "no-labels": (lambda r: r.pop("labels"), r"lacks \['labels'\]"),
    "no-clip": (lambda r: r.pop("clip"), r"lacks \['clip'\]"),
    "bad-clip": (lambda r: r["clip"].update(frames=1), r"invalid record: clip frames must be >= 2"),
    "bad-labels": (lambda r: r.update(labels=[1, 2]), r"invalid record: labels must be a non-empty list of strings"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_poisoned_checkpoint_is_refused_naming_the_keys(good, tmp_path, case):
    change, message = CASES[case]
    path = rewrite(good, tmp_path / f"{case}.pt", change)
    with pytest.raises(CheckpointError, match=rf"{case}.pt.*{message}"):
        load_checkpoint(path)


def test_zero_byte_file_is_refused(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt' cannot be read: the file is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pt")


@pytest.mark.parametrize("case", ["empty", "nan", "misfit", "no-labels"])
def test_cli_exits_3_with_one_line(good, tmp_path, case):
    path = tmp_path / f"{case}.pt"
    if case == "empty":
        path.write_bytes(b"")
    else:
        rewrite(good, path, CASES[case][0])
    result = subprocess.run(
        [sys.executable, "-m", "emim_stream.cli", "info", "--checkpoint", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{case}.pt" in lines[0] and "Traceback" not in result.stderr
