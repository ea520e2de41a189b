"""Training and fine-tuning of a VMP layer + backbone on clip data sets.

The trained unit is what the pipeline runs: the VMP layer turns T+1 normalised frames into T
prompts (docs/model.md#vmp) and the backbone classifies them; without VMP the backbone sees
the last T frames, as the pipeline's pass-through stage gives them. The loss is
``cross_entropy + vmp_lambda * reg`` (``reg``: the VMP temporal-variation regulariser).

AdamW (no weight decay on biases, norms, ``rpb`` and the VMP scalars), a per-step schedule with
linear warm-up then cosine decay to ``min_lr``, evaluation after every epoch, a progress line every
``log_every`` steps. Training is resumable: every ``save_every`` steps and after every epoch a
resume file (weights, optimizer state, step, history) is written atomically beside the output, and
the data order is a pure function of (seed, epoch), so a resumed run continues with the same
batches. After every epoch the output checkpoint is written with
:func:`emim_stream.engines.checkpoints.io.save_checkpoint` (labels, clip spec, VMP parameters, training record).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.utils.data import DataLoader

from emim_stream.engines.checkpoints.io import (
    FORMAT,
    ClipSpec,
    LoadReport,
    load_pretrained,
    read_file,
    resolve_checkpoint,
    save_checkpoint,
)
from emim_stream.engines.data.augment import SymmetricClips
from emim_stream.engines.data.clip_cache import cache_clips
from emim_stream.engines.data.datasets import ClipDataset, open_dataset, split_validation
from emim_stream.engines.errors import CheckpointError, ConfigError
from emim_stream.engines.files import atomic_write
from emim_stream.engines.layers.vmp import VmpLayer, slope_shift
from emim_stream.engines.models import build_model, get_model_cfg
from emim_stream.engines.training.config import TrainConfig
from emim_stream.engines.training.evaluate import EvalResult, evaluate, forward_clips
from emim_stream.engines.uris import SYNTHETIC_SIZE, is_synthetic

__all__ = [
    "RESUME_FORMAT",
    "EpochRecord",
    "EpochStats",
    "ResumeState",
    "StepInfo",
    "TrainConfig",
    "TrainInterrupted",
    "TrainResult",
    "load_resume",
    "resume_path",
    "save_resume",
    "train",
]

_log = logging.getLogger(__name__)

RESUME_FORMAT = "emim-stream.resume/1"
@dataclass(frozen=True, slots=True)
class StepInfo:
    """Where training stands after an optimizer step (passed to the ``on_step`` callback)."""

    epoch: int
    step_in_epoch: int
    steps_per_epoch: int
    global_step: int
    total_steps: int
    loss: float
    lr: float


class TrainInterrupted(Exception):
    """Training stopped on request after a step; ``resume_file`` holds its state (``--resume`` continues)."""

    def __init__(self, resume_file: Path, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> None:
        super().__init__(f"stopped at epoch {epoch} step {step_in_epoch}/{steps_per_epoch}; state in {resume_file}")
        self.resume_file = resume_file
        self.epoch = epoch
        self.step_in_epoch = step_in_epoch
        self.steps_per_epoch = steps_per_epoch


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """Summary of one finished epoch."""

    epoch: int
    train_loss: float
    train_top1: float
    val_top1: float | None
    lr: float
    seconds: float


@dataclass(frozen=True, slots=True)
class TrainResult:
    """The finished run: output path, per-epoch history, final validation result, total training time."""

    out: Path
    history: tuple[EpochRecord, ...]
    val: EvalResult | None
    train_seconds: float
    weights_sha256: str


def resume_path(out: str | os.PathLike[str]) -> Path:
    """The resume file of a run writing ``out``: ``<out>.resume`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def lr_schedule(
    optimizer: torch.optim.Optimizer, lr: float, min_lr: float, total: int, warmup: int, start: int = 0
) -> LRScheduler:
    """Per-step learning rates of every group: linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``total``.

    Step ``s`` (0-based) of the warm-up runs at ``lr * (s + 1) / warmup``. The schedule is set for step ``start``
    (a resumed run's next step); call its ``step()`` after every optimizer step.
    """
    for group in optimizer.param_groups:  # a resumed optimizer holds its last step's rate
        group["lr"] = group["initial_lr"] = lr
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=min_lr)
    schedule: LRScheduler = cosine
    if warmup:
        ramp = LinearLR(optimizer, start_factor=1 / warmup, total_iters=max(1, warmup - 1))
        schedule = SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fast-forwarding warns that no optimizer step came first
        for _ in range(start):
            schedule.step()
    return schedule


@dataclass(slots=True)
class EpochStats:
    """Running sums over the steps of one epoch (or of one progress line's window)."""

    loss_sum: float = 0.0
    """Sum over clips of the loss (cross-entropy + lambda * reg)."""
    correct: int = 0
    clips: int = 0
    reg_sum: float = 0.0
    """Sum over clips of the VMP regulariser."""
    steps: int = 0

    def add(self, loss: float, reg: float, correct: int, clips: int) -> None:
        """Count one step of ``clips`` clips: its mean ``loss`` and ``reg``, ``correct`` of them right."""
        self.loss_sum += loss * clips
        self.correct += correct
        self.clips += clips
        self.reg_sum += reg * clips
        self.steps += 1

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.clips, 1)

    @property
    def top1(self) -> float:
        return self.correct / max(self.clips, 1)

    @property
    def reg(self) -> float:
        return self.reg_sum / max(self.clips, 1)


@dataclass(slots=True)
class ResumeState:
    """Where a run stands: what its resume file holds besides the weights and the optimizer state."""

    settings: dict[str, Any]
    """The run's :meth:`TrainConfig.resume_settings`; a resumed run must have the same."""
    labels: tuple[str, ...]
    epoch: int = 0
    """The epoch (0-based) under way, or the next one when ``step_in_epoch`` is 0."""
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    """One :class:`EpochRecord` as a dict per finished epoch."""
    train_seconds: float = 0.0
    epoch_stats: EpochStats = field(default_factory=EpochStats)
    """Sums of the epoch under way up to ``step_in_epoch``."""


def save_resume(
    path: Path, state: ResumeState, model: nn.Module, vmp: VmpLayer | None, optimizer: torch.optim.Optimizer
) -> None:
    """Write ``state`` with the weights and optimizer state to ``path`` atomically (format :data:`RESUME_FORMAT`)."""
    stats = state.epoch_stats
    record = {
        "format": RESUME_FORMAT,
        "settings": state.settings,
        "labels": list(state.labels),
        "model": model.state_dict(),
        "vmp": vmp.state_dict() if vmp is not None else None,
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "history": state.history,
        "train_seconds": state.train_seconds,
        # The layout of resume/1: four floats in this order.
        "epoch_totals": [float(stats.loss_sum), float(stats.correct), float(stats.clips), float(stats.reg_sum)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(record, tmp)


def load_resume(
    path: Path,
    settings: dict[str, Any],
    labels: tuple[str, ...],
    model: nn.Module,
    vmp: VmpLayer | None,
    optimizer: torch.optim.Optimizer,
) -> ResumeState:
    """Read the resume file ``path`` into ``model``, ``vmp`` and ``optimizer``; return where the run stands.

    Raises:
        ConfigError: no file, or ``settings`` / ``labels`` differ from the run that wrote it.
        CheckpointError: not a resume file.
    """
    if not path.is_file():
        raise ConfigError(f"no resume file '{path}' to continue from; start the run without --resume")
    record = read_file(path)
    if not isinstance(record, dict) or record.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"'{path}' is not an emim-stream resume file")
    saved = record["settings"]
    changed = [f"{k} {saved.get(k)!r} -> {settings[k]!r}" for k in settings if saved.get(k) != settings[k]]
    if changed:
        raise ConfigError(f"--resume needs the settings of the run in '{path}'; changed: {'; '.join(changed)}")
    if tuple(record["labels"]) != labels:
        raise ConfigError(f"--resume: the data set's labels differ from those in '{path}'")
    model.load_state_dict(record["model"])
    if vmp is not None:
        vmp.load_state_dict(record["vmp"])
    optimizer.load_state_dict(record["optimizer"])
    loss_sum, correct, clips, reg_sum = record["epoch_totals"]
    stats = EpochStats(loss_sum, int(correct), int(clips), reg_sum, steps=record["step_in_epoch"])
    return ResumeState(
        saved, labels, record["epoch"], record["step_in_epoch"], record["global_step"], list(record["history"]),
        record["train_seconds"], stats,
    )


@dataclass(slots=True)
class _Run:
    """The parts that every epoch of one run uses."""

    cfg: TrainConfig
    model: nn.Module
    vmp: VmpLayer | None
    optimizer: torch.optim.Optimizer
    schedule: LRScheduler
    clip: ClipSpec
    steps_per_epoch: int
    total_steps: int
    resume_file: Path
    seconds_before: float
    """Training seconds of the runs this one resumes."""
    started: float = field(default_factory=time.monotonic)

    def seconds(self) -> float:
        """Training seconds so far, those of resumed runs included."""
        return self.seconds_before + time.monotonic() - self.started

    def save(self, state: ResumeState) -> None:
        """Write the resume file: ``state`` now, with the weights and optimizer state."""
        state.train_seconds = self.seconds()
        save_resume(self.resume_file, state, self.model, self.vmp, self.optimizer)


def train(
    cfg: TrainConfig, on_step: Callable[[StepInfo], None] | None = None, stop: threading.Event | None = None
) -> TrainResult:
    """Run (or resume) training and write the checkpoint ``cfg.out`` after every epoch.

    Args:
        cfg: the run's settings.
        on_step: called after every optimizer step (and after the resume file, when one is due).
        stop: set it (e.g. on Ctrl-C) to end the run after the current step with the resume file written.

    Returns:
        The :class:`TrainResult`; the resume file is removed once the last epoch is written.

    Raises:
        ConfigError: invalid settings, or ``resume`` without a matching resume file.
        DatasetError: bad data set (naming the file).
        CheckpointError: unreadable or unfitting ``init`` / resume file.
        TrainInterrupted: ``stop`` was set; the resume file is written.
    """
    _, default_t, default_h, default_w = get_model_cfg(cfg.model).input_size
    frames = cfg.frames or default_t
    height = width = cfg.size or default_h
    if cfg.size is None and default_h != default_w:
        width = default_w
    clip = ClipSpec(frames, height, width)

    train_set = open_dataset(cfg.data, frames + 1, height, width, train=True, method=cfg.method, seed=cfg.seed)
    labels = train_set.labels
    train_set, val_set = _validation_split(cfg, train_set, frames + 1, height, width)
    if cfg.cache_clips is not None:
        train_set = cache_clips(train_set, cfg.cache_clips, cfg.workers)
    if cfg.augment:
        train_set = SymmetricClips(train_set, cfg.seed)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=len(labels), **cfg.overrides)
    vmp = VmpLayer() if cfg.vmp else None
    if cfg.init and not cfg.resume:
        _load_init(model, vmp, cfg.init, labels)
    if vmp is not None and cfg.vmp_init is not None and not cfg.resume:
        with torch.no_grad():  # after --init: an explicit VMP start overrides the one it brings
            vmp.m.fill_(cfg.vmp_init[0])
            vmp.n.fill_(cfg.vmp_init[1])
    optimizer = torch.optim.AdamW(_param_groups(model, vmp, cfg.weight_decay), lr=cfg.lr)

    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(cfg.warmup_epochs * steps_per_epoch))
    settings = cfg.resume_settings()
    resume_file = resume_path(cfg.out)
    state = ResumeState(settings, labels)
    if cfg.resume:
        state = load_resume(resume_file, settings, labels, model, vmp, optimizer)
        _log.info("resuming %s at epoch %d step %d", resume_file, state.epoch + 1, state.step_in_epoch)
    elif resume_file.exists():
        _log.warning("%s exists and will be overwritten (pass --resume to continue that run)", resume_file)

    params = sum(p.numel() for p in model.parameters())
    _log.info("model %s%s: %s parameters, %d classes, input %dx%dx%d (T x H x W) from %d frames",
              cfg.model, f" {cfg.overrides}" if cfg.overrides else "", f"{params:,}", len(labels),
              frames, height, width, frames + 1)
    _log.info("train data: %s", train_set.describe())
    _log.info("validation data: %s", val_set.describe() if val_set is not None else "none (no evaluation)")
    if vmp is not None:
        a, b = slope_shift(vmp.m.detach(), vmp.n.detach())
        _log.info("VMP: slope %.3g, shift %.3g, lambda %g", a.item(), b.item(), cfg.vmp_lambda)
    _log.info("%d epochs x %d steps of %d clips, warm-up %d steps, lr %g -> %g",
              cfg.epochs, steps_per_epoch, cfg.batch_size, warmup_steps, cfg.lr, cfg.min_lr)

    schedule = lr_schedule(optimizer, cfg.lr, cfg.min_lr, total_steps, warmup_steps, start=state.global_step)
    run = _Run(cfg, model, vmp, optimizer, schedule, clip, steps_per_epoch, total_steps, resume_file,
               state.train_seconds)
    val_result: EvalResult | None = None
    digest = ""
    for epoch in range(state.epoch, cfg.epochs):
        epoch_start = time.monotonic()
        lr = _train_epoch(run, train_set, state, on_step, stop)
        if val_set is not None:
            val_result = evaluate(model, vmp, val_set, cfg.batch_size, cfg.workers, labels, clip.mean, clip.std)
        stats = state.epoch_stats
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=stats.loss,
            train_top1=stats.top1,
            val_top1=val_result.top1 if val_result is not None else None,
            lr=float(lr),
            seconds=time.monotonic() - epoch_start,
        )
        state.history.append(asdict(record))
        _log.info(
            "epoch %d/%d done in %s: train loss %.4f, train acc %.1f%%, VMP reg %.4f%s",
            epoch + 1, cfg.epochs, _duration(record.seconds), record.train_loss, 100 * record.train_top1, stats.reg,
            f", val top-1 {100 * val_result.top1:.2f}% ({val_result.n} clips)" if val_result is not None else "",
        )
        extra = {
            "training": {
                **settings,
                "command": cfg.command,
                "epochs_done": epoch + 1,
                "train_data": train_set.describe(),
                "val_data": val_set.describe() if val_set is not None else None,
                "train_seconds": run.seconds(),
                "history": state.history,
                "torch": str(torch.__version__),
            },
            "val": val_result.as_dict() if val_result is not None else None,
        }
        digest = save_checkpoint(cfg.out, model, labels, clip, vmp, extra)
        state.epoch, state.step_in_epoch, state.epoch_stats = epoch + 1, 0, EpochStats()
        run.save(state)

    resume_file.unlink(missing_ok=True)
    seconds = run.seconds()
    _log.info("wrote %s (weights %s) after %s of training", cfg.out, digest[:12], _duration(seconds))
    return TrainResult(
        Path(cfg.out), tuple(EpochRecord(**h) for h in state.history), val_result, seconds, digest
    )


def _train_epoch(
    run: _Run,
    train_set: ClipDataset,
    state: ResumeState,
    on_step: Callable[[StepInfo], None] | None,
    stop: threading.Event | None,
) -> float:
    """Run the steps of epoch ``state.epoch`` from ``state.step_in_epoch`` on, advancing ``state``.

    The batch order is a pure function of (seed, epoch), so a resumed epoch skips exactly the batches it ran.
    A progress line every ``log_every`` steps; the resume file every ``save_every`` steps.

    Returns:
        The learning rate of the last step (``cfg.lr`` when no step was left).

    Raises:
        TrainInterrupted: ``stop`` was set; the resume file is written.
    """
    cfg, epoch, skip = run.cfg, state.epoch, state.step_in_epoch
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # drop path: reproducible per epoch
    train_set.set_epoch(epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_set))
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=order[skip * cfg.batch_size :].tolist(),
        num_workers=cfg.workers,
    )
    run.model.train()
    if run.vmp is not None:
        run.vmp.train()
    window = EpochStats()  # since the last progress line
    window_start = time.monotonic()
    lr = cfg.lr
    for clips, target in loader:
        lr = float(run.schedule.get_last_lr()[0])
        logits, reg = forward_clips(run.model, run.vmp, clips, run.clip.mean, run.clip.std)
        loss = F.cross_entropy(logits, target) + cfg.vmp_lambda * reg
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.schedule.step()
        state.global_step += 1
        state.step_in_epoch += 1
        step = state.step_in_epoch
        correct = int((logits.detach().argmax(1) == target).sum().item())
        for stats in (state.epoch_stats, window):
            stats.add(loss.item(), reg.item(), correct, len(target))
        if step % cfg.log_every == 0 or step == run.steps_per_epoch:
            elapsed = time.monotonic() - window_start
            remaining = (run.total_steps - state.global_step) * elapsed / window.steps
            _log.info(
                "epoch %d/%d step %d/%d  loss %.4f  acc %.1f%%  lr %.2e  %.1f clips/s  eta %s",
                epoch + 1, cfg.epochs, step, run.steps_per_epoch, window.loss, 100 * window.top1, lr,
                window.clips / max(elapsed, 1e-9), _duration(remaining),
            )
            window = EpochStats()
            window_start = time.monotonic()
        if step % cfg.save_every == 0 and step < run.steps_per_epoch:
            run.save(state)
        if on_step is not None:
            on_step(StepInfo(epoch, step, run.steps_per_epoch, state.global_step, run.total_steps, loss.item(), lr))
        if stop is not None and stop.is_set():
            run.save(state)
            raise TrainInterrupted(run.resume_file, epoch + 1, step, run.steps_per_epoch)
    return lr


def _validation_split(
    cfg: TrainConfig, train_set: ClipDataset, frames: int, height: int, width: int
) -> tuple[ClipDataset, ClipDataset | None]:
    """``(train, val)``: ``--val-data``, else the synthetic val split, else videos held out of the training set."""
    if cfg.val_data:
        return train_set, open_dataset(
            cfg.val_data, frames, height, width, train=False, labels=train_set.labels, method=cfg.method,
            default_split="val", default_n=cfg.val_n,
        )
    if is_synthetic(cfg.data):
        if cfg.val_n == 0:
            return train_set, None
        method = getattr(train_set, "method", cfg.method)
        window = getattr(train_set, "window", "first")
        size = "x".join(str(v) for v in getattr(train_set, "source_size", SYNTHETIC_SIZE))
        style = getattr(train_set, "style", "classic")
        spec = f"synthetic://?split=val&n={cfg.val_n}&method={method}&window={window}&size={size}&style={style}"
        return train_set, open_dataset(spec, frames, height, width, train=False)
    return split_validation(train_set, cfg.val_fraction, cfg.seed)


def _param_groups(model: nn.Module, vmp: VmpLayer | None, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices and conv kernels only."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.dim() <= 1 or name.endswith(".rpb") else decay).append(p)
    if vmp is not None:
        no_decay += list(vmp.parameters())
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _load_init(model: nn.Module, vmp: VmpLayer | None, path: str, labels: tuple[str, ...]) -> LoadReport:
    """Load ``--init`` weights: public UniFormer / EMIM ones, or an emim-stream checkpoint (with its VMP).

    ``path`` is a file or a shipped model name (``emim_xs.demo``).
    """
    record = read_file(resolve_checkpoint(path))
    if isinstance(record, dict) and record.get("format") == FORMAT:
        state = dict(record["state_dict"])
        if tuple(record["labels"]) != labels:
            head = [k for k in state if k.startswith("head.")]
            for key in head:
                del state[key]
            _log.info("init %s: its labels differ from the data set's; head not loaded", path)
        report = load_pretrained(model, state)
        if vmp is not None and record.get("vmp") is not None:
            with torch.no_grad():
                vmp.m.fill_(record["vmp"]["m"])
                vmp.n.fill_(record["vmp"]["n"])
            _log.info("init %s: VMP parameters loaded", path)
    else:
        report = load_pretrained(model, record)
    _log.info("init %s:\n%s", path, report.summary())
    return report


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
