"""emim_stream.engines.data.clip_cache: clips rendered once equal the data set's own, are found again, and a bad file is
rendered again, never loaded as objects; train --cache-clips --augment end to end."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from emim_stream.engines.checkpoints.io import load_checkpoint
from emim_stream.engines.data import synthetic
from emim_stream.engines.data.augment import SymmetricClips
from emim_stream.engines.data.clip_cache import cache_clips, cache_path
from emim_stream.engines.data.datasets import SyntheticClips
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.training.train import TrainConfig, train


def small(**kwargs) -> SyntheticClips:
    return SyntheticClips("train", kwargs.pop("n", 5), 3, 32, 32, source_size=(48, 40), window="any", **kwargs)


def test_cached_clips_equal_the_rendered_ones_and_are_found_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, "emim_stream.engines.data.clip_cache")
    data = small(style="mix", n=10)
    cached = cache_clips(data, tmp_path, workers=1)
    assert len(cached) == 10 and cached.targets == data.targets and cached.labels == data.labels
    for i in range(10):
        clip, label = cached[i]
        ref, ref_label = data[i]
        assert label == ref_label and clip.dtype == torch.uint8 and torch.equal(clip, ref)
    assert "rendering 10 clips" in caplog.text and list(tmp_path.iterdir()) == [cached.path]

    caplog.clear()
    again = cache_clips(small(style="mix", n=10), tmp_path)
    assert again.path == cached.path and "rendering" not in caplog.text
    assert cache_path(small(style="mix", n=10, start=1), tmp_path) != cached.path  # other clips, other file


@pytest.mark.parametrize("damage", ["truncated", "pickled", "wrong shape"])
def test_a_bad_cache_file_is_rendered_again_without_loading_objects(tmp_path, caplog, damage):
    data = small()
    path = cache_path(data, tmp_path)
    good = cache_clips(data, tmp_path)
    reference = np.array(good.clips)
    del good
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "pickled":
        witness = tmp_path / "ran"
        with path.open("wb") as f:
            np.save(f, np.array([_Payload(str(witness))], dtype=object), allow_pickle=True)
    else:
        np.save(path, np.zeros((5, 3, 32, 16, 3), np.uint8))
    caplog.set_level(logging.WARNING, "emim_stream.engines.data.clip_cache")
    cached = cache_clips(data, tmp_path)
    assert "rendering it again" in caplog.text
    assert np.array_equal(np.array(cached.clips), reference)
    assert not (tmp_path / "ran").exists()


class _Payload:
    """Unpickling this would create a file: the cache must never unpickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_data_sets_that_change_every_epoch_are_not_cached(tmp_path):
    with pytest.raises(ConfigError, match="same every epoch"):
        cache_clips(small(fresh=True), tmp_path)
    with pytest.raises(ConfigError, match="same every epoch"):
        cache_clips(SymmetricClips(small(), seed=0), tmp_path)  # a new symmetry every epoch
    assert not any(tmp_path.iterdir())


def test_training_with_cached_and_mirrored_clips_writes_a_checkpoint_that_records_it(tmp_path):
    out = tmp_path / "aug.pt"
    cfg = TrainConfig(model="emim_xs", data="synthetic://?n=9&size=40x40&window=any", out=out, epochs=2, val_n=0,
                      frames=4, size=32, batch_size=3, augment=True, cache_clips=tmp_path / "cache", workers=0)
    result = train(cfg)
    assert len(result.history) == 2
    training = load_checkpoint(out).extra["training"]
    assert training["augment"] is True
    assert "rendered once" in training["train_data"] and "mirrored" in training["train_data"]
    assert len(list((tmp_path / "cache").glob("clips-*.npy"))) == 1


def test_the_cache_file_name_changes_with_the_rendering_code(tmp_path, monkeypatch):
    """A cache made by an older renderer is never served: the name digests engines/data/synthetic.py's bytes too."""
    data = small()
    before = cache_path(data, tmp_path)
    edited = tmp_path / "synthetic.py"
    edited.write_bytes(Path(inspect.getfile(synthetic)).read_bytes() + b"\n# changed\n")
    real = inspect.getfile
    monkeypatch.setattr(inspect, "getfile", lambda obj: str(edited) if obj is synthetic else real(obj))
    assert cache_path(data, tmp_path) != before
    monkeypatch.undo()
    assert cache_path(data, tmp_path) == before
