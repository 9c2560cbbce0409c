"""The world model: token encoder + RSSM + token decoder + reward and terminal heads, and its loss.

`wm_objective` says what trains the latent (encoder + RSSM): `reconstruction` (DreamerV2) decodes each
step's tokens from its features and forecasts them from the deterministic state; `contrastive`
(Dreaming V2 style) uses InfoNCE between the features and the encoder's embedding of the same step
(contrastive.py) instead, and the token heads become probes on detached features: they are trained
alike in both, so evaluation and dreams read both models the same way, but in the contrastive
objective no token-prediction gradient reaches the representation.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from .contrastive import ContrastiveHead
from .decoders import ScalarHead, TokenDecoder
from .encoders import TokenEncoder
from .functions import LN2, categorical_kl
from .rssm import RSSM, State


class WorldModelOutput(NamedTuple):
    loss: torch.Tensor  # scalar: what the world-model optimizer minimizes
    states: State  # posterior states [T, B, ...] (with gradients)
    last_state: State  # carried to the next chunk of the same episodes (detach before use)
    prior_logits: torch.Tensor  # [T, B, S, D]: the horizon-1 prediction of each step
    post_logits: torch.Tensor  # [T, B, S, D]: what each step's observation made of it
    token_logits: torch.Tensor  # [T, B, G, K]: decoded from the posterior
    metrics: dict[str, torch.Tensor]


class WorldModel(nn.Module):
    def __init__(self, conf: Mapping[str, Any], n_tokens: int, tokens_per_step: int, action_dim: int):
        super().__init__()
        self.n_tokens = n_tokens
        self.tokens_per_step = tokens_per_step
        self.action_dim = action_dim
        self.kl_balance = float(conf["kl_balance"])
        self.kl_weight = float(conf["kl_weight"])
        self.free_nats = float(conf["free_nats"])
        self.reward_weight = float(conf["reward_weight"])
        self.terminal_weight = float(conf["terminal_weight"])
        hidden = int(conf["hidden_dim"])
        self.encoder = TokenEncoder.from_conf(conf, n_tokens, tokens_per_step)
        self.rssm = RSSM(
            self.encoder.out_dim,
            action_dim,
            deter_dim=int(conf["deter_dim"]),
            stoch_dim=int(conf["stoch_dim"]),
            stoch_discrete=int(conf["stoch_discrete"]),
            hidden_dim=hidden,
        )
        feat = self.rssm.feature_dim
        self.decoder = TokenDecoder(feat, n_tokens, tokens_per_step, hidden_dim=hidden, head=conf["token_head"])
        # The forecast head reads the next step's tokens off the deterministic state alone (before the step's
        # stochastic state is drawn), so a forecast need not average over that draw: with a KL of ~8 nats per
        # step the decoder given one prior draw is sharp and often wrong, and a Monte-Carlo mean over a few
        # draws scores far worse than the model's actual predictive distribution.
        self.forecast_weight = float(conf["forecast_weight"])
        self.forecast = TokenDecoder(self.rssm.deter_dim, n_tokens, tokens_per_step, hidden_dim=hidden,
                                     head=conf["token_head"]) if conf["forecast_head"] else None
        self.overshoot_steps = int(conf["overshoot_steps"]) if self.forecast is not None else 0
        self.overshoot_starts = int(conf["overshoot_starts"])
        self.objective = conf["wm_objective"]
        self.contrastive = ContrastiveHead(feat, self.encoder.out_dim, int(conf["contrastive_dim"]),
                                           float(conf["contrastive_temperature"])) \
            if self.objective == "contrastive" else None
        self.contrastive_steps = int(conf["contrastive_steps"]) if self.contrastive is not None else 0
        self.contrastive_weight = float(conf["contrastive_weight"])
        self.reward_head = ScalarHead(feat, hidden)
        self.terminal_head = ScalarHead(feat, hidden)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        return self.rssm.initial_state(batch_size, device)

    def forward(self, batch: Mapping[str, torch.Tensor], state: State) -> WorldModelOutput:
        tokens = batch["tokens"]
        if tokens.min() < 0 or tokens.max() >= self.n_tokens:
            raise ValueError(
                f"token ids must lie in [0, {self.n_tokens}); got {int(tokens.min())}..{int(tokens.max())}"
                " (does the model's codebook size match the data's?)"
            )
        embed = self.encoder(tokens)
        with record_function("world_model/observe"):
            states, post, prior, last = self.rssm.observe(embed, batch["action"], batch["reset"].bool(), state)
        features = RSSM.features(states)
        probe = self.contrastive is not None  # token heads see detached features: they read the latent, not train it
        with record_function("world_model/decoder"):
            token_logits = self.decoder(features.detach() if probe else features, tokens)
        nll = TokenDecoder.nll(token_logits, tokens)  # [T, B, G] nats
        loss_tokens = nll.sum(-1).mean()
        reward_pred = self.reward_head(features)
        loss_reward = 0.5 * (reward_pred - batch["reward"].float()).pow(2).mean()
        terminal_logit = self.terminal_head(features)
        loss_terminal = F.binary_cross_entropy_with_logits(terminal_logit, batch["terminal"].float())
        # KL balancing: train the prior toward the posterior faster than the reverse.
        kl_prior = categorical_kl(post.detach(), prior).mean()
        kl_post = categorical_kl(post, prior.detach()).mean()
        free = self.free_nats
        loss_kl = self.kl_balance * kl_prior.clamp(min=free) + (1 - self.kl_balance) * kl_post.clamp(min=free)
        zero = torch.zeros((), device=loss_tokens.device)
        loss_forecast = zero
        if self.forecast is not None:  # h_t has seen steps < t only: predicting step t from it is a forecast
            deter = states.deter.detach() if probe else states.deter
            loss_forecast = TokenDecoder.nll(self.forecast(deter, tokens), tokens).sum(-1).mean()
        nce = {"same": zero, "acc": zero, "multi": zero}
        if probe:  # the positive of step (t, b) is its own embedding; every other step of the batch is a negative
            keys = self.contrastive.keys(embed)
            loss, hit = self.contrastive.loss(features.reshape(-1, features.shape[-1]), keys,
                                              torch.arange(keys.shape[0], device=keys.device),
                                              tokens.reshape(-1, tokens.shape[-1]))
            nce.update(same=loss.mean(), acc=hit.float().mean())
        loss_overshoot = zero
        if (self.overshoot_steps > 1 or self.contrastive_steps >= 1) and tokens.shape[0] > 2:
            with record_function("world_model/overshoot"):
                loss_overshoot, nce["multi"] = self._overshoot(states, tokens, embed, batch["action"],
                                                               batch["reset"].bool())
        loss = (
            loss_tokens
            + self.forecast_weight * (loss_forecast + loss_overshoot)
            + self.contrastive_weight * (nce["same"] + nce["multi"])
            + self.reward_weight * loss_reward
            + self.terminal_weight * loss_terminal
            + self.kl_weight * loss_kl
        )
        with torch.no_grad():
            metrics = {
                "loss_model": loss.detach(),
                "loss_tokens": nll.mean() / LN2,  # bits per token
                "loss_forecast": loss_forecast.detach() / LN2 / tokens.shape[-1],  # bits per token
                "loss_overshoot": loss_overshoot.detach() / LN2 / tokens.shape[-1],
                "acc_tokens": (token_logits.argmax(-1) == tokens).float().mean(),
                "loss_reward": loss_reward.detach(),
                "loss_terminal": loss_terminal.detach(),
                "kl": kl_prior.detach(),
                "entropy_prior": _entropy(prior).mean(),
                "entropy_post": _entropy(post).mean(),
            }
            if probe:
                metrics.update({"loss_contrastive": nce["same"].detach(), "acc_contrastive": nce["acc"],
                                "loss_contrastive_multi": nce["multi"].detach(),
                                "contrastive_temperature": self.contrastive.temperature.detach()})
        return WorldModelOutput(loss, states, last, prior, post, token_logits, metrics)

    def _overshoot(self, states: State, tokens: torch.Tensor, embed: torch.Tensor, action: torch.Tensor,
                   reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses k steps ahead from states imagined with the prior: (forecast head, k = 2..overshoot_steps;
        InfoNCE of the imagined features against the true embeddings at t+k, k = 1..contrastive_steps).

        Evaluation asks the forecast head for step t+k from a state the prior imagined k steps past the
        last observation; trained on observed states alone (k = 1) it sees no such state, and its
        forecasts fall below the unigram by h = 5. The multi-step InfoNCE is what makes a contrastive
        prior predict. Starts are `overshoot_starts` random (t, b) of the batch; a rollout stops
        counting at an episode boundary. In the contrastive objective the forecast head is a probe.
        """
        T, B = tokens.shape[:2]
        K = min(max(self.overshoot_steps, self.contrastive_steps), T - 1)
        n = self.overshoot_starts
        t0 = torch.randint(0, T - K, (n,), device=tokens.device)
        b0 = torch.randint(0, B, (n,), device=tokens.device)
        state = State(states.deter[t0, b0], states.stoch[t0, b0])
        alive = torch.ones(n, dtype=torch.bool, device=tokens.device)
        zero = torch.zeros((), device=tokens.device)
        total, count, nce, nce_count = zero, zero, zero, zero
        keys = self.contrastive.keys(embed) if self.contrastive_steps else None
        for k in range(1, K + 1):
            state, _ = self.rssm.imagine_step(state, action[t0 + k, b0])
            alive = alive & ~reset[t0 + k, b0]
            if 2 <= k <= self.overshoot_steps:  # k = 1 is the observed path's forecast loss already
                target = tokens[t0 + k, b0]
                deter = state.deter.detach() if self.contrastive is not None else state.deter
                nll = TokenDecoder.nll(self.forecast(deter, target), target).sum(-1)
                total = total + (nll * alive).sum()
                count = count + alive.sum()
            if k <= self.contrastive_steps:  # the step's true embedding sits at row (t0 + k) * B + b0 of keys
                loss, _ = self.contrastive.loss(RSSM.features(state), keys, (t0 + k) * B + b0,
                                                tokens.reshape(T * B, -1))
                nce = nce + (loss * alive).sum()
                nce_count = nce_count + alive.sum()
        return total / count.clamp_min(1), nce / nce_count.clamp_min(1)

    @torch.no_grad()
    def horizon1_probs(self, states: State, prior_logits: torch.Tensor, n_samples: int = 8) -> torch.Tensor:
        """Predictive token probabilities one step ahead [T, B, G, K].

        Step t is predicted from h_t (which saw steps < t): by the forecast head, which reads h_t
        alone (exact when its tokens are independent; else averaged over `n_samples` draws of the
        step's earlier tokens), or else by the decoder of z_t drawn from the prior, averaged over
        `n_samples` draws.
        """
        if self.forecast is not None:
            n = n_samples if self.forecast.autoregressive else 1
            return sum(self.forecast.sample(states.deter)[0] for _ in range(n)) / n
        probs = None
        for z in self.rssm.sample_prior(prior_logits, n_samples):
            p = self.decoder.sample(torch.cat([states.deter, z.to(states.deter.dtype)], -1))[0]
            probs = p if probs is None else probs + p
        return probs / n_samples

    def predict_tokens(self, state: State) -> torch.Tensor:
        """The model's forecast of the tokens of the step `state` stands for [*B, G, K], before they are seen."""
        if self.forecast is not None:
            return self.forecast.sample(state.deter)[0]
        return self.decoder.sample(RSSM.features(state))[0]


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1).sum(-1)
