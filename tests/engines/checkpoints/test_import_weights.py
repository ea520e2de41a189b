"""`emim-stream import-weights` on state dicts laid out like the published files (no download): SlowFast training
checkpoints with DDP prefixes, plain state dicts, 2-D ImageNet weights; the shipped K400 / SSv2 label maps."""

from __future__ import annotations

import pytest
import torch

from emim_stream.cli.main import main as cli_main
from emim_stream.engines.checkpoints.import_weights import LABEL_MAPS, read_label_map
from emim_stream.engines.checkpoints.io import load_checkpoint
from emim_stream.engines.clip import ClipSampling
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.models import build_model


def test_shipped_label_maps():
    k400, ssv2 = read_label_map("k400"), read_label_map("ssv2")
    assert len(k400) == 400 == len(set(k400)) and len(ssv2) == 174 == len(set(ssv2))
    # spot checks against the published orders: K400 ids 0, 5, 19, 223, 378, 399 (alphabetical);
    # SSv2 ids 0 and 173 of something-something-v2-labels.json
    assert [k400[i] for i in (0, 5, 19, 223, 378, 399)] == [
        "abseiling", "archery", "bench pressing", "playing cello", "walking the dog", "zumba",
    ]  # fmt: skip
    assert list(k400) == sorted(k400)
    assert ssv2[0] == "Approaching something with your camera" and ssv2[-1] == "Wiping something off of something"
    assert all(path.parent.parts[-2:] == ("checkpoints", "labels") for path in LABEL_MAPS.values())


