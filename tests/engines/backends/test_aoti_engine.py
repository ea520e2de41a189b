"""The aoti backend on the CPU: parity with eager torch, the package cache, bad packages, no compiler, warm-up.

Tests that need a built package share the session's one build (tests/conftest.py); the tests of
damaged packages "rebuild" by storing that package's bytes again (the real build is the session's).
Parity: fp32 logits against the eager model, relative to the largest eager magnitude, limit 1e-4.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from emim_stream.engines.backends import Candidate, EngineConfig, aoti_engine, load_engine, open_backend, start_engine
from emim_stream.engines.backends.model_source import ModelSource, load_source
from emim_stream.engines.clip import ClipSpec
from emim_stream.engines.errors import BackendUnavailableError

REL = 1e-4
DEMO = EngineConfig(backend="aoti", device="cpu", checkpoint="emim_xs.demo", threads=2)
STEP = Candidate("aoti", "cpu", "fp32")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def eager_logits(source: ModelSource, clips: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return source.model(clips)


@pytest.fixture
def cache_copy(demo_package_cache, tmp_path):
    """A private copy of the session's cache (package + sidecar) that a test may damage."""
    shutil.copytree(demo_package_cache / "plans", tmp_path / "plans")
    (package,) = (tmp_path / "plans").glob("*.pt2")
    return tmp_path, package, package.with_suffix(".json")


def test_demo_package_matches_eager_at_every_batch_size(demo_package_cache, caplog):
    cfg = dataclasses.replace(DEMO, plan_cache_dir=str(demo_package_cache))
    source = load_source(cfg)
    with caplog.at_level(logging.INFO, logger="emim_stream.engines.backends"):
        engine = open_backend(cfg, STEP, source)
    with engine:
        info = engine.describe()
        assert (info.backend, info.device, info.precision) == ("aoti", "cpu", "fp32")
        assert "(cached)" in info.detail and "batch 1..8" in info.detail and info.kernel.startswith("reference")
        assert "aoti: using cached package" in caplog.text and "building" not in caplog.text
        for batch in (1, 3, 8):  # one package, dynamic batch
            clips = torch.randn(engine.input_spec.shape(batch), generator=torch.Generator().manual_seed(batch))
            got = engine.infer(clips)
            assert got.shape == (batch, len(engine.labels)) and got.dtype == torch.float32
            assert rel_err(got, eager_logits(source, clips)) < REL, f"batch {batch}"
        with pytest.raises(ValueError, match="1 <= B <= 8"):
            engine.infer(torch.randn(engine.input_spec.shape(9)))


def test_sidecar_records_the_key(demo_package_cache):
    (sidecar,) = (demo_package_cache / "plans").glob("aoti-*.json")
    record = json.loads(sidecar.read_text())
    source = load_source(DEMO)
    assert record["weights_sha256"] == source.weights_sha256 and record["model_name"] == "emim_xs"
    assert record["torch_version"] == torch.__version__ and record["device_kind"] == "cpu"
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and record["gpu_name"] == ""
    assert (record["frames"], record["height"], record["width"], record["max_batch"]) == (8, 64, 64, 8)
    assert record["kernel"] == "reference" and record["precision"] == "fp32" and record["batch_range"] == [1, 8]
    assert record["model_code_sha256"] == aoti_engine.model_code_sha256() and record["build_s"] > 0


