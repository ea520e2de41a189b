"""Checkpoint I/O: own checkpoints round-trip; public 2-D/3-D weights inflate and load; bad files fail clearly."""

from __future__ import annotations

import logging

import pytest
import torch

from emim_stream.engines.checkpoints.io import (
    inflate_2d_to_3d,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
)
from emim_stream.engines.clip import ClipSampling, ClipSpec
from emim_stream.engines.errors import CheckpointError, ConfigError
from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.models import build_model

EMIM_ONLY = sorted(
    [
        f"blocks3.{i}.attn.{p}"
        for i in (0, 2, 4, 6)
        for p in ("rpb", *(f"motion_conv.{j}.{w}" for j in (0, 2) for w in ("weight", "bias")))
    ]
    + [
        f"blocks4.{i}.attn.{p}"
        for i in (0, 2)
        for p in ("rpb", *(f"motion_conv.{j}.{w}" for j in (0, 2) for w in ("weight", "bias")))
    ]
)


def imagenet_2d_state_dict(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A UniFormer-S 2-D ImageNet state dict with the public key names: convs are Conv2d shapes."""
    sd = {}
    for key, t in build_model("uniformer_s", num_classes=num_classes).state_dict().items():
        if t.dim() == 5:  # Conv3d (out, in, kt, kh, kw) -> Conv2d (out, in, kh, kw)
            sd[key] = torch.randn(t.shape[0], t.shape[1], t.shape[3], t.shape[4])
        else:
            sd[key] = torch.randn_like(t.float()).to(t.dtype) if t.is_floating_point() else t.clone()
    return sd


@pytest.mark.parametrize("name", ["uniformer_s", "emim_s"])
def test_2d_imagenet_weights_inflate_and_load(name):
    sd = imagenet_2d_state_dict()
    model = build_model(name, num_classes=174)
    report = load_pretrained(model, {"model": sd})
    # the head is re-initialised for the new class count; everything else but EMIM's own keys loads
    assert sorted(report.missing) == sorted((EMIM_ONLY if name == "emim_s" else []) + ["head.bias", "head.weight"])
    assert report.unexpected == ()
    assert report.dropped == ("head.weight", "head.bias")
    assert "patch_embed1.proj.weight" in report.inflated and "blocks1.0.attn.weight" in report.inflated
    w = model.state_dict()["patch_embed1.proj.weight"]  # (64, 3, 3, 4, 4) = repeat / 3
    assert torch.allclose(w, sd["patch_embed1.proj.weight"].unsqueeze(2).repeat(1, 1, 3, 1, 1) / 3)
    assert torch.equal(model.state_dict()["blocks3.1.attn.qkv.weight"], sd["blocks3.1.attn.qkv.weight"])


def test_inflation_rule_on_each_kernel():
    sd = {"a": torch.randn(8, 1, 5, 5), "b": torch.randn(8, 4, 1, 1), "c": torch.randn(3)}
    target = {"a": torch.zeros(8, 1, 5, 5, 5), "b": torch.zeros(8, 4, 1, 1, 1), "c": torch.zeros(3)}
    out, inflated = inflate_2d_to_3d(sd, target)
    assert inflated == ["a", "b"]
    assert torch.allclose(out["a"].sum(2), sd["a"]) and out["a"].shape == (8, 1, 5, 5, 5)
    assert torch.equal(out["b"][:, :, 0], sd["b"])


def test_3d_checkpoint_with_module_prefix_loads(tmp_path):
    src = build_model("uniformer_s", num_classes=400)
    path = tmp_path / "k400.pth"
    torch.save({"model_state": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    model = build_model("emim_s", num_classes=400)
    report = load_pretrained(model, path)
    assert sorted(report.missing) == EMIM_ONLY and not report.inflated and not report.dropped
    assert torch.equal(model.state_dict()["head.weight"], src.state_dict()["head.weight"])


def test_own_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("emim_xs", drop_path_rate=0.1).eval()
    vmp = VmpLayer()
    labels = tuple(model.default_cfg.label_names)
    path = tmp_path / "ck.pt"
    digest = save_checkpoint(path, model, labels, ClipSpec(8, 64, 64), vmp, extra={"note": "test"})
    ck = load_checkpoint(path)
    assert ck.weights_sha256 == digest and ck.labels == labels and ck.clip == ClipSpec(8, 64, 64)
    assert ck.overrides == {"drop_path_rate": 0.1} and ck.extra == {"note": "test"}
    assert ck.vmp is not None and ck.vmp.m.item() == vmp.m.item() and ck.vmp.n.item() == vmp.n.item()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert torch.equal(ck.model(x), model(x))


def test_clip_sampling_round_trips_and_an_older_file_is_fed_consecutive_frames(tmp_path, caplog):
    model = build_model("emim_xs", num_classes=3)
    sampling = ClipSampling(frame_interval=4, fps=30.0)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model, ("a", "b", "c"), ClipSpec(16, 64, 64, sampling=sampling))
    assert load_checkpoint(path).clip.sampling == sampling
    record = torch.load(path, weights_only=True)
    del record["clip"]["sampling"]  # as written before sampling was recorded
    torch.save(record, tmp_path / "old.pt")
    with caplog.at_level(logging.INFO, logger="emim_stream.engines.checkpoints.io"):
        old = load_checkpoint(tmp_path / "old.pt")
    assert old.clip.sampling is None and old.clip.describe_sampling().endswith("consecutive camera frames")
    assert caplog.text.count("states no clip sampling") == 1


def test_the_vmp_layer_must_denormalise_with_the_clip_normalisation(tmp_path):
    model, labels, path = build_model("emim_xs", num_classes=3), ("a", "b", "c"), tmp_path / "ck.pt"
    other = ClipSpec(8, 64, 64, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ConfigError, match=r"VMP layer de-normalises with mean 0.45 / std 0.225 but the clip"):
        save_checkpoint(path, model, labels, other, VmpLayer())
    save_checkpoint(path, model, labels, other, VmpLayer(mean=0.5, std=0.25))
    assert load_checkpoint(path).vmp.mean == 0.5
    record = torch.load(path, weights_only=True)
    record["vmp"]["std"] = 0.225  # a record that contradicts itself
    torch.save(record, path)
    with pytest.raises(CheckpointError, match=r"invalid record: .*de-normalises with mean 0.5 / std 0.225"):
        load_checkpoint(path, verify=False)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ClipSampling(frame_interval=0), "frame_interval must be in 1..1000, got 0"),
        (lambda: ClipSampling(fps=-30.0), "fps must be a number in (0, 1000] or null, got -30.0"),
        (lambda: ClipSampling(span_s=4.0, fps=30.0), "span_s (uniform sampling) excludes fps and frame_interval"),
        (lambda: ClipSpec(8, 64, 64, std=(0.2, 0.0, 0.2)), "clip std must be > 0 on every channel"),
        (lambda: ClipSpec(8, 64, 64, mean=(0.5, 0.5)), "clip mean must be 3 finite numbers"),
    ],
)
def test_bad_clip_specs_name_the_field(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value)


def test_truncated_and_corrupted_checkpoints_fail_clearly(tmp_path):
    model = build_model("emim_xs")
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model, model.default_cfg.label_names, ClipSpec(8, 64, 64))
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*cannot be read"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    record = torch.load(path, weights_only=True)
    record["state_dict"]["head.bias"] += 1
    torch.save(record, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(tmp_path / "tampered.pt")


def test_wrong_architecture_and_shape_mismatch_name_the_keys(tmp_path):
    path = tmp_path / "xs.pt"
    torch.save(build_model("emim_xs").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"xs.pt.*shape mismatch.*patch_embed1"):
        load_pretrained(build_model("emim_s"), path)
    report = load_pretrained(build_model("emim_s"), path, skip_mismatched=True)
    assert "patch_embed1.proj.weight" in report.dropped
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="shares no key.*wrong architecture"):
        load_pretrained(build_model("emim_xs"), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an emim-stream checkpoint"):
        load_checkpoint(path)
