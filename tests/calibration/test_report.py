"""The accuracy report's figures, the gate's boundary, and the record it leaves for the engines' deployability check."""

from __future__ import annotations

import json

import pytest
import torch

from emim_stream.calibration import CalibrationError
from emim_stream.calibration.report import build_report, compare_logits, write_sidecar
from emim_stream.engines.export.deployability import check_deployable, read_sidecar, sidecar_path

LABELS = ("a", "b", "c", "d", "e", "f")
HASH = "ab" * 32


def logits_with_disagreements(n: int, flips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float logits (class i % 6 wins) and a copy whose first ``flips`` clips prefer the next class."""
    reference = torch.zeros(n, len(LABELS))
    reference[torch.arange(n), torch.arange(n) % len(LABELS)] = 4.0
    candidate = reference.clone()
    for i in range(flips):
        candidate[i, (i + 1) % len(LABELS)] = 5.0
    return reference, candidate


def test_compare_logits_figures():
    reference = torch.tensor(
        [[3.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]]
    )
    candidate = reference.clone()
    candidate[1] = torch.tensor([0.0, 1.0, 1.5, 0.0, 0.0, 0.0])  # top-1 moves to 'c', 'b' still in the top 5
    candidate[2, 5] = 8.0
    got = compare_logits(reference, candidate, LABELS, "test")
    assert got.clips == 3 and got.top1 == pytest.approx(2 / 3) and got.top5 == 1.0
    assert got.max_logit_error == pytest.approx(1.0) and got.float_logit_scale == 9.0
    assert got.mean_logit_error == pytest.approx((1.0 + 0.5 + 1.0) / 18)
    assert set(got.per_class) == {"a", "b", "f"}
    assert got.per_class["b"].clips == 1 and got.per_class["b"].top1 == 0.0 and got.per_class["a"].top1 == 1.0

    far = torch.zeros(1, 6)
    far[0, 0] = 1.0
    worse = torch.zeros(1, 6)
    worse[0] = torch.tensor([-1.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # the float top class is 6th
    assert compare_logits(far, worse, LABELS, "test").top5 == 0.0


@pytest.mark.parametrize(("flips", "deployable"), [(0, True), (1, True), (2, False)])
def test_gate_boundary_on_100_clips(flips, deployable):
    reference, candidate = logits_with_disagreements(100, flips)
    report = build_report("m", HASH, "int8", reference, candidate, LABELS, onnxruntime=reference.clone())
    assert report.gate == 0.99 and report.deployable is deployable
    assert report.gated.backend == "torch-fakequant" and report.gated.top1 == pytest.approx(1 - flips / 100)
    assert ("DEPLOYABLE" if deployable else "NOT deployable") in report.summary()


def test_every_backend_must_pass_and_a_gate_above_one_always_fails():
    reference, broken = logits_with_disagreements(10, 5)
    report = build_report("m", HASH, "int8", reference, reference.clone(), LABELS, onnxruntime=broken)
    assert not report.deployable and report.gated.backend == "onnxruntime" and report.gated.top1 == 0.5
    perfect = build_report("m", HASH, "int8", reference, reference.clone(), LABELS, gate=1.01)
    assert perfect.gated.top1 == 1.0 and not perfect.deployable
    unrun = build_report("m", HASH, "fp8", reference, reference, LABELS, onnxruntime_error="no float8 kernel")
    assert unrun.deployable and "not run: no float8 kernel" in unrun.summary()
    with pytest.raises(CalibrationError, match="at least one held-out clip"):
        build_report("m", HASH, "int8", reference[:0], reference[:0], LABELS)


def test_sidecar_ties_the_onnx_to_weights_file_and_verdict(tmp_path):
    onnx_path = tmp_path / "model.qdq.onnx"
    onnx_path.write_bytes(b"graph bytes")
    check_deployable(onnx_path, HASH)  # no sidecar: not a calibration artifact, nothing to check

    reference, candidate = logits_with_disagreements(50, 3)
    good = build_report("emim_xs", HASH, "int8", reference, reference.clone(), LABELS)
    record = write_sidecar(onnx_path, good, extra={"clips": {"held_out": 50}})
    assert sidecar_path(onnx_path).name == "model.qdq.onnx.calibration.json"
    assert read_sidecar(onnx_path) == record and record["deployable"] and record["clips"] == {"held_out": 50}
    check_deployable(onnx_path, HASH)
    with pytest.raises(CalibrationError, match=r"calibrated for emim_xs weights abab.* loads weights cdcdcdcdcdcd"):
        check_deployable(onnx_path, "cd" * 32)

    onnx_path.write_bytes(b"another graph")
    with pytest.raises(CalibrationError, match="changed since it was calibrated"):
        check_deployable(onnx_path, HASH)

    bad = build_report("emim_xs", HASH, "int8", reference, candidate, LABELS)
    write_sidecar(onnx_path, bad)
    with pytest.raises(
        CalibrationError,
        match=r"not deployable: int8 top-1 agreement .* 94\.00% \(torch-fakequant, 50 "
        r"held-out clips\) is below the gate 99\.00%",
    ):
        check_deployable(onnx_path, HASH)
    check_deployable(onnx_path, HASH, force=True)  # a failed gate can be overridden ...
    with pytest.raises(CalibrationError, match="calibrated for emim_xs weights"):
        check_deployable(onnx_path, "cd" * 32, force=True)  # ... other weights cannot

    sidecar_path(onnx_path).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CalibrationError, match="cannot be read"):
        check_deployable(onnx_path, HASH)
