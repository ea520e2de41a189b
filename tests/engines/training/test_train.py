"""emim_stream.engines.training.train and the train / evaluate commands: end to end on tiny real video sets, resume,
init,
and the shipped demo checkpoint classifying synthetic clips prepared as the live pipeline prepares them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emim_stream.cli.commands import evaluate as evaluate_cmd
from emim_stream.cli.commands import train as train_cmd
from emim_stream.engines.checkpoints.io import load_checkpoint
from emim_stream.engines.data.synthetic import CLASSES, SyntheticScene, clip_seed
from emim_stream.engines.errors import ConfigError
from emim_stream.engines.layers.vmp import VmpLayer
from emim_stream.engines.training.train import RESUME_FORMAT, TrainConfig, load_resume, lr_schedule, resume_path, train
from emim_stream.pipeline.capture.preprocess import Preprocessor
from emim_stream.pipeline.inference.vmp_stage import VmpStage
from tests.engines.data.test_datasets import write_video

DEMO = Path(__file__).resolve().parents[3] / "engines" / "weights" / "emim_xs_demo.pt"
TINY = {"model": "emim_xs", "frames": 4, "size": 32, "batch_size": 2}


class Interrupted(Exception):
    pass


def make_folder(root: Path, classes=("left", "right", "static"), videos: int = 2) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for v in range(videos):
            write_video(root / name / f"{v}.avi", 8, seed=10 * c + v)
    return root


def run_command(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.main(parser.parse_args(argv))


def test_train_command_on_a_video_folder_writes_a_loadable_checkpoint(tmp_path, capsys):
    data = make_folder(tmp_path / "clips")
    out = tmp_path / "ck" / "tiny.pt"
    argv = ["--data", str(data), "--epochs", "1", "--out", str(out), "--frames", "4", "--size", "32",
            "--batch-size", "2", "--val-fraction", "0.5", "--log-every", "1"]
    assert run_command(train_cmd, argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert out.is_file() and not resume_path(out).exists()

    ck = load_checkpoint(out)
    assert ck.labels == ("left", "right", "static")
    assert (ck.clip.frames, ck.clip.height, ck.clip.width) == (4, 32, 32)
    assert ck.vmp is not None and ck.model_name == "emim_xs"
    training = ck.extra["training"]
    assert training["epochs_done"] == 1 and training["data"] == str(data)
    assert len(training["history"]) == 1 and training["history"][0]["val_top1"] is not None
    assert ck.extra["val"]["clips"] == 3  # one video of each class held out

    report = tmp_path / "eval.json"
    assert run_command(evaluate_cmd, ["--checkpoint", str(out), "--data", str(data), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "confusion" in printed and "static" in printed
    result = json.loads(report.read_text())
    assert result["clips"] == 6 and np.array(result["confusion"]).sum() == 6


def test_no_vmp_run_records_no_vmp_and_model_args_reach_the_model(tmp_path):
    out = tmp_path / "global.pt"
    cfg = TrainConfig(data="synthetic://?n=4&size=40x40", out=out, epochs=1, val_n=0, vmp=False,
                      overrides=train_cmd.parse_model_args(["emim=false"]), **TINY)
    train(cfg)
    ck = load_checkpoint(out)
    assert ck.vmp is None and ck.overrides == {"emim": False}
    assert not any("motion_conv" in k for k in ck.model.state_dict())


def test_vmp_init_sets_the_starting_slope_and_shift(tmp_path):
    out = tmp_path / "v.pt"
    train(TrainConfig(data="synthetic://?n=2&size=40x40", out=out, epochs=1, val_n=0, vmp_init=(0.0, 0.168),
                      lr=1e-12, min_lr=0.0, **TINY))
    ck = load_checkpoint(out)
    assert ck.vmp.m.item() == pytest.approx(0.0, abs=1e-6) and ck.vmp.n.item() == pytest.approx(0.168, abs=1e-6)
    assert ck.extra["training"]["vmp_init"] == (0.0, 0.168)


def test_resume_continues_with_the_same_batches_to_the_same_weights(tmp_path):
    def config(out: Path, resume: bool = False) -> TrainConfig:
        return TrainConfig(data="synthetic://?n=6&size=40x40&fresh=1", out=out, epochs=2, val_n=0,
                           save_every=2, resume=resume, **TINY)

    whole = train(config(tmp_path / "a.pt"))

    def stop(info):
        if info.global_step == 5:  # epoch 2, step 2 of 3: just after a resume file was written
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config(tmp_path / "b.pt"), on_step=stop)
    assert resume_path(tmp_path / "b.pt").is_file()
    assert load_checkpoint(tmp_path / "b.pt").extra["training"]["epochs_done"] == 1
    resumed = train(config(tmp_path / "b.pt", resume=True))

    assert not resume_path(tmp_path / "b.pt").exists()
    assert [h.train_loss for h in resumed.history] == pytest.approx([h.train_loss for h in whole.history])
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(b.vmp.m, a.vmp.m)


def test_resume_refuses_a_missing_file_and_changed_settings(tmp_path):
    out = tmp_path / "c.pt"
    base = {"data": "synthetic://?n=4&size=40x40", "out": out, "val_n": 0, "save_every": 1, **TINY}
    with pytest.raises(ConfigError, match="no resume file"):
        train(TrainConfig(epochs=2, resume=True, **base))

    def stop(info):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(TrainConfig(epochs=2, **base), on_step=stop)
    with pytest.raises(ConfigError, match=r"changed: epochs 2 -> 3"):
        train(TrainConfig(epochs=3, resume=True, **base))


def test_a_resume_file_in_the_resume1_layout_loads_into_the_run_and_its_state(tmp_path):
    """The layout written since resume/1 (a plain dict, epoch sums as four floats) stays readable."""
    torch.manual_seed(0)
    model, vmp = torch.nn.Linear(4, 3), VmpLayer()
    optimizer = torch.optim.AdamW([*model.parameters(), *vmp.parameters()])
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    settings, labels = {"epochs": 3, "seed": 0}, ("a", "b", "c")
    history = [{"epoch": 1, "train_loss": 1.5, "train_top1": 0.25, "val_top1": None, "lr": 1e-3, "seconds": 2.0}]
    path = tmp_path / "run.pt.resume"
    torch.save({
        "format": RESUME_FORMAT, "settings": settings, "labels": list(labels), "model": model.state_dict(),
        "vmp": vmp.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1, "step_in_epoch": 2,
        "global_step": 7, "history": history, "train_seconds": 12.5, "epoch_totals": [3.0, 1.0, 4.0, 0.5],
    }, path)  # fmt: skip

    fresh, fresh_vmp = torch.nn.Linear(4, 3), VmpLayer()
    fresh_optimizer = torch.optim.AdamW([*fresh.parameters(), *fresh_vmp.parameters()])
    state = load_resume(path, settings, labels, fresh, fresh_vmp, fresh_optimizer)
    assert (state.epoch, state.step_in_epoch, state.global_step, state.train_seconds) == (1, 2, 7, 12.5)
    assert state.history == history and state.labels == labels
    stats = state.epoch_stats
    assert (stats.loss_sum, stats.correct, stats.clips, stats.reg_sum, stats.steps) == (3.0, 1, 4, 0.5, 2)
    assert (stats.loss, stats.top1, stats.reg) == (0.75, 0.25, 0.125)
    torch.testing.assert_close(fresh.weight, model.weight, rtol=0, atol=0)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1
    with pytest.raises(ConfigError, match=r"changed: epochs 3 -> 4"):
        load_resume(path, {"epochs": 4, "seed": 0}, labels, fresh, fresh_vmp, fresh_optimizer)


def test_init_from_own_checkpoint_keeps_backbone_and_vmp_and_resets_the_head(tmp_path):
    first = tmp_path / "first.pt"
    train(TrainConfig(data="synthetic://?n=4&size=40x40", out=first, epochs=1, val_n=0, **TINY))
    data = make_folder(tmp_path / "clips", classes=("wave", "walk"), videos=1)
    second = tmp_path / "second.pt"
    train(TrainConfig(data=str(data), out=second, epochs=1, init=str(first), lr=1e-12, min_lr=0.0,
                      val_fraction=0.0, **TINY))
    a, b = load_checkpoint(first), load_checkpoint(second)
    assert b.labels == ("walk", "wave") and b.model.head.weight.shape[0] == 2
    key = "patch_embed1.proj.weight"
    torch.testing.assert_close(b.model.state_dict()[key], a.model.state_dict()[key], rtol=0, atol=1e-6)
    torch.testing.assert_close(b.vmp.n, a.vmp.n, rtol=0, atol=1e-6)

    third = tmp_path / "third.pt"  # an explicit --vmp-init overrides the VMP that --init brings
    train(TrainConfig(data=str(data), out=third, epochs=1, init=str(first), vmp_init=(0.0, 0.0), lr=1e-12,
                      min_lr=0.0, val_fraction=0.0, **TINY))
    c = load_checkpoint(third)
    assert c.vmp.n.item() == pytest.approx(0.0, abs=1e-6) and a.vmp.n.item() != pytest.approx(0.0, abs=1e-3)
    torch.testing.assert_close(c.model.state_dict()[key], a.model.state_dict()[key], rtol=0, atol=1e-6)


def test_init_accepts_the_shipped_demo_name(tmp_path):
    out = tmp_path / "tuned.pt"
    train(TrainConfig(data="synthetic://?n=2", out=out, epochs=1, init="emim_xs.demo", lr=1e-12, min_lr=0.0,
                      val_n=0, **{**TINY, "size": 64}))
    tuned, demo = load_checkpoint(out), load_checkpoint(DEMO)
    for key in ("patch_embed1.proj.weight", "head.weight"):
        torch.testing.assert_close(tuned.model.state_dict()[key], demo.model.state_dict()[key], rtol=0, atol=1e-6)
    torch.testing.assert_close(tuned.vmp.n, demo.vmp.n, rtol=0, atol=1e-6)


def reference_lr(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """The schedule's formula: linear warm-up ``lr * (step + 1) / warmup``, then cosine decay to ``min_lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize(
    ("total", "warmup", "start"),
    [(100, 10, 0), (100, 10, 37), (100, 0, 0), (100, 1, 0), (100, 100, 0), (7, 3, 2), (5000, 250, 0), (1, 1, 0)],
)
def test_learning_rate_per_step_equals_warm_up_then_cosine(total, warmup, start):
    lr, min_lr = 1e-3, 1e-5
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [param]}, {"params": [], "weight_decay": 0.0}], lr=lr)
    for group in optimizer.param_groups:  # a resumed optimizer holds its last step's rate
        group["lr"] = 0.5
    schedule = lr_schedule(optimizer, lr, min_lr, total, warmup, start=start)
    for step in range(start, total):
        expected = reference_lr(step, total, warmup, lr, min_lr)
        assert schedule.get_last_lr() == pytest.approx([expected] * 2, rel=1e-12, abs=1e-15)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([expected] * 2, rel=1e-12, abs=1e-15)
        optimizer.step()
        schedule.step()
    lrs = [reference_lr(s, 100, 10, 1.0, 0.01) for s in range(100)]  # the reference itself: ramp, then decay
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:])) and lrs[-1] == pytest.approx(0.01, abs=1e-3)