def test_label_map_files_and_errors(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("# my classes\nwave\n\n  sit down  \n")
    assert read_label_map(good) == ("wave", "sit down")
    (tmp_path / "dup.txt").write_text("wave\nsit\nwave\n")
    with pytest.raises(ConfigError, match="line 3: 'wave' repeats line 1"):
        read_label_map(tmp_path / "dup.txt")
    with pytest.raises(ConfigError, match="neither a shipped map"):
        read_label_map("k700")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no class name"):
        read_label_map(tmp_path / "empty.txt")


@pytest.mark.slow
def test_slowfast_uniformer_k400_checkpoint(tmp_path, capsys):
    """UniFormer-S K400 as the official video repo saves it: {'model_state': {'module.' + key: ...}, ...}."""
    torch.manual_seed(0)
    published = build_model("uniformer_s", num_classes=400).state_dict()
    record = {"epoch": 110, "model_state": {f"module.{k}": v for k, v in published.items()},
              "optimizer_state": {"state": {}, "param_groups": []}, "cfg": "TRAIN:\n  ENABLE: True\n"}  # fmt: skip
    src = tmp_path / "uniformer_small_k400_16x4.pth"
    torch.save(record, src)
    out = tmp_path / "k400.pt"
    assert cli_main(["import-weights", str(src), "--model", "uniformer_s", "--labels", "k400", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "400 classes (k400), clip 16x224x224" in stdout and "keys: all keys matched" in stdout
    ck = load_checkpoint(out)
    assert ck.labels == read_label_map("k400") and ck.model_name == "uniformer_s"
    assert (ck.clip.frames, ck.clip.height, ck.clip.width) == (16, 224, 224) and ck.vmp is None
    loaded = ck.model.state_dict()
    assert loaded.keys() == published.keys()
    assert all(torch.equal(loaded[k], published[k]) for k in published)
    assert ck.extra["imported"]["source"] == src.name and len(ck.extra["imported"]["source_sha256"]) == 64
    assert ck.clip.sampling == ClipSampling(frame_interval=4, fps=30.0)  # 16x4: the published configuration
    assert cli_main(["info", "--checkpoint", str(out)]) == 0
    assert "sampling        one frame in 4 at 30 fps (7.5 frames/s; 16 frames cover 2.13 s)" in capsys.readouterr().out


@pytest.mark.slow
def test_emim_ssv2_state_dict_and_a_class_count_mismatch(tmp_path, capsys, caplog):
    """EMIM-S SSv2 as a plain state dict (with the motion MLP and rpb); the K400 map does not fit its head."""
    published = build_model("emim_s", num_classes=174).state_dict()
    src = tmp_path / "emim_s_ssv2.pth"
    torch.save(published, src)
    out = tmp_path / "ssv2.pt"
    argv = ["import-weights", str(src), "--model", "emim_s", "--frames", "8", "--size", "160", "--out", str(out)]
    assert cli_main([*argv, "--labels", "k400"]) == 3  # a checkpoint error: the published head would be lost
    err = capsys.readouterr().err
    assert "classifies 174 classes but label map 'k400' names 400" in err and not out.exists()
    assert cli_main([*argv, "--labels", "ssv2"]) == 0
    ck = load_checkpoint(out)
    assert len(ck.labels) == 174 and (ck.clip.frames, ck.clip.height) == (8, 160)
    assert ck.clip.sampling is None  # SSv2 models are published at 16 and 32 frames: none known for 8
    assert "no clip sampling recorded (no published configuration for ssv2 with 8 frames)" in caplog.text
    motion = "blocks3.0.attn.motion_conv.0.weight"
    assert torch.equal(ck.model.state_dict()[motion], published[motion])


def test_2d_imagenet_layout_is_inflated(tmp_path, capsys):
    """2-D weights ({'model': ...}, Conv2d kernels) inflate to 3-D: w3d[:, :, t] = w2d / T for every t."""
    model = build_model("emim_xs", num_classes=3)
    target = model.state_dict()
    torch.manual_seed(1)
    flat = {k: (torch.randn(*v.shape[:2], *v.shape[3:]) if v.dim() == 5 else v.clone()) for k, v in target.items()}
    src = tmp_path / "uniformer_2d.pth"
    torch.save({"model": flat}, src)
    labels = tmp_path / "three.txt"
    labels.write_text("wave\nsit\nstand\n")
    out = tmp_path / "xs.pt"
    argv = ["import-weights", str(src), "--model", "emim_xs", "--labels", str(labels), "--out", str(out)]
    assert cli_main(argv) == 0
    assert "inflated (" in capsys.readouterr().out
    loaded = load_checkpoint(out).model.state_dict()
    conv = "patch_embed1.proj.weight"
    t = target[conv].shape[2]
    expected = flat[conv].double().unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    torch.testing.assert_close(loaded[conv].double(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("labels", "options", "sampling"),
    [
        ("k400", ["--frames", "8"], ClipSampling(frame_interval=8, fps=30.0)),  # 8x8
        ("ssv2", ["--frames", "16"], ClipSampling(span_s=4.0)),  # 16 frames spread over a clip
        ("ssv2", ["--frame-interval", "2", "--fps", "12"], ClipSampling(frame_interval=2, fps=12.0)),
        ("mine", ["--span", "3"], ClipSampling(span_s=3.0)),
        ("mine", [], None),
    ],
)
def test_import_records_the_published_or_the_stated_sampling(tmp_path, caplog, labels, options, sampling):
    if labels == "mine":
        labels = tmp_path / "mine.txt"
        labels.write_text("wave\nsit\nstand\n")
    src = tmp_path / "published.pth"
    torch.save(build_model("emim_xs", num_classes=len(read_label_map(labels))).state_dict(), src)
    out = tmp_path / "ck.pt"
    argv = ["import-weights", str(src), "--model", "emim_xs", "--labels", str(labels), "--out", str(out), *options]
    assert cli_main(argv) == 0
    assert load_checkpoint(out).clip.sampling == sampling
    assert (sampling is None) == ("no clip sampling recorded" in caplog.text)


def test_sampling_options_must_state_a_whole_sampling(tmp_path, capsys):
    src = tmp_path / "published.pth"
    torch.save(build_model("emim_xs", num_classes=400).state_dict(), src)
    argv = ["import-weights", str(src), "--model", "emim_xs", "--labels", "k400", "--out", str(tmp_path / "ck.pt")]
    assert cli_main([*argv, "--fps", "25"]) == 2
    assert "--frame-interval and --fps go together" in capsys.readouterr().err
    assert cli_main([*argv, "--span", "3", "--fps", "25"]) == 2
    assert "--span (uniform sampling) excludes --frame-interval and --fps" in capsys.readouterr().err
    assert cli_main([*argv, "--frame-interval", "0", "--fps", "25"]) == 2
    assert "frame_interval must be in 1..1000, got 0" in capsys.readouterr().err
    assert not (tmp_path / "ck.pt").exists()


def test_file_errors_are_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    assert cli_main(["import-weights", str(junk), "--model", "emim_xs", "--labels", "k400", "--out", "x.pt"]) == 3
    assert "junk.pth" in capsys.readouterr().err
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, tmp_path / "nohead.pth")
    assert cli_main(["import-weights", str(tmp_path / "nohead.pth"), "--model", "emim_xs", "--labels", "k400",
                     "--out", "x.pt"]) == 3  # fmt: skip
    assert "no classifier ('head.weight')" in capsys.readouterr().err
    assert cli_main(["import-weights", str(junk), "--model", "emim_xs", "--labels", "nope", "--out", "x.pt"]) == 2
