"""What a new user meets first: the embedded default config, ground truth of sources, the optional ``truth``
field, quiet third-party logs, soak's verdict, the keys/relay/subscribe/profile wording (issue 15)."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import threading

import pytest
import yaml
import zmq

from emim_stream.cli.commands import profile as profile_cmd
from emim_stream.cli.commands.common import Progress
from emim_stream.cli.main import main as cli_main
from emim_stream.engines.data.synthetic import CLASSES
from emim_stream.engines.errors import ConfigError
from emim_stream.pipeline.capture.sources import SyntheticSource
from emim_stream.pipeline.comms.curve import CurveServer, write_key_pair
from emim_stream.pipeline.comms.messages import LabelMessage, MessageError, ModelInfo, WindowInfo
from emim_stream.pipeline.comms.publish import Publisher
from emim_stream.pipeline.config import DEFAULT_CONFIG, CameraConfig, load_config
from emim_stream.pipeline.inference.truth import FileTruth, Segment, SyntheticTruth, read_sidecar, truth_for
from emim_stream.pipeline.measure.soak import verdict
from tests.integration.conftest import ROOT

# --- the embedded default ------------------------------------------------------------------------------------


def test_configs_default_is_the_packaged_default():
    """One file: configs/default.yaml (what `make run` passes) is the package's default, byte for byte."""
    assert (ROOT / "configs" / "default.yaml").read_bytes() == DEFAULT_CONFIG.read_bytes()
    assert DEFAULT_CONFIG.parent.name == "pipeline"  # inside the package, so an installed copy has it
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.engine.checkpoint == "emim_xs.demo" and cfg.cameras[0].source.startswith("synthetic://")


def test_config_show_and_init(tmp_path, capsys, monkeypatch):
    assert cli_main(["config", "show"]) == 0
    assert capsys.readouterr().out == DEFAULT_CONFIG.read_text()
    monkeypatch.chdir(tmp_path)
    assert cli_main(["config", "init"]) == 0
    written = tmp_path / "emim-stream.yaml"
    assert written.read_text() == DEFAULT_CONFIG.read_text()
    assert f"emim-stream run --config {written.name}" in capsys.readouterr().out
    assert cli_main(["config", "init"]) == 2  # no silent overwrite
    assert "exists; pass --force" in capsys.readouterr().err
    assert cli_main(["config", "init", "mine.yaml", "--force"]) == 0
    assert yaml.safe_load((tmp_path / "mine.yaml").read_text()) == yaml.safe_load(DEFAULT_CONFIG.read_text())


# --- ground truth --------------------------------------------------------------------------------------------


def test_synthetic_truth_follows_the_camera_schedule():
    uri = "synthetic://?seed=4&fps=25&size=64x48&segment_s=0.5"
    source = SyntheticSource(uri, pace=False)
    truth = truth_for(CameraConfig(id="c", source=uri))
    assert isinstance(truth, SyntheticTruth)
    per_segment = source.scene.segment_frames
    with source:
        for n in range(3 * per_segment):
            frame = source.read()  # the pts a camera writes into the ring
            assert truth.segment_at(frame.source_pts_ns)[1] == source.label_at(n)
    pts = [round(n * 1e9 / 25) for n in range(3 * per_segment)]
    assert truth.window(pts[0], pts[per_segment - 1]) == source.label_at(0)
    assert truth.window(pts[per_segment - 2], pts[per_segment + 1]) is None  # spans a cut: not scored
    assert truth.window(-1, pts[3]) is None  # unknown timestamps


