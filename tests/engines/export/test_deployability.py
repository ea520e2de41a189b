"""The deployability contract of a calibrated ONNX, as the engines read it (no calibration run needed)."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from emim_stream.engines.errors import CalibrationError
from emim_stream.engines.export.deployability import (
    SIDECAR_FORMAT,
    Verdict,
    check_deployable,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

HASH = "ab" * 32


def verdict(top1: float, gate: float = 0.99) -> Verdict:
    return Verdict("emim_xs", HASH, "int8", gate, top1, "onnxruntime", 100, top1 >= gate)


@pytest.fixture
def onnx_path(tmp_path):
    path = tmp_path / "model.qdq.onnx"
    path.write_bytes(b"graph bytes")
    return path


def test_the_record_carries_the_weights_the_file_hash_and_the_gate(onnx_path):
    record = write_sidecar(onnx_path, verdict(0.995), extra={"input": [3, 4, 64, 64]})
    on_disk = json.loads(sidecar_path(onnx_path).read_text())
    assert on_disk == record == read_sidecar(onnx_path)
    assert record["format"] == SIDECAR_FORMAT and record["onnx"] == "model.qdq.onnx"
    assert record["model"] == {"name": "emim_xs", "weights_sha256": HASH}
    assert record["onnx_sha256"] == hashlib.sha256(b"graph bytes").hexdigest()  # independent of file_sha256
    assert record["gate"] == {
        "metric": "top1_agreement",
        "threshold": 0.99,
        "value": 0.995,
        "backend": "onnxruntime",
        "clips": 100,
    }
    assert record["deployable"] is True and record["input"] == [3, 4, 64, 64]
    left = sorted(p.name for p in onnx_path.parent.iterdir())
    assert left == ["model.qdq.onnx", "model.qdq.onnx.calibration.json"]  # no temporary file


def test_no_record_means_no_check_and_a_record_without_its_onnx_is_refused(onnx_path):
    assert read_sidecar(onnx_path) is None
    check_deployable(onnx_path, "cd" * 32)  # not a calibration artifact: other weights are fine
    write_sidecar(onnx_path, verdict(1.0))
    onnx_path.unlink()
    with pytest.raises(CalibrationError, match=r"model\.qdq\.onnx' does not exist \(only its calibration record"):
        check_deployable(onnx_path, HASH)


def test_a_failed_gate_is_refused_with_its_figures_unless_forced(onnx_path, caplog):
    write_sidecar(onnx_path, verdict(0.97))
    with pytest.raises(
        CalibrationError,
        match=r"not deployable: int8 top-1 agreement with the float model 97\.00% \(onnxruntime, 100 held-out "
        r"clips\) is below the gate 99\.00%",
    ):
        check_deployable(onnx_path, HASH)
    with caplog.at_level(logging.WARNING, logger="emim_stream.engines.export.deployability"):
        check_deployable(onnx_path, HASH, force=True)
    assert "building it anyway (forced)" in caplog.text
    assert CalibrationError.exit_code == 8


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read"),
        (json.dumps({"format": "emim-stream.calibration/0"}), "cannot be read .*format is not"),
        (json.dumps(["a", "list"]), "cannot be read"),
        (json.dumps({"format": SIDECAR_FORMAT, "model": {"name": "emim_xs"}}), "lacks 'gate'"),
    ],
)
def test_a_broken_record_is_refused_naming_the_file(onnx_path, content, message):
    sidecar_path(onnx_path).write_text(content)
    with pytest.raises(CalibrationError, match=rf"calibration record '.*\.onnx\.calibration\.json' {message}"):
        check_deployable(onnx_path, HASH, force=True)
