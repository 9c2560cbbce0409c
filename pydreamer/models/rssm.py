"""Recurrent state-space model: a GRU deterministic state plus a categorical stochastic state.

One step: h_t = GRU(h_{t-1}, [z_{t-1}, a_t]); prior p(z_t | h_t); posterior q(z_t | h_t, e_t).
The prior alone lets the model dream (imagine steps without observations); the posterior
filters the observed utterance. The state is the pair (h, z); features are [h, z].
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from .functions import LayerNormGRUCell, guided_logits, mlp, sample_one_hot


class State(NamedTuple):
    deter: torch.Tensor  # [*B, deter_dim]
    stoch: torch.Tensor  # [*B, stoch_dim * stoch_discrete] (concatenated one-hots)


class RSSM(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        action_dim: int,
        deter_dim: int,
        stoch_dim: int,
        stoch_discrete: int,
        hidden_dim: int,
        unimix: float = 0.0,
        condition_dim: int = 0,
    ):
        super().__init__()
        # The prior also reads the condition's embedding (the last `condition_dim` of each action), not only
        # through the GRU: a conditioned dream's every draw sees what it was asked for.
        self.condition_dim = int(condition_dim)
        self.unimix = float(unimix)  # DreamerV3: each categorical mixed with 1% uniform, so no class is ever impossible
        self.deter_dim = deter_dim
        self.stoch_dim = stoch_dim
        self.stoch_discrete = stoch_discrete
        self.stoch_size = stoch_dim * stoch_discrete
        self.action_dim = action_dim
        self.img_in = nn.Sequential(
            nn.Linear(self.stoch_size + action_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ELU()
        )
        self.gru = LayerNormGRUCell(hidden_dim, deter_dim)
        self.prior_net = mlp(deter_dim + self.condition_dim, hidden_dim, self.stoch_size, layers=1)
        self.post_net = mlp(deter_dim + embed_dim, hidden_dim, self.stoch_size, layers=1)

    @property
    def feature_dim(self) -> int:
        return self.deter_dim + self.stoch_size

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        return State(
            torch.zeros(batch_size, self.deter_dim, device=device),
            torch.zeros(batch_size, self.stoch_size, device=device),
        )

    @staticmethod
    def features(state: State) -> torch.Tensor:
        return torch.cat([state.deter, state.stoch], -1)

    def _logits(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = net(x).reshape(*x.shape[:-1], self.stoch_dim, self.stoch_discrete)
        if self.unimix > 0:
            probs = (1 - self.unimix) * torch.softmax(logits.float(), -1) + self.unimix / self.stoch_discrete
            logits = torch.log(probs)
        return logits

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        return sample_one_hot(logits).reshape(*logits.shape[:-2], self.stoch_size)

    def deter_step(self, state: State, action: torch.Tensor) -> torch.Tensor:
        x = self.img_in(torch.cat([state.stoch, action.to(state.stoch.dtype)], -1))
        return self.gru(x, state.deter)

    def prior_logits(self, deter: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """The prior over z given h (and, with `condition_dim`, the condition carried by `action`)."""
        return self._logits(self.prior_net, self.with_condition(deter, action))

    def with_condition(self, x: torch.Tensor, action: torch.Tensor | None) -> torch.Tensor:
        """x [..., D] with the condition part of `action` appended when the prior reads it (else x)."""
        if not self.condition_dim:
            return x
        if action is None:
            raise ValueError("this RSSM's prior reads the condition: pass the step's action")
        return torch.cat([x, action[..., -self.condition_dim:].to(x.dtype)], -1)

    def imagine_step(self, state: State, action: torch.Tensor, temperature: float = 1.0,
                     guidance: float | None = None) -> tuple[State, torch.Tensor]:
        """One dreamed step: the next state drawn from the prior (sharpened or flattened by `temperature`
        for dreams). Returns (state, prior logits). With `guidance`, the lanes are N conditioned then the same N
        unconditioned (a guided dream) and each pair shares one draw from the guided prior."""
        deter = self.deter_step(state, action)
        logits = self.prior_logits(deter, action)
        if guidance is not None:
            stoch = self._sample(guided_logits(logits, guidance) / temperature)
            return State(deter, torch.cat([stoch, stoch])), logits
        return State(deter, self._sample(logits if temperature == 1.0 else logits / temperature)), logits

    def posterior_logits(self, deter: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        return self._logits(self.post_net, torch.cat([deter, embed.to(deter.dtype)], -1))

    def posterior_step(self, deter: torch.Tensor, embed: torch.Tensor) -> State:
        """The state after a step whose deterministic part is `deter` and whose observation embeds to `embed`
        (z drawn from the posterior): how an imagined step's own tokens are read back as if heard."""
        return State(deter, self._sample(self.posterior_logits(deter, embed)))

    def observe(
        self, embed: torch.Tensor, action: torch.Tensor, reset: torch.Tensor, state: State
    ) -> tuple[State, torch.Tensor, torch.Tensor, State]:
        """Filter a time-major sequence.

        embed [T, B, E], action [T, B, A], reset bool [T, B] (zero the state before that step),
        state: the state carried from the previous chunk.
        Returns (posterior states stacked [T, B, ...], posterior logits, prior logits, last state).
        """
        deters, stochs, posts, priors = [], [], [], []
        for t in range(embed.shape[0]):
            keep = (~reset[t]).to(state.deter.dtype).unsqueeze(-1)
            state = State(state.deter * keep, state.stoch * keep)
            deter = self.deter_step(state, action[t])
            prior = self.prior_logits(deter, action[t])
            post = self.posterior_logits(deter, embed[t])
            state = State(deter, self._sample(post))
            deters.append(deter)
            stochs.append(state.stoch)
            posts.append(post)
            priors.append(prior)
        states = State(torch.stack(deters), torch.stack(stochs))
        return states, torch.stack(posts), torch.stack(priors), state

    def sample_prior(self, prior_logits: torch.Tensor, n: int) -> torch.Tensor:
        """n stochastic states from prior logits [*B, S, D] -> [n, *B, S*D] (no gradient)."""
        with torch.no_grad():
            logits = prior_logits.unsqueeze(0).expand(n, *prior_logits.shape)
            return sample_one_hot(logits, straight_through=False).reshape(n, *prior_logits.shape[:-2], self.stoch_size)


class RSSMLatent:
    """What a world model built on an `RSSM` (as `self.rssm`) offers from it alone: the state a lane starts with and
    the latent the actor-critic imagines from. One piece for the token RSSM and the log-mel RSSM; put it before
    `WorldModel` among the bases."""

    rssm: RSSM

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        return self.rssm.initial_state(batch_size, device)

    def state_batch_size(self, state: State) -> int:
        return state.deter.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.rssm.feature_dim

    def imagine_latent(self, state: State, action: torch.Tensor) -> State:
        return self.rssm.imagine_step(state, self.with_condition(action))[0]

    def latent_features(self, state: State) -> torch.Tensor:
        return RSSM.features(state)
