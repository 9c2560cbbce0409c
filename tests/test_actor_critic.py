"""Actor-critic in imagination: lambda-returns, the null action, and a toy env where the policy must improve."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

import envs.toy_env  # noqa: F401  (registers ToyTokens-v0)
from pydreamer.models import Dreamer
from pydreamer.models.checkpoint import save_checkpoint
from pydreamer.models.functions import lambda_returns
from pydreamer.policy import NetworkPolicy
from test_models import fake_batch, tiny_conf

torch.set_num_threads(1)


def test_lambda_returns_by_hand():
    reward = torch.tensor([[1.0], [2.0], [3.0]])
    value = torch.tensor([[10.0], [20.0], [30.0], [40.0]])
    disc = torch.full((3, 1), 0.5)
    # lambda = 1: discounted rewards bootstrapped on the last value
    r1 = lambda_returns(reward, value, disc, 1.0)
    assert torch.allclose(r1[:, 0], torch.tensor([1 + 0.5 * (2 + 0.5 * (3 + 0.5 * 40)), 2 + 0.5 * (3 + 0.5 * 40), 3 + 0.5 * 40]))
    # lambda = 0: one-step TD targets
    r0 = lambda_returns(reward, value, disc, 0.0)
    assert torch.allclose(r0[:, 0], torch.tensor([1 + 0.5 * 20, 2 + 0.5 * 30, 3 + 0.5 * 40]))


def test_null_action_critic_learns_constant_reward():
    """Discrete(1): no actor to train; the critic must approach r / (1 - gamma)."""
    torch.manual_seed(0)
    conf = tiny_conf(gamma=0.8, adam_lr_critic=3e-3, adam_lr=3e-3, target_interval=5)
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1)
    opts = model.make_optimizers(conf)
    for step in range(1, 201):
        batch = fake_batch(T=8, B=4, seed=step)
        batch["reward"] = torch.ones_like(batch["reward"])
        _, metrics = model.training_step(batch, model.initial_state(4), opts, step)
    assert "loss_actor" not in metrics
    assert abs(metrics["imag_value"] - 1.0 / (1 - 0.8)) < 1.0, metrics


def toy_episodes(n: int, seed: int = 0, n_actions: int = 3, steps: int = 12) -> list[dict]:
    """Random-policy episodes in the replay format (index 0: the reset observation, zero action)."""
    env = gym.make("ToyTokens-v0", n_actions=n_actions, episode_steps=steps)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed * 10_000 + i)
        tokens, actions, rewards = [obs["tokens"]], [np.zeros(n_actions, np.float32)], [0.0]
        done = False
        while not done:
            a = int(rng.integers(n_actions))
            obs, r, term, trunc, _ = env.step(a)
            tokens.append(obs["tokens"])
            actions.append(np.eye(n_actions, dtype=np.float32)[a])
            rewards.append(r)
            done = term or trunc
        T = len(tokens)
        terminal = np.zeros(T, np.float32)
        terminal[-1] = 1.0
        reset = np.zeros(T, bool)
        reset[0] = True
        out.append({"tokens": np.stack(tokens).astype(np.int64), "action": np.stack(actions),
                    "reward": np.asarray(rewards, np.float32), "terminal": terminal, "reset": reset})
    return out


def stack_episodes(episodes: list[dict]) -> dict[str, torch.Tensor]:
    """Whole episodes of equal length side by side -> time-major batch."""
    return {k: torch.as_tensor(np.stack([e[k] for e in episodes], 1)) for k in episodes[0]}


def run_policy(policy: NetworkPolicy, n_episodes: int, seed: int) -> float:
    env = gym.make("ToyTokens-v0", n_actions=3, episode_steps=12)
    total, steps = 0.0, 0
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        policy.reset()
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs))
            total += r
            steps += 1
            done = term or trunc
    return total / steps


def test_policy_improves_on_toy_env(tmp_path):
    torch.manual_seed(0)
    conf = tiny_conf(
        deter_dim=64, hidden_dim=64, embed_dim=64, stoch_dim=8, stoch_discrete=8,
        adam_lr=2e-3, adam_lr_actor=1e-3, adam_lr_critic=2e-3, imag_horizon=5,
        gamma=0.9, actor_ent=1e-2, target_interval=20, reward_weight=10.0,
    )
    episodes = toy_episodes(256)
    env = gym.make("ToyTokens-v0", n_actions=3, episode_steps=12)
    model = Dreamer(conf, n_tokens=8, tokens_per_step=2, action_dim=3)
    opts = model.make_optimizers(conf)
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    policy = NetworkPolicy(conf, env.observation_space, env.action_space, ckpt)
    assert policy.loaded_step is None  # no checkpoint yet: random actions
    random_reward = run_policy(policy, 20, seed=500)

    rng = np.random.default_rng(1)
    for step in range(1, 301):
        batch = stack_episodes([episodes[i] for i in rng.choice(len(episodes), 16, replace=False)])
        _, metrics = model.training_step(batch, model.initial_state(16), opts, step)
    save_checkpoint(ckpt, model, opts, step)
    assert policy.reload() and policy.loaded_step == 300
    assert not policy.reload()  # unchanged file: nothing to do
    trained_reward = run_policy(policy, 20, seed=500)
    assert random_reward < 0.5
    assert trained_reward > 0.7, (random_reward, trained_reward, metrics)


def test_dynamics_gradients_reach_the_actor():
    """actor_grad_mix=0: the actor learns through the model's dynamics (straight-through actions)."""
    torch.manual_seed(0)
    conf = tiny_conf(actor_grad_mix=0.0)
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=3)
    batch = fake_batch(A=3)
    out = model.wm(batch, model.initial_state(3))
    start = type(out.states)(*(x.reshape(-1, x.shape[-1]) for x in out.states))
    loss_actor, loss_critic, _ = model.ac.losses(model.wm, start, batch["terminal"].reshape(-1))
    loss_actor.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.ac.actor.parameters())
    opts = model.make_optimizers(conf)
    _, metrics = model.training_step(batch, model.initial_state(3), opts, step=1)
    assert metrics["grad_norm_actor"] > 0
