"""The RSSM world model (DreamerV2): token encoder + RSSM + token decoder + reward and terminal heads, its
loss, and how it reads utterances (filter through the posterior, then imagine with the prior).

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
import torch.nn.functional as F
from torch.profiler import record_function

from .conditioning import Vocabulary
from .base import IMAGINATIONS, EvalSums, WorldModel, bits_and_hits, seeded
from .contrastive import ContrastiveHead
from .decoders import ScalarHead, TokenDecoder
from .encoders import TokenEncoder
from .functions import LN2, categorical_kl
from .rssm import RSSM, RSSMLatent, State


class WorldModelOutput(NamedTuple):
    loss: torch.Tensor  # scalar: what the world-model optimizer minimizes
    states: State  # posterior states [T, B, ...] (with gradients)
    last_state: State  # carried to the next chunk of the same episodes (detach before use)
    prior_logits: torch.Tensor  # [T, B, S, D]: the horizon-1 prediction of each step
    post_logits: torch.Tensor  # [T, B, S, D]: what each step's observation made of it
    token_logits: torch.Tensor  # [T, B, G, K]: decoded from the posterior
    metrics: dict[str, torch.Tensor]


class RSSMWorldModel(RSSMLatent, WorldModel):
    kind = "rssm"
    arch_keys = ("token_embed_dim", "hidden_dim", "embed_dim", "deter_dim", "stoch_dim", "stoch_discrete",
                 "token_head", "forecast_head", "wm_objective", "contrastive_dim", "condition_heads")
    has_latent = True
    # Both ways (base.py): `latent` is what the overshoot loss trains the forecast head for (the better forecast past
    # h = 1 on val), `tokens` goes on from the tokens it drew (the better dreams on val): dream and evaluate choose.
    imaginations = IMAGINATIONS
    imagination = "latent"
    guides = True

    def __init__(self, conf: Mapping[str, Any], n_tokens: int, tokens_per_step: int, action_dim: int,
                 conditions: Vocabulary = ()):
        super().__init__(conf, n_tokens, tokens_per_step, action_dim, conditions)
        self.kl_balance = conf["kl_balance"]
        self.kl_weight = conf["kl_weight"]
        self.free_nats = conf["free_nats"]
        self.reward_weight = conf["reward_weight"]
        self.terminal_weight = conf["terminal_weight"]
        hidden = conf["hidden_dim"]
        self.encoder = TokenEncoder.from_conf(conf, n_tokens, tokens_per_step)
        self.rssm = RSSM(
            self.encoder.out_dim,
            self.action_input_dim,
            deter_dim=conf["deter_dim"],
            stoch_dim=conf["stoch_dim"],
            stoch_discrete=conf["stoch_discrete"],
            hidden_dim=hidden,
            condition_dim=self.head_condition_dim(conf),
        )
        feat = self.rssm.feature_dim
        self.decoder = TokenDecoder(feat, n_tokens, tokens_per_step, hidden_dim=hidden, head=conf["token_head"])
        # The forecast head reads the next step's tokens off the deterministic state alone (before the step's
        # stochastic state is drawn), so a forecast need not average over that draw: with a KL of ~8 nats per
        # step the decoder given one prior draw is sharp and often wrong, and a Monte-Carlo mean over a few
        # draws scores far worse than the model's actual predictive distribution.
        self.forecast_weight = conf["forecast_weight"]
        self.forecast_head = TokenDecoder(self.rssm.deter_dim + self.rssm.condition_dim, n_tokens, tokens_per_step,
                                          hidden_dim=hidden, head=conf["token_head"]) if conf["forecast_head"] else None
        self.overshoot_steps = conf["overshoot_steps"] if self.forecast_head is not None else 0
        self.overshoot_starts = conf["overshoot_starts"]
        self.objective = conf["wm_objective"]
        self.contrastive = ContrastiveHead(feat, self.encoder.out_dim, conf["contrastive_dim"],
                                           conf["contrastive_temperature"]) \
            if self.objective == "contrastive" else None
        self.contrastive_steps = conf["contrastive_steps"] if self.contrastive is not None else 0
        self.contrastive_weight = conf["contrastive_weight"]
        self.reward_head = ScalarHead(feat, hidden)
        self.terminal_head = ScalarHead(feat, hidden)

    def head_condition_dim(self, conf: Mapping[str, Any]) -> int:
        """Width of the condition the prior and the forecast head read beside h (`condition_heads`), else 0: the
        condition reaches them only through the GRU, where a dream from nothing must first write it into h."""
        return self.conditioning.dim if self.conditioning is not None and conf["condition_heads"] else 0

    def forward(self, batch: Mapping[str, torch.Tensor], state: State) -> WorldModelOutput:
        batch = self.conditioned_batch(batch)
        tokens = batch["tokens"]
        self.check_tokens(tokens)
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
        if self.forecast_head is not None:  # h_t has seen steps < t only: predicting step t from it is a forecast
            deter = states.deter.detach() if probe else states.deter
            loss_forecast = TokenDecoder.nll(self.forecast_head(self.rssm.with_condition(deter, batch["action"]), tokens),
                                             tokens).sum(-1).mean()
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
                read = self.rssm.with_condition(deter, action[t0 + k, b0])
                nll = TokenDecoder.nll(self.forecast_head(read, target), target).sum(-1)
                total = total + (nll * alive).sum()
                count = count + alive.sum()
            if k <= self.contrastive_steps:  # the step's true embedding sits at row (t0 + k) * B + b0 of keys
                loss, _ = self.contrastive.loss(RSSM.features(state), keys, (t0 + k) * B + b0,
                                                tokens.reshape(T * B, -1))
                nce = nce + (loss * alive).sum()
                nce_count = nce_count + alive.sum()
        return total / count.clamp_min(1), nce / nce_count.clamp_min(1)

    @torch.no_grad()
    def horizon1_probs(self, states: State, prior_logits: torch.Tensor, n_samples: int = 8,
                       action: torch.Tensor | None = None) -> torch.Tensor:
        """Predictive token probabilities one step ahead [T, B, G, K].

        Step t is predicted from h_t (which saw steps < t): by the forecast head, which reads h_t
        alone (exact when its tokens are independent; else averaged over `n_samples` draws of the
        step's earlier tokens), or else by the decoder of z_t drawn from the prior, averaged over
        `n_samples` draws. `action`: the steps' actions with their condition (the heads that read it).
        """
        if self.forecast_head is not None:
            n = n_samples if self.forecast_head.autoregressive else 1
            read = self.rssm.with_condition(states.deter, action)
            return sum(self.forecast_head.sample(read)[0] for _ in range(n)) / n
        probs = None
        for z in self.rssm.sample_prior(prior_logits, n_samples):
            p = self.decoder.sample(torch.cat([states.deter, z.to(states.deter.dtype)], -1))[0]
            probs = p if probs is None else probs + p
        return probs / n_samples

    def predict_tokens(self, state: State, action: torch.Tensor | None = None) -> torch.Tensor:
        """The model's forecast of the tokens of the step `state` stands for [*B, G, K], before they are seen
        (`action`: the one that led to it, with its condition)."""
        if self.forecast_head is not None:
            return self.forecast_head.sample(self.rssm.with_condition(state.deter, action))[0]
        return self.decoder.sample(RSSM.features(state))[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints from before the forecast head was named `forecast_head` call it `forecast`."""
        for key in [k for k in state_dict if k.startswith(prefix + "forecast.")]:
            state_dict[prefix + "forecast_head." + key[len(prefix + "forecast."):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- eval/* of whole episodes -----------------------------------------------------------
    def eval_sums(self, batch: Mapping[str, torch.Tensor], mask: torch.Tensor, samples: int) -> EvalSums:
        """nll_h1 and acc_h1: each step forecast from h_t (the forecast head, or else `samples` prior draws
        decoded and averaged), what model selection (best.pt) uses; elbo_h1: the step's negative ELBO per token
        (reconstruction + KL(posterior || prior), an upper bound on -log p(step's tokens | steps < t) jointly);
        loss_tokens: posterior reconstruction; first steps, which have no past, left out of the three."""
        tokens = batch["tokens"]
        G = tokens.shape[-1]
        batch = self.conditioned_batch(batch)  # forward's own (it leaves a conditioned batch as it is)
        out = self(batch, self.initial_state(tokens.shape[1], tokens.device))
        probs = self.horizon1_probs(out.states, out.prior_logits, samples, batch["action"])
        feats = RSSM.features(out.states)
        reward_pred = self.reward_head(feats).float()
        m1 = mask.clone()
        m1[0] = False
        logp = torch.log_softmax(out.token_logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        bits, hits = bits_and_hits(probs, tokens)
        kl = categorical_kl(out.post_logits, out.prior_logits)
        n, n1, steps = int(mask.sum()) * G, int(m1.sum()) * G, int(mask.sum())
        sums = {
            "loss_tokens": (float((-logp / LN2).sum(-1)[mask].sum()), n),
            "nll_h1": (float(bits.sum(-1)[m1].sum()), n1),
            "elbo_h1": (float(((-logp).sum(-1) + kl)[m1].sum() / LN2), n1),  # bounds the forecast's NLL from above
            "acc_h1": (float(hits.float().sum(-1)[m1].sum()), n1),
            "kl": (float(kl[mask].sum()), steps),
            "loss_reward": (0.5 * float((reward_pred - batch["reward"]).pow(2)[mask].sum()), steps),
        }
        return EvalSums(sums, feats)

    # ---- reading utterances -----------------------------------------------------------------
    def filter(self, tokens: torch.Tensor) -> State:
        """Posterior states [T, 1, ...] of one utterance (tokens [T, G]) filtered from the zero state, with the
        actions of its episode, as in training."""
        T = tokens.shape[0]
        device = tokens.device
        reset = torch.zeros(T, 1, dtype=torch.bool, device=device)
        reset[0] = True
        states, _, _, _ = self.rssm.observe(self.encoder(tokens.unsqueeze(1)), self.episode_actions(T, device), reset,
                                            self.initial_state(1, device))
        return states

    @torch.no_grad()
    def forecast(self, tokens: torch.Tensor, horizon: int, samples: int, starts: torch.Tensor,
                 generator: torch.Generator | None = None, chunk: int = 4096) -> torch.Tensor:
        """From the posterior after each start step, `samples` futures imagined with the prior; each step's
        forecast is the token heads' distribution, averaged over the futures."""
        with seeded(generator):
            states = self.filter(tokens)
            start = State(states.deter[starts, 0], states.stoch[starts, 0])  # posterior after step t
            out = []
            null = self.null_action(1, tokens.device)
            per = max(1, chunk // samples)
            for a in range(0, len(starts), per):
                s = State(*(x[a:a + per].repeat_interleave(samples, 0) for x in start))
                n = s.deter.shape[0] // samples
                steps = []
                for _ in range(horizon):
                    action = null.expand(s.deter.shape[0], -1)
                    if self.imagination == "tokens":
                        s, p, _ = self._token_step(s, action)
                    else:
                        s, _ = self.rssm.imagine_step(s, action)
                        p = self.predict_tokens(s, action)  # [n*S, G, K]
                    steps.append(p.reshape(n, samples, *p.shape[1:]).mean(1))
                out.append(torch.stack(steps, 1))
        return torch.cat(out, 0)

    @torch.no_grad()
    def imagine(self, prompt: torch.Tensor, n_steps: int, samples: int, temperature: float = 1.0,
                seed: int = 0) -> torch.Tensor:
        """From nothing: the initial (zero) state, its first step taken with no action, as at an episode's
        start. After a prompt: from the posterior after its last step. Then the prior, with the null action."""
        self.check_imagine(n_steps, samples, temperature)
        self.check_tokens(prompt)
        with seeded(int(seed)):
            if len(prompt) == 0:
                state = self.initial_state(samples, self.device)
            else:
                last = self.filter(prompt)
                state = State(*(x[-1].expand(samples, -1).contiguous() for x in last))
            return self._rollout(state, n_steps, temperature, first=len(prompt) == 0)

    @torch.no_grad()
    def mix(self, a: torch.Tensor, b: torch.Tensor, alphas: list[float], n_steps: int, temperature: float = 1.0,
            seed: int = 0) -> torch.Tensor:
        """The two prompts' last posterior states mixed linearly (deterministic part and the one-hot
        stochastic part: a relaxed state the networks read like any other)."""
        self.check_imagine(n_steps, 1, temperature)
        with seeded(int(seed)):
            sa, sb = (State(*(x[-1] for x in self.filter(p))) for p in (a, b))
            w = torch.tensor(alphas, dtype=sa.deter.dtype, device=sa.deter.device).unsqueeze(1)
            state = State((1 - w) * sa.deter + w * sb.deter, (1 - w) * sa.stoch + w * sb.stoch)
            return self._rollout(state, n_steps, temperature, first=False)

    def _rollout(self, state: State, n_steps: int, temperature: float, first: bool) -> torch.Tensor:
        """Imagine `n_steps` from `state` [N, ...]: tokens [N, n_steps, G]. `first`: the first step starts an
        episode (no action led to it). A guided dream (base.guided_lanes) carries each lane twice, conditioned and
        not, both reading the same draws."""
        N = state.deter.shape[0]
        lanes = self.guided_lanes(N)
        scale = None if lanes is None else self.conditioning.guidance
        if lanes is not None:
            state = State(*(torch.cat([x, x]) for x in state))
        out = []
        for i in range(n_steps):
            action = self.null_action(state.deter.shape[0], state.deter.device, first=first and i == 0, ids=lanes)
            if self.imagination == "tokens":
                state, _, tokens = self._token_step(state, action, temperature, scale)
            else:
                state, _ = self.rssm.imagine_step(state, action, temperature, scale)
                # the global generator: seeded
                tokens = self.decoder.sample(RSSM.features(state), temperature, scale)[1]
            out.append(tokens)
        if not out:
            return torch.zeros(N, 0, self.tokens_per_step, dtype=torch.long, device=state.deter.device)
        return torch.stack(out, 1)

    def _token_step(self, state: State, action: torch.Tensor, temperature: float = 1.0,
                    guidance: float | None = None) -> tuple[State, torch.Tensor, torch.Tensor]:
        """One step imagined through its tokens: (the state after reading them, the forecast they were drawn
        from [N, G, K], the tokens [N, G]). The forecast is the model's h = 1 prediction from the tokens so far;
        without a forecast head, the decoder of a prior draw. `guidance`: lanes [2N] as in `_rollout`."""
        prior, _ = self.rssm.imagine_step(state, action, temperature, guidance)
        head, read = (self.forecast_head, self.rssm.with_condition(prior.deter, action)) \
            if self.forecast_head is not None \
            else (self.decoder, RSSM.features(prior))
        probs, tokens = head.sample(read, temperature, guidance)
        heard = tokens if guidance is None else torch.cat([tokens, tokens])
        return self.rssm.posterior_step(prior.deter, self.encoder(heard)), probs, tokens

    @torch.no_grad()
    def step_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The posterior features [h, z] after each step."""
        return RSSM.features(self.filter(tokens))[:, 0]

    @torch.no_grad()
    def end_probabilities(self, tokens: torch.Tensor) -> torch.Tensor:
        """The terminal head on the posterior after each step (trained on the env's `terminal`: the last step)."""
        return torch.sigmoid(self.terminal_head(self.step_features(tokens)))

    # ---- the latent the actor-critic acts from (the rest: RSSMLatent) -------------------------
    def observe_step(self, state: State, tokens: torch.Tensor, action: torch.Tensor) -> State:
        """The posterior after one more observed step (tokens [B, G], the action [B, A] that led to it): how
        an agent acting in the env keeps its latent up to date."""
        reset = torch.zeros(1, tokens.shape[0], dtype=torch.bool, device=tokens.device)
        return self.rssm.observe(self.encoder(tokens.unsqueeze(0)), self.with_condition(action).unsqueeze(0), reset,
                                 state)[3]


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1).sum(-1)