def test_sidecar_segments_wrap_and_gaps(tmp_path):
    sidecar = tmp_path / "v.mp4.truth"
    sidecar.write_text("# start end label\n0 2 left\n2.5 4 air drumming  # spaces in a label\n")
    segments = read_sidecar(sidecar)
    assert segments == [Segment(0.0, 2.0, "left"), Segment(2.5, 4.0, "air drumming")]
    truth = FileTruth(segments, period_s=4.0)
    assert truth.window(int(0.1e9), int(1.9e9)) == "left"
    assert truth.window(int(1.9e9), int(2.6e9)) is None  # two segments
    assert truth.segment_at(int(2.2e9)) is None  # the gap is unlabelled
    assert truth.window(int(6.6e9), int(7.9e9)) == "air drumming"  # second loop of a 4 s file
    assert FileTruth(segments).segment_at(int(6.6e9)) is None  # not looping: past the end


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("0 2\n", "line 1: expected 'START_S END_S LABEL'"),
        ("0 x left\n", "line 1: expected"),
        ("3 2 left\n", "line 1: need 0 <= start < end"),
        ("0 2 left\n\n1 3 right\n", "line 3: segment starts before the previous one ends"),
    ],
)
def test_bad_sidecars_name_file_and_line(tmp_path, text, error):
    sidecar = tmp_path / "v.mp4.truth"
    sidecar.write_text(text)
    with pytest.raises(ConfigError, match=error) as info:
        read_sidecar(sidecar)
    assert str(sidecar) in str(info.value)


def test_truth_for_files_needs_a_sidecar_with_the_models_labels(tmp_path):
    video = tmp_path / "clip.mp4"
    assert truth_for(CameraConfig(id="c", source=str(video))) is None  # no sidecar: no truth column
    assert truth_for(CameraConfig(id="c", source="rtsp://127.0.0.1:8554/x")) is None
    (tmp_path / "clip.mp4.truth").write_text("0 1 left\n1 2 jumping\n")
    with pytest.raises(ConfigError, match="'jumping' are not the model's"):
        truth_for(CameraConfig(id="c", source=str(video)), CLASSES)
    truth = truth_for(CameraConfig(id="c", source=f"file://{video}"), ("left", "jumping"))  # the URI form: same file
    assert truth.window(int(0.1e9), int(0.9e9)) == "left" and truth.window(int(1.1e9), int(1.9e9)) == "jumping"
    assert truth.window(int(0.9e9), int(1.1e9)) is None  # spans the change
    assert truth.segment_at(int(2.5e9)) is None  # not looping: past the end


def _label(truth: str | None) -> LabelMessage:
    return LabelMessage(
        "cam1", WindowInfo(0, 7, 8, 4, 233.3), (("left", 0.9), ("right", 0.1)),
        ModelInfo("emim_xs", "torch", "fp32", "cpu"),
        1, 2, 3, 4, 5, 6, 7, {"total": 0.1}, msg_seq=0, truth=truth,
    )  # fmt: skip


def test_truth_field_is_optional_in_schema_1():
    with_truth = _label("left").to_payload()
    assert with_truth["truth"] == "left" and LabelMessage.from_payload(with_truth).truth == "left"
    without = _label(None).to_payload()
    assert "truth" not in without  # older readers see exactly the fields they know
    assert LabelMessage.from_payload(without).truth is None
    with pytest.raises(MessageError, match="'truth' must be a string"):
        LabelMessage.from_payload({**with_truth, "truth": 3})


# --- logging -------------------------------------------------------------------------------------------------

_LOG_PROBE = """
import logging, sys
from emim_stream.cli.main import configure_logging
configure_logging(int(sys.argv[1]))
logging.getLogger("onnxscript.optimizer").info("third-party info")
logging.getLogger("torch.onnx").warning("third-party warning")
logging.getLogger("emim_stream.engines.export.onnx").info("own info")
"""


@pytest.mark.parametrize("verbose", [0, 1])
def test_third_party_info_only_with_verbose(verbose):
    err = subprocess.run(
        [sys.executable, "-c", _LOG_PROBE, str(verbose)], capture_output=True, text=True, check=True, cwd=ROOT
    ).stderr
    assert "third-party warning" in err and "own info" in err
    assert ("third-party info" in err) == bool(verbose)


_WARNING_PROBE = """
import multiprocessing, sys, warnings
from emim_stream.cli.main import configure_logging

def child():
    warnings.warn("child deprecation", DeprecationWarning)

if __name__ == "__main__":
    configure_logging(int(sys.argv[1]))
    warnings.warn("library future change", FutureWarning)
    warnings.warn("a user warning", UserWarning)
    proc = multiprocessing.get_context("spawn").Process(target=child)
    proc.start()
    proc.join()
"""