def _damage(kind: str, package, sidecar) -> str:
    """Damage the cached package one way; returns the log text that must say why it is rebuilt."""
    data = package.read_bytes()
    record = json.loads(sidecar.read_text())
    if kind == "truncated":
        package.write_bytes(data[: len(data) // 2])
        return "is corrupt"
    if kind == "flipped byte":
        package.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
        return "is corrupt"
    if kind == "other torch":
        sidecar.write_text(json.dumps({**record, "torch_version": "2.11.0+cu128"}))
        return "torch_version: expected"
    if kind == "no sidecar":
        sidecar.unlink()
        return "has no sidecar"
    # bytes that match their sidecar but are no package: the loader refuses them
    garbage = b"PK\x03\x04 not a package" * 100
    package.write_bytes(garbage)
    sidecar.write_text(json.dumps({**record, "plan_sha256": hashlib.sha256(garbage).hexdigest()}))
    return "refused to deserialise"


@pytest.mark.parametrize("kind", ["truncated", "flipped byte", "other torch", "no sidecar", "not a package"])
def test_bad_package_is_rebuilt_with_the_reason_logged(cache_copy, monkeypatch, caplog, kind):
    root, package, sidecar = cache_copy
    good = package.read_bytes()
    builds = []

    def rebuild(*args, **kwargs):
        builds.append(args)
        return good, {"build_s": 0.0}

    monkeypatch.setattr(aoti_engine, "build_package", rebuild)
    why = _damage(kind, package, sidecar)
    cfg = dataclasses.replace(DEMO, plan_cache_dir=str(root))
    with caplog.at_level(logging.INFO, logger="emim_stream.engines.backends"):
        engine = open_backend(cfg, STEP)
    with engine:
        assert len(builds) == 1 and "(built now)" in engine.describe().detail
        assert why in caplog.text and "building a new package" in caplog.text
        assert engine.infer(torch.zeros(engine.input_spec.shape(2))).shape == (2, len(engine.labels))
    assert package.read_bytes() == good  # stored again, under the same key, with a fresh sidecar
    assert json.loads(sidecar.read_text())["plan_sha256"] == hashlib.sha256(good).hexdigest()


@pytest.fixture
def no_compiler():
    """AOTInductor's compiler search finds nothing (a C++ compiler path that does not exist)."""
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, "/nonexistent/emim-test-c++")}):
        yield


def test_no_compiler_falls_back_to_torch_with_the_reason(no_compiler, tmp_path, caplog):
    cfg = dataclasses.replace(DEMO, plan_cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="emim_stream.engines.backends"):
        engine = load_engine(cfg)
    with engine:
        assert engine.describe().backend == "torch"
    line = next(r.getMessage() for r in caplog.records if "unavailable" in r.getMessage())
    assert "backend 'aoti' on cpu (fp32) unavailable (no C++ compiler" in line and "install g++ or set CXX" in line
    assert line.endswith("trying 'torch' on cpu (fp32)") and "\n" not in line
    with pytest.raises(BackendUnavailableError, match="no C\\+\\+ compiler"):
        load_engine(dataclasses.replace(cfg, fallback=False))


def test_no_compiler_still_loads_a_cached_package(no_compiler, demo_package_cache):
    with load_engine(dataclasses.replace(DEMO, plan_cache_dir=str(demo_package_cache))) as engine:
        assert engine.describe().backend == "aoti"


def test_build_engine_exits_4_when_the_chain_is_exhausted(no_compiler, tmp_path, capsys):
    from emim_stream.cli import main as cli
    args = ["--model", "emim_xs", "--device", "cpu", "--frames", "4", "--size", "64", "--cache-dir", str(tmp_path)]
    code = cli.main(["build-engine", "--backend", "aoti", *args])
    err = capsys.readouterr().err
    assert code == 4 and "no C++ compiler" in err and "Traceback" not in err


class _DataDependent(torch.nn.Module):
    """A model torch.export cannot capture: its control flow depends on the input's values."""

    num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(1, 2, 3, 4))
        if pooled.sum() > 0:
            return torch.stack([pooled, -pooled], dim=1)
        return torch.stack([-pooled, pooled], dim=1)


def test_failing_export_is_one_line_and_falls_back(tmp_path, caplog):
    source = ModelSource(_DataDependent(), ("a", "b"), ClipSpec(2, 32, 32), "data_dependent", "f" * 64, "test", None)
    cfg = EngineConfig(backend="aoti", device="cpu", plan_cache_dir=str(tmp_path))
    with pytest.raises(BackendUnavailableError) as raised:
        open_backend(cfg, STEP, source)
    assert raised.value.reason.startswith("torch.export failed (") and "\n" not in raised.value.reason
    with caplog.at_level(logging.WARNING, logger="emim_stream.engines.backends"), load_engine(cfg, source) as engine:
        assert engine.describe().backend == "torch"
    assert "torch.export failed" in caplog.text and not list(tmp_path.rglob("*.pt2"))