def test_bad_settings_and_model_args_are_config_errors():
    with pytest.raises(ConfigError, match="size=100"):
        TrainConfig(model="emim_xs", data="synthetic://", out=Path("x.pt"), epochs=1, size=100)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        train_cmd.parse_model_args(["emim"])
    assert train_cmd.parse_model_args(["emim=False", "temporal_stride=2", "depths=1,1,2,2"]) == {
        "emim": False, "temporal_stride": 2, "depths": (1, 1, 2, 2),
    }


# --- the shipped demo checkpoint ------------------------------------------------------------------------


def test_demo_checkpoint_labels_live_synthetic_scenes_forced_to_a_class():
    """Frames go the pipeline's way: 320x240 scene -> Preprocessor (area) -> VmpStage -> windows of T prompts.

    Each forced-class scene is labelled by the majority of three windows spread over its 4 s segment.
    """
    ck = load_checkpoint(DEMO)
    assert ck.labels == CLASSES and ck.vmp is not None
    T, H, W = ck.clip.frames, ck.clip.height, ck.clip.width
    pre = Preprocessor(H, W, "area")
    predicted = {}
    for label in CLASSES:  # every class; the weakest (rotations) are 93% right on held-out clips
        scene = SyntheticScene(clip_seed("test", 100 + CLASSES.index(label)), 240, 320, label=label)
        votes = []
        for first in (10, 50, 90):
            stage = VmpStage(ck.vmp, "cpu", ck.clip.mean, ck.clip.std)
            prompts = [stage.push(pre(scene.frame(k), bgr=False), k) for k in range(first, first + T + 1)]
            with torch.no_grad():
                logits = ck.model(torch.stack(prompts[1:], dim=1)[None])
            votes.append(ck.labels[int(logits.argmax())])
        predicted[label] = max(set(votes), key=votes.count)
    assert predicted == {label: label for label in CLASSES}