@pytest.mark.parametrize("verbose", [0, 1])
def test_library_deprecations_only_with_verbose_here_and_in_started_processes(tmp_path, verbose):
    probe = tmp_path / "probe.py"
    probe.write_text(_WARNING_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}

    def stderr(*flags: str) -> str:
        cmd = [sys.executable, *flags, str(probe), str(verbose)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env).stderr

    assert "library future change" in stderr("-W", "default"), "the user's -W wins"
    err = stderr()
    assert "a user warning" in err
    assert ("library future change" in err) == bool(verbose)
    assert ("child deprecation" in err) == bool(verbose)


# --- soak's verdict ------------------------------------------------------------------------------------------


def test_soak_verdict_thresholds():
    steady = [30.0] * 99 + [40.0]
    checks = verdict(3.0, steady, steady, max_growth_mib=50, max_ratio=1.5)
    assert all(ok for ok, _ in checks)
    grown = verdict(80.0, steady, steady, 50, 1.5)
    assert [ok for ok, _ in grown] == [False, True] and "+80.0 MiB <= 50" in grown[0][1]
    drift = verdict(3.0, steady, [272.0] * 100, 50, 1.5)  # the 33 -> 272 ms
    assert [ok for ok, _ in drift] == [True, False] and "-> 272.0 ms" in drift[1][1]
    assert not verdict(None, [], steady, 50, 1.5)[1][0]  # no label in the first window cannot pass


# --- wording: keys, CURVE hints ------------------------------------------------------------------------------


def test_keys_hint_names_both_publisher_settings(tmp_path, capsys):
    assert cli_main(["keys", "--out", str(tmp_path), "--name", "server"]) == 0
    out = capsys.readouterr().out
    assert "publish.curve_secret_key_file=" in out and "publish.curve_clients_dir=" in out


@pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq is built without CURVE")
def test_profile_names_curve_when_the_publisher_refuses(tmp_path, capsys):
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    clients.mkdir()
    write_key_pair(keys, "server")
    write_key_pair(keys, "alice")
    (clients / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    parser = argparse.ArgumentParser()
    profile_cmd.add_arguments(parser)
    with Publisher("tcp://127.0.0.1:*", curve=CurveServer(keys / "server.key_secret", clients)) as pub:
        done = threading.Event()

        def feed() -> None:  # the publisher keeps sending while profile runs (signals need the main thread)
            while not done.wait(0.02):
                pub.send(b"labels/cam1/", _label("left").to_payload())

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            keyed = ("--curve-server-key", str(keys / "server.key"),
                     "--curve-client-key", str(keys / "alice.key_secret"))  # fmt: skip
            results = {
                name: profile_cmd.main(parser.parse_args(["--endpoint", pub.endpoint, "--duration", "1.5", *extra]))
                for name, extra in (("bare", ()), ("keyed", keyed))
            }
        finally:
            done.set()
            feeder.join()
    assert results == {"bare": 1, "keyed": 0}
    err = capsys.readouterr().err
    assert "the publisher uses CURVE; pass --curve-server-key" in err


# --- progress ------------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_a_line_per_tenth_otherwise():
    log = io.StringIO()
    progress = Progress("clips", out=log)
    for done in range(1, 101):
        progress(done, 100)
    assert log.getvalue().splitlines() == [f"clips {n}/100" for n in range(10, 101, 10)]
    term = _Terminal()
    bar = Progress("clips", out=term)
    for done in (1, 50, 100):
        bar(done, 100)
    frames = term.getvalue().split("\r")[1:]
    bars = [f.split("]")[0].removeprefix("clips [") for f in frames]
    assert bars == ["." * 30, "#" * 15 + "." * 15, "#" * 30]
    assert "eta" in frames[1] and frames[-1].endswith("\n") and not frames[1].endswith("\n")
    bar.step(2, 3, "auditing")
    assert term.getvalue().endswith("clips [2/3] auditing\n")


def test_webcam_quick_start_override():
    """The README's `run --set cameras.0.source=0`: USB camera 0 on the embedded default, no truth column."""
    cfg = load_config(DEFAULT_CONFIG, ["cameras.0.source=0"])
    assert cfg.cameras[0].source == "0" and cfg.engine.checkpoint == "emim_xs.demo"
    assert truth_for(cfg.cameras[0]) is None