def test_start_engine_loads_a_cached_package_at_once(demo_package_cache):
    engine, build = start_engine(dataclasses.replace(DEMO, plan_cache_dir=str(demo_package_cache)))
    with engine:
        assert build is None and engine.describe().backend == "aoti"


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler in this process while the test runs (a background job starts with SIGINT
    ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_start_engine_serves_eagerly_while_building_and_close_ends_the_build(tmp_path, caplog, default_sigint):
    cfg = dataclasses.replace(DEMO, plan_cache_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="emim_stream.engines.backends"):
        engine, build = start_engine(cfg)
    try:
        assert engine.describe().backend == "torch" and build is not None and not build.done()
        # designed behaviour: one INFO line in a user's words, no WARNING
        announced = [r for r in caplog.records if f"in the background (process {build.pid}," in r.getMessage()]
        assert len(announced) == 1 and announced[0].levelno == logging.INFO, caplog.text
        assert "Labels are served by torch meanwhile" in announced[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        # it yields the CPU to the serving engine, its compilers included
        nice = max(aoti_engine.BUILD_NICE, os.getpriority(os.PRIO_PROCESS, 0))  # never above the caller's
        assert os.getpriority(os.PRIO_PROCESS, build.pid) == nice and build.priority == f"nice {nice}"
        assert os.sched_getscheduler(build.pid) == os.SCHED_OTHER  # not SCHED_IDLE: it must finish on a busy box
        # Ctrl-C goes to the pipeline, which ends the build: the build ignores it from its start
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{build.pid}/status").read_text().splitlines())
        assert int(status["SigIgn"], 16) & (1 << (signal.SIGINT - 1))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back
        assert engine.infer(torch.zeros(engine.input_spec.shape(1))).shape == (1, len(engine.labels))
    finally:
        build.close()
        engine.close()
    with pytest.raises(ProcessLookupError):  # the build's process group (compilers included) is gone
        os.killpg(build.pid, 0)


@pytest.mark.slow
def test_emim_s_package_matches_eager_at_a_small_clip(tmp_path):
    """EMIM-S (21.5 M parameters, untrained seeded weights) at 4x64x64, batch 1..2: its own build."""
    cfg = EngineConfig(
        backend="aoti",
        device="cpu",
        model="emim_s",
        frames=4,
        height=64,
        width=64,
        max_batch=2,
        threads=2,
        plan_cache_dir=str(tmp_path),
    )
    source = load_source(cfg)
    with open_backend(cfg, STEP, dataclasses.replace(source)) as engine:
        for batch in (1, 2):
            clips = torch.randn(engine.input_spec.shape(batch), generator=torch.Generator().manual_seed(batch))
            assert rel_err(engine.infer(clips), eager_logits(source, clips)) < REL, f"batch {batch}"


def test_an_exported_program_is_kept_whole_for_a_stopped_build_to_resume_from(tmp_path, caplog):
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.Flatten(), torch.nn.LazyLinear(2)).eval()
    clips = torch.randn(2, 3, 2, 4, 4)
    model(clips)
    program = torch.export.export(model, (clips,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4)},))
    kept = tmp_path / "aoti-x.exported.pt2"
    aoti_engine._save_exported(program, kept)
    assert kept.is_file() and list(tmp_path.iterdir()) == [kept]
    assert kept.stat().st_mode & 0o777 == 0o600
    resumed = aoti_engine._load_exported(kept)
    assert resumed is not None
    torch.testing.assert_close(resumed.module()(clips[:1]), model(clips[:1]))
    kept.write_bytes(kept.read_bytes()[:100])  # cut short, as by a kill during a write that was not atomic
    with caplog.at_level(logging.INFO, logger="emim_stream.engines.backends"):
        assert aoti_engine._load_exported(kept) is None
    assert "not resuming from aoti-x.exported.pt2" in caplog.text
    assert aoti_engine._load_exported(tmp_path / "missing.pt2") is None
