"""One input contract: training, evaluation, calibration and the live stage give the model the same clip for the
same frames, all normalised as the checkpoint's clip spec says (here not the default 0.45 / 0.225).

Each path runs as it does for a user: ``train`` for one step from an ``--init`` checkpoint, ``evaluate`` on
the checkpoint, calibration's clip maker on the engine's model source, and the live stream reading the
frames from a shared-memory ring into its VMP stage and clip window. A forward pre-hook on the backbone
records what each path gives it.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from emim_stream.calibration.clips import prompts
from emim_stream.engines.backends import EngineConfig, load_engine
from emim_stream.engines.backends.model_source import load_source
from emim_stream.engines.checkpoints.io import load_checkpoint, save_checkpoint
from emim_stream.engines.clip import CONSECUTIVE, ClipSpec
from emim_stream.engines.data.datasets import open_dataset
from emim_stream.engines.data.synthetic import CLASSES
from emim_stream.engines.layers.vmp import VmpLayer, clip_inputs
from emim_stream.engines.models import build_model
from emim_stream.engines.models.uniformer import Uniformer
from emim_stream.engines.training.evaluate import evaluate
from emim_stream.engines.training.train import TrainConfig, train
from emim_stream.pipeline.capture.ring import SharedRing
from emim_stream.pipeline.config import CameraConfig, EventsConfig, PostprocessConfig
from emim_stream.pipeline.inference.stream import build_stream

T, SIZE = 4, 32
DATA = "synthetic://?n=1&size=40x40"
MEAN, STD = (0.5,) * 3, (0.25,) * 3


@contextmanager
def backbone_inputs():
    """Every input a backbone (:class:`Uniformer`) gets while the block runs, in order."""
    seen: list[torch.Tensor] = []

    def record(module, args):
        if isinstance(module, Uniformer):
            seen.append(args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def test_training_evaluation_calibration_and_live_give_the_model_the_same_input(tmp_path):
    torch.manual_seed(0)
    vmp = VmpLayer(mean=MEAN[0], std=STD[0])
    with torch.no_grad():
        vmp.m.fill_(0.3)
        vmp.n.fill_(0.1)
    init = tmp_path / "init.pt"
    save_checkpoint(init, build_model("emim_xs", num_classes=len(CLASSES)), CLASSES,
                    ClipSpec(T, SIZE, SIZE, MEAN, STD, CONSECUTIVE), vmp)
    ck = load_checkpoint(init)
    dataset = open_dataset(DATA, T + 1, SIZE, SIZE, train=False)
    frames = dataset[0][0].numpy()  # [T+1, H, W, 3] uint8: the frames every path is given

    with backbone_inputs() as seen:
        trained = train(TrainConfig(model="emim_xs", data=DATA, out=tmp_path / "out.pt", epochs=1, init=str(init),
                                    frames=T, size=SIZE, batch_size=1, val_n=0))
    training = seen[0][0]  # the first step, before any weight (VMP's included) has moved
    written = load_checkpoint(trained.out).clip  # train --init keeps its init's normalisation
    assert (written.mean, written.std) == (MEAN, STD)

    with backbone_inputs() as seen:
        evaluate(ck.model, ck.vmp, dataset, ck.clip)
    evaluation = seen[0][0]

    calibration = prompts(load_source(EngineConfig(checkpoint=str(init))), frames)

    with load_engine(EngineConfig(checkpoint=str(init), backend="torch", device="cpu")) as engine, \
            SharedRing.create(8, SIZE, SIZE) as ring:
        for seq, frame in enumerate(frames):
            ring.write(np.ascontiguousarray(frame), seq, seq, seq)
        stream = build_stream(CameraConfig("cam1", "synthetic://?seed=1"), ring, engine, 1, PostprocessConfig(),
                              EventsConfig(enabled=False))
        assert stream.drain(T + 1) and stream.pending is not None
        live = stream.pending.clip.clone()

    usual = VmpLayer()  # the same VMP with the usual normalisation: what a path that ignored the spec would give
    usual.load_state_dict(vmp.state_dict())
    ignored = clip_inputs(torch.from_numpy(frames)[None], usual, (0.45,) * 3, (0.225,) * 3)[0][0]
    assert not torch.allclose(ignored, training, atol=1e-3)
    for name, got in (("evaluation", evaluation), ("calibration", calibration), ("live", live)):
        torch.testing.assert_close(got, training, rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
