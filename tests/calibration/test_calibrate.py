"""`emim-stream calibrate` end to end on emim_xs (4x64x64, synthetic camera): Q/DQ placement, parity, gate.

Tolerances (ONNX Runtime against the fake-quant torch model):

- per Q/DQ pair, fed in ONNX Runtime the tensor it sees there, against its torch quantiser on the
  same tensor: at most 1e-5 of the elements differ by more than 1e-5 amax (rounding ties, the
  int8 code -128), and none by more than one INT8 step (amax / 127);
- end to end on emim_xs, logits differ by at most twice the quantisation error itself
  (max |fake-quant - float|): a tie that rounds the other way moves a value by one step and later
  quantisers carry it on, so the two are different roundings of the same quantised network;
- end to end on a shallow model (one conv, two linears), where nothing cascades: 1e-4 of the
  largest logit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import onnx
import pytest
import torch
import yaml

from emim_stream.calibration import CalibrationError
from emim_stream.calibration.clips import Split, load_clips
from emim_stream.calibration.quantize import (
    DEFAULT_KEEP,
    audit_qdq,
    check_qdq,
    export_qdq_onnx,
    qdq_parity,
    quantizable_modules,
    quantize_model,
)
from emim_stream.calibration.report import build_report, infer_logits
from emim_stream.cli import main as cli
from emim_stream.cli.commands.calibrate import collect_from_source
from emim_stream.engines.backends import load_engine
from emim_stream.engines.backends.base import EngineConfig
from emim_stream.engines.backends.model_source import load_source
from emim_stream.engines.checkpoints.io import ClipSpec, save_checkpoint
from emim_stream.engines.export.deployability import check_deployable
from emim_stream.engines.export.onnx import run_onnxruntime
from emim_stream.engines.models import build_model

pytest.importorskip("modelopt.torch.quantization", reason="calibration needs nvidia-modelopt (the quant extra)")

CALIBRATION, HELD_OUT = 8, 4
STEP = {"int8": 1 / 127, "fp8": 32 / 448}  # the largest quantisation step, relative to amax (E4M3: 32 near 448)
ENGINE = {"model": "emim_xs", "frames": 4, "height": 64, "width": 64}
THREADS = 1  # torch and ONNX Runtime: 2 threads on the 2 shared cores of CI are several times slower


def calibrate(argv: list[str]) -> tuple[int, str, str]:
    """Run the command in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setitem(cli.COMMANDS, "calibrate", "calibrate")
        code = cli.main(["calibrate", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The command sets engine.threads for the whole process; the tests here run at that count too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "calibrate.yaml"
    cameras = [{"id": "cam1", "source": "synthetic://?seed=5&size=80x64&segment_s=1"}]
    path.write_text(yaml.safe_dump({"cameras": cameras, "engine": {**ENGINE, "threads": THREADS}}))
    return path


@pytest.fixture(scope="module")
def model():
    return load_source(EngineConfig(**ENGINE))


@pytest.fixture(scope="module")
def int8_run(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    argv = ["--config", str(config), "--clips", str(CALIBRATION), "--held-out", str(HELD_OUT), "--out", str(out)]
    code, stdout, stderr = calibrate([*argv, "--gate", "0.5"])
    return out, code, stdout, stderr


def test_cli_writes_a_deployable_int8_artifact(int8_run, model):
    out, code, stdout, stderr = int8_run
    assert code == 0, stdout + stderr
    assert f"clips {CALIBRATION + HELD_OUT}/{CALIBRATION + HELD_OUT}" in stderr  # progress
    assert f"calibrating {CALIBRATION}/{CALIBRATION}" in stderr
    assert "verdict: DEPLOYABLE" in stdout and "engine.precision: int8" in stdout
    record = json.loads((out / "calibration.json").read_text())
    assert record == json.loads((out / "model.qdq.onnx.calibration.json").read_text())
    assert record["model"]["weights_sha256"] == model.weights_sha256 and record["precision"] == "int8"
    assert record["deployable"] is True and record["gate"]["threshold"] == 0.5
    assert record["clips"]["calibration"] == CALIBRATION and record["clips"]["held_out"] == HELD_OUT
    report = json.loads((out / "report.json").read_text())
    assert [c["backend"] for c in report["comparisons"]] == ["torch-fakequant", "onnxruntime"]
    assert report["onnxruntime_error"] is None and report["details"]["quantized_layers"] == 37
    check_deployable(out / "model.qdq.onnx", model.weights_sha256)


def test_qdq_pairs_on_every_conv_and_linear_meant_to_be_quantised(int8_run, model):
    out = int8_run[0]
    layers = [n for n, m in model.model.named_modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear))]
    motion_mlp = [n for n in layers if ".attn.motion_conv." in n]
    assert len(layers) == 41 and len(motion_mlp) == 4  # 2 EMIM layers x 2 Linears
    audit = audit_qdq(out / "model.qdq.onnx")
    assert audit.count == 2 * (len(layers) - len(motion_mlp)) == 74
    assert set(audit.pairs) == set(layers) - set(motion_mlp)
    assert all(kinds == ("input", "weight") for kinds in audit.pairs.values())
    assert audit.dtypes == ("INT8",) and audit.unpaired == ()
    assert quantizable_modules(model.model, DEFAULT_KEEP) == (
        tuple(n for n in layers if n not in motion_mlp),
        tuple(motion_mlp),
    )

    graph = onnx.load(str(out / "model.qdq.onnx")).graph
    softmax = [n.output[0] for n in graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 4  # 2 EMIM (neighbourhood logits) + 2 global attention
    fed_by_softmax = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in softmax]
    assert fed_by_softmax == []  # attention weights stay float32


def test_onnxruntime_matches_the_fakequant_model(int8_run):
    report = json.loads((int8_run[0] / "report.json").read_text())
    parity = report["qdq_parity"]
    assert parity["pairs"] == 74 and parity["elements"] > 1_000_000
    assert parity["mismatched"] <= 1e-5 * parity["elements"]
    assert parity["max_error_of_amax"] <= STEP["int8"] + 1e-6
    fakequant = report["comparisons"][0]
    ort_vs_fakequant = report["onnxruntime_vs_fakequant"]
    assert ort_vs_fakequant["clips"] == HELD_OUT
    assert ort_vs_fakequant["max_logit_error"] <= 2 * fakequant["max_logit_error"]


def test_a_broken_quantiser_fails_the_gate(int8_run, model):
    clips = load_clips(int8_run[0] / "clips", model)
    quant = quantize_model(model.model, clips.batches(Split.CALIBRATION, 8), "int8")
    with torch.no_grad():
        for name, module in quant.model.named_modules():
            if name.endswith("input_quantizer") and module.is_enabled:
                module.amax = module.amax * 1e-3  # clips every activation to a thousandth of its range
    reference = infer_logits(model.model, clips.batches(Split.HELD_OUT, 8))
    broken = infer_logits(quant.model, clips.batches(Split.HELD_OUT, 8))
    report = build_report(model.model_name, model.weights_sha256, "int8", reference, broken, model.labels)
    assert report.comparisons[0].top1 <= 0.5 and not report.deployable


@pytest.mark.slow  # a second quantisation and export
def test_fp8_reuses_the_clips_and_a_failed_gate_is_refused(int8_run, config, model, tmp_path):
    argv = ["--config", str(config), "--clips-from", str(int8_run[0] / "clips"), "--precision", "fp8"]
    code, stdout, stderr = calibrate([*argv, "--out", str(tmp_path), "--gate", "1.01"])
    assert code == 1, stdout + stderr
    assert "verdict: NOT deployable" in stdout
    audit = audit_qdq(tmp_path / "model.qdq.onnx")
    assert audit.count == 74 and audit.dtypes == ("FLOAT8E4M3FN",)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["onnxruntime_error"] is None and report["precision"] == "fp8"  # ONNX Runtime ran the FP8 graph
    assert json.loads((tmp_path / "calibration.json").read_text())["deployable"] is False
    with pytest.raises(CalibrationError, match=r"not deployable: fp8 top-1 agreement .* below the gate 101\.00%"):
        check_deployable(tmp_path / "model.qdq.onnx", model.weights_sha256)
    engine_cfg = EngineConfig(**ENGINE, backend="onnxruntime", precision="fp8", onnx=str(tmp_path / "model.qdq.onnx"))
    with pytest.raises(CalibrationError, match="not deployable"):
        load_engine(engine_cfg, model)  # the engine refuses it too ...
    forced = dataclasses.replace(engine_cfg, force_undeployable=True)
    with load_engine(forced, model) as engine:  # ... unless forced
        assert engine.describe().backend == "onnxruntime"


def test_foreign_wrong_shape_and_missing_clips_are_refused(int8_run, config, model, tmp_path):
    clips = str(int8_run[0] / "clips")
    torch.manual_seed(1)
    other = build_model("emim_xs")
    checkpoint = tmp_path / "other.pt"
    save_checkpoint(checkpoint, other, model.labels, ClipSpec(4, 64, 64))
    base = ["--config", str(config), "--out", str(tmp_path / "out")]
    code, _, stderr = calibrate(
        [*base, "--clips-from", clips, "--set", f"engine.checkpoint={checkpoint}", "--set", "engine.model=null"]
    )
    assert code == CalibrationError.exit_code and "were collected for emim_xs weights" in stderr
    code, _, stderr = calibrate([*base, "--clips-from", clips, "--set", "engine.height=96", "--set", "engine.width=96"])
    assert code == CalibrationError.exit_code and "model takes [3, 4, 96, 96]" in stderr
    code, _, stderr = calibrate([*base, "--clips-from", str(tmp_path / "nothing")])
    assert code == CalibrationError.exit_code and "no calibration clips in" in stderr
    code, _, stderr = calibrate([*base, "--held-out", "0", "--clips", "4"])
    assert code == CalibrationError.exit_code and "--held-out must be >= 1" in stderr
    collect_from_source("synthetic://?size=80x64", model, tmp_path / "no_held_out", calibration=2, held_out=0)
    code, _, stderr = calibrate([*base, "--clips-from", str(tmp_path / "no_held_out")])
    assert code == CalibrationError.exit_code and "holds no held-out clip" in stderr


class Tiny(torch.nn.Module):
    """A conv and a called nn.Sequential of linears: the exporter names those children ``mlp/mlp.0``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, 3, padding=1)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.conv(x).mean((2, 3, 4)))


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_every_layer_of_a_small_model_gets_its_pairs(precision, tmp_path):
    torch.manual_seed(0)
    clips = torch.randn(6, 3, 4, 8, 8)
    quant = quantize_model(Tiny().eval(), [clips[:3], clips[3:]], precision, keep=())
    assert quant.quantized == ("conv", "mlp.0", "mlp.2") and quant.clips == 6
    export_qdq_onnx(quant, (4, 8, 8), tmp_path / "tiny.onnx")  # checks the pairs itself
    audit = audit_qdq(tmp_path / "tiny.onnx")
    assert audit.pairs == dict.fromkeys(("conv", "mlp.0", "mlp.2"), ("input", "weight"))
    with pytest.raises(CalibrationError, match=r"1 layer\(s\) without input\+weight pairs \['head'\]"):
        check_qdq(tmp_path / "tiny.onnx", ("conv", "mlp.0", "mlp.2", "head"))
    with pytest.raises(CalibrationError, match=r"1 unexpected \['mlp.2'\]"):
        check_qdq(tmp_path / "tiny.onnx", ("conv", "mlp.0"))
    parity = qdq_parity(tmp_path / "tiny.onnx", quant.model, clips)
    assert parity.pairs == 6 and parity.mismatched <= 2 and parity.max_error_of_amax <= STEP[precision] + 1e-6
    with torch.no_grad():
        expected = quant.model(clips)
    assert (run_onnxruntime(tmp_path / "tiny.onnx", clips) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_quantize_model_refuses_no_clips_and_nothing_to_quantise(model):
    with pytest.raises(CalibrationError, match="no calibration clips"):
        quantize_model(model.model, [], "int8")
    with pytest.raises(CalibrationError, match="leave no conv or linear layer"):
        quantize_model(model.model, [torch.zeros(1, 3, 4, 64, 64)], "int8", keep=("*",))
    with pytest.raises(CalibrationError, match="precision must be one of"):
        quantize_model(model.model, [torch.zeros(1, 3, 4, 64, 64)], "int4")
