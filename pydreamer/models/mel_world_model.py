"""A DreamerV3-style RSSM over continuous log-mel steps (`observation: mel`, `world_model: mel_rssm`): no VQ step.

Each step is `time_downsample` log-mel frames x `n_mels` bins (z-scored with the corpus' statistics, so levels are
absolute), flattened to one vector x of D values. As in DreamerV3 (seed 004): x enters through symlog and an MLP
encoder; the RSSM is the project's (`rssm.py`), its categoricals mixed with `unimix` (1%) uniform; the KL is
DreamerV3's, 0.5 KL(sg(post) || prior) + 0.1 KL(post || sg(prior)), each clipped below at `free_nats` (1 nat) per
step (`kl_balance` 0.833 and `kl_weight` 0.6 in the project's keys: the `mel` section sets them).

The decoder is a Gaussian in symlog space with a learned scale per dimension, not DreamerV3's plain symlog MSE:
the mean is the same MSE fit, but with the scale it is a density, so the forecast has an NLL (nats per
dimension, with the symlog Jacobian, in the z-scored unit) that means what a token model's bits mean: how likely
the true step was. The scale is a parameter per dimension (not read off the state), which keeps the mean's
gradient as stable as the MSE's.

As for the token RSSM, a forecast head reads the next step off the deterministic state alone (what `evaluate`
and `eval/nll_h1` score at h = 1: no draw), trained k = 2..`overshoot_steps` steps ahead from prior-imagined
states too. Past h = 1 forecasts are `samples` futures imagined with the prior, read by the forecast head; the
mean forecast is their mean, the NLL that of their mixture. Dreams imagine with the prior and decode each step's
mean (a draw of the Gaussian would add white noise, not speech).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conditioning import Vocabulary
from .base import EvalSums, WorldModel, seeded
from .decoders import ScalarHead
from .functions import categorical_kl, mlp, symexp, symlog
from .rssm import RSSM, RSSMLatent, State

LOG_2PI = math.log(2 * math.pi)


class MelOutput(NamedTuple):
    loss: torch.Tensor
    states: State
    last_state: State
    prior_logits: torch.Tensor
    post_logits: torch.Tensor
    metrics: dict[str, torch.Tensor]


class GaussianHead(nn.Module):
    """A Gaussian over symlog(x) [*B, D]: the mean from the input, a learned log-scale per dimension."""

    def __init__(self, in_dim: int, hidden_dim: int, dim: int):
        super().__init__()
        self.mean = mlp(in_dim, hidden_dim, dim, layers=2)
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(x).float()

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(-5.0, 2.0)

    def nll(self, mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) per dimension [*B, D], in nats, in x's unit (the symlog Jacobian log(1 + |x|) included)."""
        log_scale = self.scale()
        z = (symlog(x.float()) - mean) * torch.exp(-log_scale)
        return 0.5 * z.pow(2) + log_scale + 0.5 * LOG_2PI + torch.log1p(x.float().abs())


