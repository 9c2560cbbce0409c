"""What every world model offers, so that the learner, evaluation, dreams and latents never ask which one it is.

A world model reads utterances of token steps ([T, G] ints in [0, n_tokens)) and:
- trains on time-major chunks, carrying its own kind of state from chunk to chunk (`forward`);
- scores each step of whole episodes from the steps before it (`eval_sums`: the learner's eval/*);
- forecasts steps t+1..t+H after reading steps 0..t (`forecast`: what `evaluate` scores per horizon);
- imagines token steps from nothing or after a prompt, and from a mixture of two prompts (dreams);
- gives one feature vector per step of an utterance (t-SNE, probes).
Models with a latent state the actor-critic can imagine from (`has_latent`) add `imagine_latent`,
`observe_step`, `latent_features` (of size `latent_dim`) and the `reward_head` and `terminal_head` that read them; the
rest train the world model alone.

A new world model is one module here and one line in `WORLD_MODELS` (dreamer.py).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, ClassVar, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from runtime.config import choices_of

from .conditioning import Conditioning, UnknownCondition, Vocabulary
from .functions import LN2

# `latent` (DreamerV2): the prior draws each next latent state, tokens are read off it and never fed back;
# `tokens`: each step's tokens are drawn from the h = 1 forecast and read back as if heard.
IMAGINATIONS = choices_of("evaluate_imagination")


class EvalSums(NamedTuple):
    """A batch of whole episodes scored step by step, as (total, count) pairs that add up over batches."""

    sums: dict[str, tuple[float, float]]  # eval/* name -> (sum, count); at least nll_h1, acc_h1, loss_tokens
    features: torch.Tensor | None  # [T, B, F]: each step's latent features (has_latent models), for the critic


class WorldModel(nn.Module, ABC):
    kind: ClassVar[str]  # the config's `world_model` value that builds it
    # Config keys that decide its weights' shapes and what it computes from them: with the dims, what its
    # checkpoint carries (`model_args`), so evaluate, dream and resume rebuild the very model that was trained.
    arch_keys: ClassVar[tuple[str, ...]] = ()
    has_latent: ClassVar[bool] = False  # a latent state to imagine from: the actor-critic trains beside it
    # What it reads of each step: `tokens` ([T, G] ids), or `mel` (the step's log-mel frames, [T, D] floats:
    # mel_world_model.py, which forecasts with `forecast_mel` and dreams log-mel steps instead of tokens).
    observes: ClassVar[str] = "tokens"
    latent_dim: int = 0  # the size of `latent_features` (has_latent models), what the actor and critic read
    # Imagined futures per start step at which doubling them moves the forecast's NLL by under 0.01 bits at every
    # horizon (measured with bench/samples.py on the `small` val split): what `evaluate_samples: 0` scores with.
    fair_samples: ClassVar[int] = 8
    # How dreams and forecasts go on past what was read (`imagine_by`): `tokens`, from the model's own tokens, as a
    # language model generates; the RSSM can also imagine in its latent (`latent`, rssm_world_model.py).
    imaginations: ClassVar[tuple[str, ...]] = ("tokens",)
    imagination: str = "tokens"
    # Whether its conditioned imagination can be guided (classifier-free guidance: `guide`).
    guides: ClassVar[bool] = False

    def __init__(self, conf: Mapping[str, Any], n_tokens: int, tokens_per_step: int, action_dim: int,
                 conditions: Vocabulary = ()):
        super().__init__()
        self.n_tokens = int(n_tokens)
        self.tokens_per_step = int(tokens_per_step)
        self.action_dim = int(action_dim)
        self.conditioning = Conditioning(conditions, conf["condition_dim"], conf["condition_dropout"]) \
            if conditions else None
        # What the model reads between two steps: the action, then the condition's embedding (conditioning.py).
        self.action_input_dim = self.action_dim + (self.conditioning.dim if self.conditioning is not None else 0)

    # ---- shared plumbing ------------------------------------------------------------------
    def check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.n_tokens):
            raise ValueError(
                f"token ids must lie in [0, {self.n_tokens}); got {int(tokens.min())}..{int(tokens.max())}"
                " (does the model's codebook size match the data's?)"
            )

    def null_action(self, n: int, device: torch.device | str, first: bool = False,
                    ids: torch.Tensor | None = None) -> torch.Tensor:
        """The action leading to a step of the audio env's episodes: the null action (index 0), or zeros
        before an episode's first step (no action led to it), with the fixed condition (or each lane's `ids` [n, C]:
        `guided_lanes`). The one place it is built."""
        a = torch.zeros(n, self.action_dim, device=device)
        if not first:
            a[:, 0] = 1.0
        return self.with_condition(a, ids)

    def episode_actions(self, n_steps: int, device: torch.device | str) -> torch.Tensor:
        """The actions [T, 1, A] of one utterance replayed as an episode: none before its first step, the null
        action before every later one (what the replay store holds, so what training saw), with the fixed condition."""
        action = torch.zeros(n_steps, 1, self.action_dim, device=device)
        action[1:, :, 0] = 1.0
        return self.with_condition(action)

    # ---- conditioning (conditioning.py) -------------------------------------------------
    def with_condition(self, action: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The action [..., A] with the condition's embedding appended ([..., A + condition_dim]): of `ids`
        [..., C] where given, else of the fixed condition (none, or what `conditioned` set). Unconditioned
        models: the action as it is."""
        if self.conditioning is None or action.shape[-1] == self.action_input_dim:
            return action
        if ids is None:
            ids = self.conditioning.fixed.expand(*action.shape[:-1], -1)
        return torch.cat([action, self.conditioning.embed(ids).to(action.dtype)], -1)

    def conditioned_batch(self, batch: Mapping[str, torch.Tensor], labels: bool = True) -> Mapping[str, torch.Tensor]:
        """A training or eval batch whose `action` carries each step's condition: the batch's label ids with
        `condition_dropout` while training (`labels`), else none. Unconditioned models: the batch as it is."""
        if self.conditioning is None:
            return batch
        ids = batch.get("condition") if labels else None
        if ids is not None and self.training:
            ids = self.conditioning.drop(ids)
        if ids is None:
            ids = torch.zeros(*batch["action"].shape[:-1], len(self.conditioning.names), dtype=torch.long,
                              device=batch["action"].device)
        return {**batch, "action": self.with_condition(batch["action"], ids)}

    def guide(self, scale: float) -> bool:
        """Classifier-free guidance of conditioned imagination from now on: every draw from the unconditioned
        distribution moved `scale` times its distance to the conditioned one, in log-probability (1: the conditioned
        model as trained; 0: unconditioned; above 1: more of the condition). Label dropout in training is what gives
        the one model both. Returns whether it applies: a conditioned model that `guides`."""
        if not scale >= 0:
            raise ValueError(f"guidance scale must be 0 or more, not {scale}")
        if self.conditioning is None or not self.guides:
            return False
        self.conditioning.guidance = float(scale)
        return True

    def guided_lanes(self, n: int) -> torch.Tensor | None:
        """The condition ids [2n, C] of a guided dream of n lanes: each lane on the fixed condition, then again on
        none. None where nothing guides it (scale 1, or no value fixed)."""
        c = self.conditioning
        if c is None or c.guidance == 1.0 or not bool(c.fixed.any()):
            return None
        fixed = c.fixed.expand(n, -1)
        return torch.cat([fixed, torch.zeros_like(fixed)])

    @contextmanager
    def conditioned(self, values: Mapping[str, str] | None):
        """Forecast and imagine conditioned on label `values` (name -> value; None or {}: none) inside the block.
        An unknown label or value raises UnknownCondition listing the known ones."""
        if not values:
            yield self
            return
        if self.conditioning is None:
            raise UnknownCondition(f"this {self.kind} model was trained without conditioning; "
                                   f"it cannot dream a given {', '.join(values)}")
        before = self.conditioning.fixed.clone()
        self.conditioning.fixed.copy_(self.conditioning.ids(values))
        try:
            yield self
        finally:
            self.conditioning.fixed.copy_(before)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def as_tokens(self, x: np.ndarray | torch.Tensor | None) -> torch.Tensor:
        """A prompt or utterance as int64 [T, G] on the model's device (None: no steps)."""
        if x is None:
            return torch.zeros(0, self.tokens_per_step, dtype=torch.long, device=self.device)
        t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
        return t.to(device=self.device, dtype=torch.long).reshape(-1, self.tokens_per_step)

    def as_observation(self, x: np.ndarray | torch.Tensor | None) -> torch.Tensor:
        """A prompt or utterance as this model reads it (`observes`): token ids here; log-mel steps for a mel model."""
        return self.as_tokens(x)

    def imagine_by(self, how: str) -> str:
        """Imagine `how` from now on where this model can (else its one way); returns the way it will."""
        if how not in IMAGINATIONS:
            raise ValueError(f"imagination must be one of {', '.join(IMAGINATIONS)}, not {how!r}")
        if how in self.imaginations:
            self.imagination = how
        return self.imagination

    @staticmethod
    def check_imagine(n_steps: int, samples: int, temperature: float) -> None:
        if n_steps < 0 or samples < 1 or not temperature > 0:
            raise ValueError(f"need n_steps >= 0, samples >= 1, temperature > 0; got {n_steps}, {samples}, {temperature}")

    # ---- training -------------------------------------------------------------------------
    @abstractmethod
    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> Any:
        """The state a lane starts with (carried between training chunks of the same episodes)."""

    @abstractmethod
    def state_batch_size(self, state: Any) -> int:
        """How many lanes a carried state holds."""

    @abstractmethod
    def forward(self, batch: Mapping[str, torch.Tensor], state: Any) -> Any:
        """One time-major chunk: an output with `loss` (scalar), `last_state` (to carry, detached by the
        caller) and `metrics` (name -> scalar tensor); `states` too for `has_latent` models."""

    @abstractmethod
    def eval_sums(self, batch: Mapping[str, torch.Tensor], mask: torch.Tensor, samples: int) -> EvalSums:
        """The learner's eval/* of whole episodes (time-major from their first step; mask [T, B] = real steps):
        nll_h1 and acc_h1 (each step forecast from the steps of its episode before it, first steps left out,
        `samples` draws where the forecast is sampled), loss_tokens, and what else the model measures."""

    # ---- reading utterances ---------------------------------------------------------------
    @abstractmethod
    def forecast(self, tokens: torch.Tensor, horizon: int, samples: int, starts: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Predictive distributions [N, horizon, G, K] of steps t+1..t+horizon after steps 0..t of one
        utterance (tokens [T, G]), for the N start steps t; h > 1 the mean over `samples` imagined futures."""

    @abstractmethod
    def imagine(self, prompt: torch.Tensor, n_steps: int, samples: int, temperature: float = 1.0,
                seed: int = 0) -> torch.Tensor:
        """Dreams [samples, n_steps, G]: continuations of the prompt [P, G] (an utterance's first P steps;
        P = 0 dreams from nothing). `temperature` divides the logits of every draw; same seed, same tokens."""

    @abstractmethod
    def mix(self, a: torch.Tensor, b: torch.Tensor, alphas: list[float], n_steps: int, temperature: float = 1.0,
            seed: int = 0) -> torch.Tensor:
        """One dream [len(alphas), n_steps, G] from each mixture (1 - alpha) A + alpha B of two prompts."""

    @abstractmethod
    def step_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """One feature vector per step [T, F] of an utterance read from its first step (what the model knows
        after that step), for t-SNE pictures and probes."""

    def end_probabilities(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Per step of an utterance read from its first step (tokens [T, G]), the probability [T] that it is the
        utterance's last: what lets a dream end. None: this model has no end-of-utterance head."""
        return None

    # ---- a latent to imagine from (has_latent) -------------------------------------------
    def imagine_latent(self, state: Any, action: torch.Tensor) -> Any:
        raise NotImplementedError(f"the {self.kind} world model has no latent state to imagine from")

    def latent_features(self, state: Any) -> torch.Tensor:
        raise NotImplementedError(f"the {self.kind} world model has no latent state to imagine from")

    def observe_step(self, state: Any, tokens: torch.Tensor, action: torch.Tensor) -> Any:
        raise NotImplementedError(f"the {self.kind} world model has no latent state to act from")


def bits_and_hits(probs: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(-log2 p(true), argmax == true) of token distributions [..., G, K] against tokens [..., G]."""
    p = probs.float().gather(-1, tokens.unsqueeze(-1)).squeeze(-1).clamp_min(1e-12)
    return -torch.log2(p), probs.argmax(-1) == tokens


def logit_bits_and_hits(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same from logits (exact log-softmax)."""
    logp = torch.log_softmax(logits.float(), -1)
    return -logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) / LN2, logp.argmax(-1) == tokens


class seeded:
    """Draw a model's samples on the global stream from a seed (Gumbel-max draws), then restore the stream."""

    def __init__(self, generator: torch.Generator | int | None):
        self.seed = generator if isinstance(generator, int) or generator is None else int(generator.initial_seed())

    def __enter__(self):
        if self.seed is not None:
            self.state = torch.random.get_rng_state()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.seed is not None:
            torch.random.set_rng_state(self.state)
        return False
