"""Actor-critic trained in imagination (DreamerV2): dream `imag_horizon` steps from every
posterior state, score them with lambda-returns of the predicted reward, and fit
a critic (value) and an actor (policy) on those dreams.

With the audio env the action is the null Discrete(1) action and the reward is voice
activity, so the critic's value is a forecast of discounted upcoming speech.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
import torch.nn as nn

from .decoders import ScalarHead
from .base import WorldModel
from .functions import lambda_returns, map_state, mlp, sample_one_hot


class ActorCritic(nn.Module):
    def __init__(self, conf: Mapping[str, Any], feature_dim: int, action_dim: int):
        super().__init__()
        hidden = conf["hidden_dim"]
        self.action_dim = action_dim
        self.horizon = conf["imag_horizon"]
        self.gamma = conf["gamma"]
        self.lambda_ = conf["lambda_gae"]
        self.entropy_weight = conf["actor_ent"]
        self.grad_mix = conf["actor_grad_mix"]  # 1 = reinforce, 0 = dynamics gradients
        self.actor = mlp(feature_dim, hidden, action_dim, layers=2)
        self.critic = ScalarHead(feature_dim, hidden)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)

    @property
    def trains_actor(self) -> bool:
        """A single (null) action leaves nothing for the actor to learn."""
        return self.action_dim > 1

    def policy_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.actor(features).float()

    def update_target(self) -> None:
        self.critic_target.load_state_dict(self.critic.state_dict())

    def imagine(self, world_model: WorldModel, start: Any, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Dream `horizon` steps with the actor from start states [N, ...].

        Returns features [H+1, N, F] (index 0 = start) and the one-hot actions [H, N, A]
        taken in states 0..H-1.
        """
        state = start
        feats = [world_model.latent_features(state)]
        actions = []
        with torch.set_grad_enabled(with_grad):
            for _ in range(self.horizon):
                if self.trains_actor:
                    action = sample_one_hot(self.policy_logits(feats[-1].detach()))
                else:
                    action = torch.ones(feats[-1].shape[0], 1, device=feats[-1].device)
                state = world_model.imagine_latent(state, action)
                feats.append(world_model.latent_features(state))
                actions.append(action)
        return torch.stack(feats), torch.stack(actions)

    def forward(self, world_model: WorldModel, start: Any, start_terminal: torch.Tensor):
        """`losses`: the one forward of a step, so that DistributedDataParallel can wrap the actor-critic."""
        return self.losses(world_model, start, start_terminal)

    def losses(
        self, world_model: WorldModel, start: Any, start_terminal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(actor loss, critic loss, metrics) from dreams starting at the detached states `start`."""
        start = map_state(lambda x: x.detach(), start)
        dynamics = self.trains_actor and self.grad_mix < 1.0
        feats, actions = self.imagine(world_model, start, with_grad=dynamics)
        with torch.set_grad_enabled(dynamics):
            reward = world_model.reward_head(feats[1:])  # [H, N]
            cont = 1.0 - torch.sigmoid(world_model.terminal_head(feats[1:]))
            value_target = self.critic_target(feats)  # [H+1, N]
            returns = lambda_returns(reward, value_target, self.gamma * cont, self.lambda_)  # [H, N]
        # A dream continues from state i only if no earlier state ended the episode.
        alive = torch.cat([(1.0 - start_terminal.float()).unsqueeze(0), cont[:-1].detach()], 0)
        weights = torch.cumprod(alive, 0).detach()

        value = self.critic(feats[:-1].detach())
        loss_critic = (0.5 * (value - returns.detach()).pow(2) * weights).mean()

        metrics = {
            "imag_reward": reward.detach().mean(),
            "imag_return": returns.detach().mean(),
            "imag_value": value.detach().mean(),
        }
        if self.trains_actor:
            logits = self.policy_logits(feats[:-1].detach())
            logp_all = torch.log_softmax(logits, -1)
            logp = (logp_all * actions.detach().round()).sum(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            advantage = (returns - value_target[:-1]).detach()
            objective = self.grad_mix * logp * advantage
            if dynamics:
                objective = objective + (1.0 - self.grad_mix) * returns
            loss_actor = -((objective + self.entropy_weight * entropy) * weights).mean()
            metrics["policy_entropy"] = entropy.detach().mean()
            metrics["loss_actor"] = loss_actor.detach()
        else:
            loss_actor = torch.zeros((), device=feats.device)
        metrics["loss_critic"] = loss_critic.detach()
        return loss_actor, loss_critic, metrics
