"""Dreamer = world model + actor-critic, with their optimizers and one training step.

The config's `world_model` picks the world model (`WORLD_MODELS`: the one place that asks which it is).
One with a latent state to imagine from (the RSSM, DreamerV2) trains the actor-critic in imagination
beside it; one without (the Transformer, a baseline over the same tokens) trains alone (with the null
action the actor has nothing to learn, and the critic only forecasts voice activity).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
from torch.profiler import record_function

from .actor_critic import ActorCritic
from .base import WorldModel
from .conditioning import Vocabulary
from .functions import map_state
from .maskgit import MaskGITWorldModel
from .mel_world_model import MelRSSMWorldModel
from .rssm_world_model import RSSMWorldModel
from .transformer import TransformerWorldModel

WORLD_MODELS: dict[str, type[WorldModel]] = {m.kind: m for m in (RSSMWorldModel, TransformerWorldModel, MaskGITWorldModel,
                                                                    MelRSSMWorldModel)}
# Config keys of the actor-critic's weights (with the world model's `arch_keys`: the checkpoint's model_args).
ACTOR_CRITIC_KEYS = ("hidden_dim",)


class NonFiniteLoss(RuntimeError):
    """A NaN or inf loss: training must stop before a bad step reaches the weights or a checkpoint."""


class Dreamer(nn.Module):
    def __init__(self, conf: Mapping[str, Any], n_tokens: int, tokens_per_step: int, action_dim: int,
                 conditions: Vocabulary = ()):
        super().__init__()
        self.dims = {"n_tokens": int(n_tokens), "tokens_per_step": int(tokens_per_step), "action_dim": int(action_dim)}
        if conf["world_model"] not in WORLD_MODELS:
            raise ValueError(f"world_model must be one of {', '.join(WORLD_MODELS)}, not {conf['world_model']!r}")
        # The labels and their values it is conditioned on (the train split's, from tokens/meta.json): part of
        # what a checkpoint rebuilds, so a dream's `--condition language=es` means what it meant in training.
        self.conditions = [(str(n), [str(v) for v in vs]) for n, vs in conditions]
        conditioned = {"conditions": self.conditions} if self.conditions else {}  # a model that has none need not take it
        self.wm: WorldModel = WORLD_MODELS[conf["world_model"]](conf, n_tokens, tokens_per_step, action_dim,
                                                                **conditioned)
        self.ac = ActorCritic(conf, self.wm.latent_dim, action_dim) if self.wm.has_latent else None
        # What a checkpoint carries to rebuild this very model (nanoGPT's model_args): see model_args().
        keys = self.wm.arch_keys + (ACTOR_CRITIC_KEYS if self.ac is not None else ()) + (
            ("condition_dim",) if self.conditions else ())
        self.arch = {k: conf[k] for k in keys}
        self.grad_clip = conf["grad_clip"]
        self.target_interval = conf["target_interval"]
        self.eval_samples = conf["eval_samples"]
        self.imag_starts = conf["imag_starts"]
        # Several learner ranks (`distribute`): the DDP wrappers of the trained parts, and the agreement
        # on a non-finite loss. A plain dict, not submodules: state_dict (and so every checkpoint) stays
        # the unwrapped model's, which any number of ranks can load.
        self.replicas: dict[str, nn.Module] = {}
        self.agree: Callable[[int], int] | None = None

    @property
    def world_model(self) -> str:
        """Which world model this is (the config's `world_model` value), for labels and records."""
        return self.wm.kind

    def model_args(self) -> dict:
        """The world model's kind, dimensions and architecture keys: all it takes to build it again."""
        conditioned = {"conditions": [[n, list(vs)] for n, vs in self.conditions]} if self.conditions else {}
        return {"world_model": self.wm.kind, **self.dims, **conditioned, "conf": dict(self.arch)}

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        return self.wm.initial_state(batch_size, device)

    def state_batch_size(self, state) -> int:
        return self.wm.state_batch_size(state)

    def make_optimizers(self, conf: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """Separate Adam optimizers (and learning rates) for the world model, actor and critic."""
        if self.ac is None:
            return {"model": torch.optim.Adam(self.wm.parameters(), lr=conf["adam_lr"], eps=1e-5)}
        return {
            "model": torch.optim.Adam(self.wm.parameters(), lr=conf["adam_lr"], eps=1e-5),
            "actor": torch.optim.Adam(self.ac.actor.parameters(), lr=conf["adam_lr_actor"], eps=1e-5),
            "critic": torch.optim.Adam(self.ac.critic.parameters(), lr=conf["adam_lr_critic"], eps=1e-5),
        }

    def distribute(self, agree: Callable[[int], int], **ddp_kwargs) -> None:
        """Train with DistributedDataParallel (the process group must be up): the world model and the
        actor-critic each in its own DDP wrapper, each given one forward and one backward per step, so
        their gradients are averaged over the ranks. `agree(code)` returns the largest code of all ranks.

        With the null action (one action) the actor has nothing to learn and is never run: its weights
        are frozen here so DDP does not wait for gradients that never come (no find_unused_parameters)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.replicas = {"wm": DDP(self.wm, **ddp_kwargs)}
        if self.ac is not None:
            if not self.ac.trains_actor:
                self.ac.actor.requires_grad_(False)
            self.replicas["ac"] = DDP(self.ac, **ddp_kwargs)
        self.agree = agree

    def _check_finite(self, losses: Mapping[str, torch.Tensor], step: int) -> None:
        """Raise NonFiniteLoss (before any backward) when a loss is NaN or inf, here or on another rank."""
        bad = [k for k, v in losses.items() if not torch.isfinite(v).item()]
        elsewhere = self.agree is not None and self.agree(int(bool(bad))) and not bad
        if bad:
            raise NonFiniteLoss(
                f"non-finite loss at step {step}: " + ", ".join(f"{k}={float(losses[k].detach())}" for k in bad)
            )
        if elsewhere:
            raise NonFiniteLoss(f"non-finite loss at step {step} on another learner rank (its log names it)")

    def training_step(
        self,
        batch: Mapping[str, torch.Tensor],
        state: Any,
        optimizers: Mapping[str, torch.optim.Optimizer],
        step: int,
        amp: bool = False,
    ) -> tuple[Any, dict[str, float]]:
        """One gradient step of all three parts on a time-major batch; returns the carried state and metrics.

        Raises NonFiniteLoss (before touching the weights) when a loss is NaN or inf.
        """
        device = batch["tokens"].device
        autocast = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        )
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        with autocast, record_function("learner/world_model"):
            out = self.replicas.get("wm", self.wm)(batch, state)
        if self.ac is None:
            return self._model_step(out, optimizers, step)
        with autocast, record_function("learner/actor_critic"):
            start = map_state(lambda x: x.reshape(-1, x.shape[-1]), out.states)
            start_terminal = batch["terminal"].reshape(-1)
            if 0 < self.imag_starts < start_terminal.shape[0]:  # dream from a random subset of states
                pick = torch.randperm(start_terminal.shape[0], device=device)[: self.imag_starts]
                start, start_terminal = map_state(lambda x: x[pick], start), start_terminal[pick]
            ac = self.replicas.get("ac")
            loss_actor, loss_critic, ac_metrics = (ac(self.wm, start, start_terminal) if ac is not None
                                                   else self.ac.losses(self.wm, start, start_terminal))
        self._check_finite({"loss_model": out.loss, "loss_actor": loss_actor, "loss_critic": loss_critic}, step)
        # The actor-critic loss moves only the actor and critic: dynamics gradients of the actor pass
        # through the world model, whose weights only the world-model loss may move, so that backward
        # stops at the actor-critic's own weights (`inputs`) and never reaches the world model's.
        with record_function("learner/backward"):
            ac_params = [p for p in self.ac.parameters() if p.requires_grad]
            (loss_actor + loss_critic).backward(inputs=ac_params)
            out.loss.backward()
        metrics = {k: float(v) for k, v in out.metrics.items()}
        metrics.update({k: float(v) for k, v in ac_metrics.items()})
        parts = {"model": self.wm, "actor": self.ac.actor, "critic": self.ac.critic}
        with record_function("learner/optimizer"):
            for name, opt in optimizers.items():
                if name == "actor" and not self.ac.trains_actor:
                    continue
                norm = torch.nn.utils.clip_grad_norm_(parts[name].parameters(), self.grad_clip)
                metrics[f"grad_norm_{name}"] = float(norm)
                if math.isfinite(float(norm)):
                    opt.step()
        if self.target_interval > 0 and step % self.target_interval == 0:
            self.ac.update_target()
        return map_state(lambda x: x.detach(), out.last_state), metrics


    def _model_step(self, out, optimizers: Mapping[str, torch.optim.Optimizer], step: int):
        """The world model alone (no actor-critic): one clipped Adam step."""
        self._check_finite({"loss_model": out.loss}, step)
        out.loss.backward()
        metrics = {k: float(v) for k, v in out.metrics.items()}
        norm = torch.nn.utils.clip_grad_norm_(self.wm.parameters(), self.grad_clip)
        metrics["grad_norm_model"] = float(norm)
        if math.isfinite(float(norm)):
            optimizers["model"].step()
        return out.last_state, metrics