class MelRSSMWorldModel(RSSMLatent, WorldModel):
    kind = "mel_rssm"
    observes: ClassVar[str] = "mel"
    arch_keys = ("hidden_dim", "embed_dim", "deter_dim", "stoch_dim", "stoch_discrete", "unimix", "time_downsample",
                 "n_mels")
    has_latent = True
    imaginations = ("latent",)
    imagination = "latent"

    def __init__(self, conf: Mapping[str, Any], n_tokens: int, tokens_per_step: int, action_dim: int,
                 conditions: Vocabulary = ()):
        super().__init__(conf, n_tokens, tokens_per_step, action_dim, conditions)
        self.mel_dim = int(conf["time_downsample"]) * int(conf["n_mels"])
        self.kl_balance, self.kl_weight, self.free_nats = conf["kl_balance"], conf["kl_weight"], conf["free_nats"]
        self.reward_weight, self.terminal_weight = conf["reward_weight"], conf["terminal_weight"]
        self.forecast_weight, self.overshoot_steps = conf["forecast_weight"], conf["overshoot_steps"]
        self.overshoot_starts = conf["overshoot_starts"]
        hidden = conf["hidden_dim"]
        self.encoder = mlp(self.mel_dim, hidden, conf["embed_dim"], layers=2)
        self.rssm = RSSM(conf["embed_dim"], self.action_input_dim, conf["deter_dim"], conf["stoch_dim"], conf["stoch_discrete"],
                         hidden, unimix=conf["unimix"])
        feat = self.rssm.feature_dim
        self.decoder = GaussianHead(feat, hidden, self.mel_dim)
        self.forecast_head = GaussianHead(self.rssm.deter_dim, hidden, self.mel_dim)
        self.reward_head = ScalarHead(feat, hidden)
        self.terminal_head = ScalarHead(feat, hidden)

    def as_observation(self, x) -> torch.Tensor:
        return self.as_steps(x)

    def as_steps(self, x) -> torch.Tensor:
        """A prompt or utterance of log-mel steps as float32 [T, D] on the model's device (None: no steps)."""
        if x is None:
            return torch.zeros(0, self.mel_dim, device=self.device)
        t = torch.as_tensor(x).to(device=self.device, dtype=torch.float32)
        if t.dim() != 2 or t.shape[1] != self.mel_dim:
            raise ValueError(f"log-mel steps must be [T, {self.mel_dim}] (time_downsample x n_mels), got {tuple(t.shape)}")
        return t

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor], state: State) -> MelOutput:
        batch = self.conditioned_batch(batch)
        x = batch["mel"].float()
        embed = self.encoder(symlog(x))
        states, post, prior, last = self.rssm.observe(embed, batch["action"], batch["reset"].bool(), state)
        features = RSSM.features(states)
        loss_recon = self.decoder.nll(self.decoder(features), x).sum(-1).mean()
        loss_forecast = self.forecast_head.nll(self.forecast_head(states.deter), x).sum(-1).mean()
        loss_overshoot = self._overshoot(states, x, batch["action"], batch["reset"].bool())
        loss_reward = 0.5 * (self.reward_head(features) - batch["reward"].float()).pow(2).mean()
        loss_terminal = F.binary_cross_entropy_with_logits(self.terminal_head(features), batch["terminal"].float())
        kl_dyn = categorical_kl(post.detach(), prior)  # [T, B]: the prior learns the posterior
        kl_rep = categorical_kl(post, prior.detach())  # the posterior stays predictable
        free = self.free_nats
        loss_kl = self.kl_balance * kl_dyn.clamp(min=free).mean() + (1 - self.kl_balance) * kl_rep.clamp(min=free).mean()
        loss = (loss_recon + self.forecast_weight * (loss_forecast + loss_overshoot) + self.reward_weight * loss_reward
                + self.terminal_weight * loss_terminal + self.kl_weight * loss_kl)
        D = self.mel_dim
        with torch.no_grad():
            metrics = {"loss_model": loss.detach(), "loss_mel": loss_recon.detach() / D,  # nats per dimension
                       "loss_forecast": loss_forecast.detach() / D, "loss_overshoot": loss_overshoot.detach() / D,
                       "loss_reward": loss_reward.detach(), "loss_terminal": loss_terminal.detach(),
                       "kl": kl_dyn.mean().detach(), "mel_scale": self.decoder.scale().exp().mean().detach()}
        return MelOutput(loss, states, last, prior, post, metrics)

    def _overshoot(self, states: State, x: torch.Tensor, action: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        """The forecast head's NLL of step t+k from the state the prior imagined k = 2..overshoot_steps steps past
        t (random starts; a rollout stops counting at an episode boundary): what h > 1 forecasts read."""
        T, B = x.shape[:2]
        K = min(self.overshoot_steps, T - 1)
        if K < 2:
            return torch.zeros((), device=x.device)
        t0 = torch.randint(0, T - K, (self.overshoot_starts,), device=x.device)
        b0 = torch.randint(0, B, (self.overshoot_starts,), device=x.device)
        state = State(states.deter[t0, b0], states.stoch[t0, b0])
        alive = torch.ones_like(t0, dtype=torch.bool)
        total = count = torch.zeros((), device=x.device)
        for k in range(1, K + 1):
            state, _ = self.rssm.imagine_step(state, action[t0 + k, b0])
            alive = alive & ~reset[t0 + k, b0]
            if k >= 2:
                nll = self.forecast_head.nll(self.forecast_head(state.deter), x[t0 + k, b0]).sum(-1)
                total, count = total + (nll * alive).sum(), count + alive.sum()
        return total / count.clamp_min(1)

    @torch.no_grad()
    def eval_sums(self, batch: Mapping[str, torch.Tensor], mask: torch.Tensor, samples: int) -> EvalSums:
        """nll_h1: nats per dimension of each step under the forecast head (from the steps before it; first steps
        left out), what best.pt keeps; mse_h1: of its mean, per dimension (z-scored unit); loss_mel: the
        posterior's reconstruction NLL."""
        x = batch["mel"].float()
        out = self(batch, self.initial_state(x.shape[1], x.device))
        features = RSSM.features(out.states)
        m1 = mask.clone()
        m1[0] = False
        mean = self.forecast_head(out.states.deter)
        nll = self.forecast_head.nll(mean, x).sum(-1)
        se = (symexp(mean) - x).pow(2).sum(-1)
        recon = self.decoder.nll(self.decoder(features), x).sum(-1)
        D, n1, n = self.mel_dim, int(m1.sum()), int(mask.sum())
        sums = {"nll_h1": (float(nll[m1].sum()), n1 * D), "mse_h1": (float(se[m1].sum()), n1 * D),
                "loss_mel": (float(recon[mask].sum()), n * D),
                "kl": (float(categorical_kl(out.post_logits, out.prior_logits)[mask].sum()), n)}
        return EvalSums(sums, features)

    # ---- reading utterances --------------------------------------------------------------------
    def filter(self, steps: torch.Tensor) -> State:
        """Posterior states [T, 1, ...] of one utterance [T, D] from the zero state, as in training."""
        T, device = steps.shape[0], steps.device
        reset = torch.zeros(T, 1, dtype=torch.bool, device=device)
        reset[0] = True
        embed = self.encoder(symlog(steps.unsqueeze(1)))
        return self.rssm.observe(embed, self.episode_actions(T, device), reset, self.initial_state(1, device))[0]

    def forecast(self, tokens, horizon, samples, starts, generator=None):
        raise TypeError("the mel_rssm world model observes log-mel steps, not tokens: use forecast_mel")

    @torch.no_grad()
    def forecast_mel(self, steps: torch.Tensor, horizon: int, samples: int, starts: torch.Tensor,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """After each start t of one utterance (steps [T, D]): the mean forecasts [N, H, D] of steps t+1..t+H
        (z-scored unit) and the NLL [N, H] (nats per dimension) of the true steps under the forecast (a mixture
        over `samples` imagined futures for h > 1; NaN past the utterance's end)."""
        steps = self.as_steps(steps)
        T = steps.shape[0]
        with seeded(generator):
            states = self.filter(steps)
            s = State(*(x[starts, 0].repeat_interleave(samples, 0) for x in states))
            N = len(starts)
            means, nlls = [], []
            null = self.null_action(N * samples, steps.device)
            for h in range(1, horizon + 1):
                s, _ = self.rssm.imagine_step(s, null)  # its deterministic part has seen steps <= t + h - 1
                mean = self.forecast_head(s.deter)
                target = steps[(starts + h).clamp(max=T - 1)].repeat_interleave(samples, 0)
                nll = self.forecast_head.nll(mean, target).sum(-1).reshape(N, samples)
                mixture = -(torch.logsumexp(-nll, 1) - math.log(samples)) / self.mel_dim
                nlls.append(torch.where((starts + h) < T, mixture, torch.full_like(mixture, float("nan"))))
                means.append(symexp(mean).reshape(N, samples, -1).mean(1))
        return torch.stack(means, 1), torch.stack(nlls, 1)

    @torch.no_grad()
    def imagine(self, prompt: torch.Tensor, n_steps: int, samples: int, temperature: float = 1.0,
                seed: int = 0) -> torch.Tensor:
        """Dreams [samples, n_steps, D] (z-scored log-mel steps): from the initial state (P = 0) or the posterior
        after the prompt [P, D]; the prior imagines each state (its logits divided by `temperature`) and the
        decoder gives the step's mean."""
        self.check_imagine(n_steps, samples, temperature)
        prompt = self.as_steps(prompt)
        with seeded(int(seed)):
            if len(prompt) == 0:
                state = self.initial_state(samples, self.device)
            else:
                state = State(*(x[-1].expand(samples, -1).contiguous() for x in self.filter(prompt)))
            return self._rollout(state, n_steps, temperature, first=len(prompt) == 0)

    @torch.no_grad()
    def mix(self, a: torch.Tensor, b: torch.Tensor, alphas: list[float], n_steps: int, temperature: float = 1.0,
            seed: int = 0) -> torch.Tensor:
        """The two prompts' last posterior states mixed linearly, as the token RSSM does."""
        self.check_imagine(n_steps, 1, temperature)
        with seeded(int(seed)):
            sa, sb = (State(*(x[-1] for x in self.filter(self.as_steps(p)))) for p in (a, b))
            w = torch.tensor(alphas, dtype=sa.deter.dtype, device=sa.deter.device).unsqueeze(1)
            state = State((1 - w) * sa.deter + w * sb.deter, (1 - w) * sa.stoch + w * sb.stoch)
            return self._rollout(state, n_steps, temperature, first=False)

    def _rollout(self, state: State, n_steps: int, temperature: float, first: bool) -> torch.Tensor:
        N = state.deter.shape[0]
        out = []
        for i in range(n_steps):
            state, _ = self.rssm.imagine_step(state, self.null_action(N, state.deter.device, first=first and i == 0),
                                              temperature)
            out.append(symexp(self.decoder(RSSM.features(state))))
        return torch.stack(out, 1) if out else torch.zeros(N, 0, self.mel_dim, device=state.deter.device)

    @torch.no_grad()
    def step_features(self, steps: torch.Tensor) -> torch.Tensor:
        """The posterior features [h, z] after each step."""
        return RSSM.features(self.filter(self.as_steps(steps)))[:, 0]

    @torch.no_grad()
    def end_probabilities(self, steps: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.terminal_head(self.step_features(steps)))

    # ---- the latent the actor-critic acts from (the rest: RSSMLatent) -------------------------
    def observe_step(self, state: State, steps: torch.Tensor, action: torch.Tensor) -> State:
        """The posterior after one more observed step (log-mel [B, D])."""
        reset = torch.zeros(1, steps.shape[0], dtype=torch.bool, device=steps.device)
        embed = self.encoder(symlog(steps.float().unsqueeze(0)))
        return self.rssm.observe(embed, self.with_condition(action).unsqueeze(0), reset, state)[3]
