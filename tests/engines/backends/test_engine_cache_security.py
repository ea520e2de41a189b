"""The engine cache loads no one else's native code: private folders and files, ownership and mode checks before
anything is read, and the engine falls back when the cache cannot be trusted (real files, real chmod/chown)."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch

from emim_stream.engines.backends import EngineConfig, load_engine
from emim_stream.engines.backends.engine_cache import EngineCache, UnsafeCacheError, load_or_build
from emim_stream.engines.errors import BackendUnavailableError
from tests.engines.backends.test_trt_glue import KEY, PLAN, FakeBuilds

OTHER_UID = 65534  # nobody


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_folders_are_created_0700_and_files_0600(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    plan, sidecar = cache.paths(KEY)
    cache.store(KEY, PLAN)
    assert mode(tmp_path / "cache") == 0o700 and mode(cache.root) == 0o700
    assert mode(plan) == 0o600 and mode(sidecar) == 0o600


@pytest.mark.parametrize("where", ["root", "plans"])
def test_a_folder_writable_by_others_is_refused_naming_it_and_the_fix(tmp_path, where):
    """Issue 29 (5): a cache folder with mode 0777 was used without a warning."""
    cache, fake = EngineCache(tmp_path / "cache"), FakeBuilds()
    cache.store(KEY, PLAN)
    folder = tmp_path / "cache" if where == "root" else cache.root
    folder.chmod(0o777)
    with pytest.raises(UnsafeCacheError) as err:
        load_or_build(cache, KEY, fake.build, fake.deserialize)
    assert str(folder) in str(err.value) and f"chmod 700 {folder}" in str(err.value)
    assert "writable by group and others" in str(err.value)
    assert isinstance(err.value, BackendUnavailableError) and fake.builds == 0


def test_a_folder_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    cache = EngineCache(tmp_path / "cache")
    cache.store(KEY, PLAN)
    os.chown(cache.root, OTHER_UID, -1)
    with pytest.raises(UnsafeCacheError, match=rf"{cache.root} is owned by uid {OTHER_UID}, not by you"):
        cache.lookup(KEY)
    with pytest.raises(UnsafeCacheError, match="owned by uid"):
        cache.store(KEY, PLAN)


@pytest.mark.parametrize("which", [0, 1], ids=["package", "sidecar"])
def test_a_package_or_sidecar_others_could_have_written_is_never_loaded(tmp_path, which):
    """The sidecar's hash is the record the package is checked against: both must be the user's own."""
    cache, fake = EngineCache(tmp_path), FakeBuilds()
    cache.store(KEY, PLAN)
    path = cache.paths(KEY)[which]
    path.chmod(0o664)
    with pytest.raises(UnsafeCacheError, match=rf"{path} is writable by group.*chmod 600 {path}"):
        load_or_build(cache, KEY, fake.build, fake.deserialize)
    if os.geteuid() == 0:
        path.chmod(0o600)
        os.chown(path, OTHER_UID, -1)
        with pytest.raises(UnsafeCacheError, match=f"owned by uid {OTHER_UID}"):
            load_or_build(cache, KEY, fake.build, fake.deserialize)
    assert fake.builds == 0


def test_an_unsafe_aoti_cache_falls_back_to_torch_with_one_line(tmp_path, monkeypatch, caplog):
    """Chain level: the aoti backend refuses the shared cache folder and the engine falls back to eager torch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    shared = tmp_path / "shared"
    (shared / "plans").mkdir(parents=True)
    shared.chmod(0o777)
    cfg = EngineConfig(backend="aoti", model="emim_xs", frames=2, height=32, width=32, plan_cache_dir=str(shared))
    with caplog.at_level(logging.INFO):
        engine = load_engine(cfg)
    assert engine.describe().backend == "torch"
    (line,) = [r.getMessage() for r in caplog.records if str(shared) in r.getMessage()]
    assert "'aoti'" in line and f"chmod 700 {shared}" in line
    assert not list((shared / "plans").iterdir()), "nothing was built into or loaded from the shared folder"
