"""The WaveGAN's training loop: its state (weights, optimizers, step, training time, the quality curve so far),
checkpoints, resume, and a stop that saves first.

Checkpoints are the project's (pydreamer/models/checkpoint.py: one file, written aside and renamed, read without
pickles): `checkpoints/latest.pt` every `wavegan_save_interval` generator steps and at a stop, and the weights
alone as `checkpoints/step-NNNNNN.pt` at every point of the quality curve (`wavegan_curve_interval`, and the last
step).
The data and the noise are seeded again from seed and step at every save, so a run resumed from a periodic
checkpoint makes the very draws (and weights) the uninterrupted run made from there.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from pydreamer.models.checkpoint import load_checkpoint, restore, save_checkpoint
from pydreamer.replay_layout import ReplayLayout
from wavegan.data import WindowSampler
from wavegan.gan import make_optimizers, train_step
from wavegan.models import WaveGAN

log = logging.getLogger("wavegan")

EXIT_NONFINITE = 3  # the learner's codes (pydreamer/learner/loop.py): a loss went NaN, the last checkpoint kept
EXIT_INTERRUPTED = 130  # SIGTERM or Ctrl-C: a checkpoint was saved first


class Interrupted(Exception):
    """A stop was asked for (SIGTERM, Ctrl-C) between two steps."""


class Trainer:
    """The model, its optimizers and the counters a checkpoint carries."""

    def __init__(self, conf: Mapping[str, Any], samples: int, device: torch.device, folder: Path | str):
        self.conf, self.device = conf, device
        torch.manual_seed(int(conf["seed"]))
        self.model = WaveGAN(samples, conf).to(device)
        self.opts = make_optimizers(self.model, conf)
        self.step, self.train_seconds = 0, 0.0
        self.curve: list[dict[str, Any]] = []  # one row per scored checkpoint (report.curve_row)
        self.layout = ReplayLayout.of(folder)
        self.resumed_at: int | None = None
        self.after_save: Callable[[Path], None] | None = None  # e.g. upload each file saved (a tracking server)

    @property
    def latest(self) -> Path:
        return Path(self.layout.checkpoint("latest"))

    def kept(self, step: int) -> Path:
        return Path(self.layout.checkpoints) / f"step-{step:06d}.pt"

    def save(self, keep: bool = False) -> Path:
        """latest.pt (and, with `keep`, a copy for this step); returns the file that names the step."""
        extra = {"train_seconds": self.train_seconds, "curve": self.curve}
        save_checkpoint(self.latest, self.model, self.opts, self.step, extra)
        saved = [self.latest]
        if keep:  # the weights alone (a third of the file): what the curve's samples came from
            save_checkpoint(self.kept(self.step), self.model, None, self.step, extra)
            saved.append(self.kept(self.step))
        for path in saved if self.after_save else ():
            self.after_save(path)
        return saved[-1]

    def resume(self) -> bool:
        """Continue from latest.pt when there is one; ValueError when it was trained as another architecture."""
        if not self.latest.is_file():
            return False
        ckpt = load_checkpoint(self.latest, map_location=self.device)
        self.step = restore(ckpt, self.model, self.opts)
        extra = ckpt.get("extra") or {}
        self.train_seconds = float(extra.get("train_seconds", 0.0))
        self.curve = list(extra.get("curve", []))
        self.resumed_at = self.step
        return True

    def counts(self) -> dict[str, int]:
        return self.model.parameter_counts()


def _means(sums: dict[str, float], n: int) -> dict[str, float]:
    return {k: v / max(n, 1) for k, v in sums.items()}


def _reseed(trainer: Trainer, sampler: WindowSampler) -> None:
    """The draws from here on depend on the seed and the step only."""
    seed = int(trainer.conf["seed"])
    sampler.reseed(seed, trainer.step)
    torch.manual_seed(seed * 1_000_003 + trainer.step)


def train(trainer: Trainer, sampler: WindowSampler, log_fn: Callable[[dict[str, float], int], None],
          on_curve: Callable[[int, dict[str, float]], None], stop: Callable[[], bool]) -> None:
    """Generator steps until `wavegan_steps`: metrics every `wavegan_log_interval`, latest.pt every
    `wavegan_save_interval`, a kept checkpoint and `on_curve(step, recent means)` every `wavegan_curve_interval` and
    at the last step. Raises Interrupted (after saving) when `stop()` says so, NonFiniteLoss on a NaN."""
    conf, device = trainer.conf, trainer.device
    total, batch = int(conf["wavegan_steps"]), int(conf["wavegan_batch_size"])
    _reseed(trainer, sampler)

    def real_batch() -> torch.Tensor:
        return torch.from_numpy(sampler.batch(batch)).unsqueeze(1).to(device)

    sums: dict[str, float] = {}
    n, busy, recent = 0, 0.0, {}  # steps and training seconds since the last log line
    while trainer.step < total:
        if stop():
            trainer.save()
            raise Interrupted()
        started = time.perf_counter()
        metrics = train_step(trainer.model, trainer.opts, real_batch, conf, device)
        spent = time.perf_counter() - started
        busy, trainer.train_seconds = busy + spent, trainer.train_seconds + spent
        trainer.step += 1
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        step = trainer.step
        if step % conf["wavegan_log_interval"] == 0 or step == total:
            recent = _means(sums, n)
            rate = n / max(busy, 1e-9)  # training steps only: the curve's scoring and the saves are not in it
            log_fn({**{f"wavegan/{k}": v for k, v in recent.items()}, "wavegan/steps_per_sec": rate}, step)
            log.info("step %d/%d: critic %.3f, generator %.3f, gp %.4f, W %.3f; %.2f steps/s, ETA %.1f min", step,
                     total, recent["critic_loss"], recent["generator_loss"], recent["gradient_penalty"],
                     recent["wasserstein"], rate, (total - step) / max(rate, 1e-9) / 60)
            sums, n, busy = {}, 0, 0.0
        if step % conf["wavegan_curve_interval"] == 0 or step == total:
            on_curve(step, recent or _means(sums, n))  # appends the curve row the kept checkpoint carries
            trainer.save(keep=True)
            _reseed(trainer, sampler)
        elif step % conf["wavegan_save_interval"] == 0:
            trainer.save()
            _reseed(trainer, sampler)
