"""NetworkPolicy: the generators act with the learner's checkpoint on an env whose actions matter."""
from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import envs.toy_env  # noqa: F401  (registers ToyTokens-v0)
from pydreamer.episodes import list_episodes, load_episode
from pydreamer.generator import run_generator
from pydreamer.policy import make_policy
from pydreamer.models import Dreamer
from pydreamer.models.checkpoint import save_checkpoint
from envs import space_dims
from pydreamer.policy import NetworkPolicy
from runtime.config import load_config

torch.set_num_threads(1)


def toy_conf(tmp_path, **kw):
    conf = load_config(["defaults", "tiny"])
    conf.update(env_id="ToyTokens-v0", replay_dir=str(tmp_path / "replay"), generator_policy="network",
                policy_reload_interval=24)
    conf.update(kw)
    return conf


def test_space_dims_and_bad_spaces():
    env = gym.make("ToyTokens-v0")
    assert space_dims(env.observation_space, env.action_space) == {"n_tokens": 8, "tokens_per_step": 2, "action_dim": 3}
    with pytest.raises(ValueError, match="Discrete"):
        space_dims(env.observation_space, gym.spaces.Box(0, 1, (2,)))


def test_generator_runs_with_the_network_policy(tmp_path):
    conf = toy_conf(tmp_path)
    # no checkpoint yet: random actions, episodes still written
    stats = run_generator(conf, conf.replay_dir, split="train", n_episodes=2)
    assert stats["episodes"] == 2
    env = gym.make("ToyTokens-v0")
    model = Dreamer(conf, **space_dims(env.observation_space, env.action_space))
    save_checkpoint(tmp_path / "replay" / "checkpoints" / "latest.pt", model, None, step=7)
    policy = make_policy(conf, env, conf.replay_dir, seed=0)
    policy.reset()
    assert policy.use_network and policy.network.loaded_step == 7
    stats = run_generator(conf, conf.replay_dir, split="train", n_episodes=3)
    assert stats["episodes"] == 3
    paths = list_episodes(tmp_path / "replay" / "episodes")
    assert len(paths) == 5
    ep = load_episode(paths[-1])
    assert ep["action"].shape == (13, 3) and (ep["action"][1:].sum(-1) == 1).all()


def test_policy_reload_sees_a_new_checkpoint(tmp_path):
    conf = toy_conf(tmp_path)
    env = gym.make("ToyTokens-v0")
    path = tmp_path / "ckpt" / "latest.pt"
    policy = NetworkPolicy(conf, env.observation_space, env.action_space, path)
    assert not policy.reload() and policy.loaded_step is None
    obs, _ = env.reset(seed=0)
    assert 0 <= policy(obs) < 3
    model = Dreamer(conf, **policy.dims)
    save_checkpoint(path, model, None, step=1)
    assert policy.reload() and policy.loaded_step == 1
    save_checkpoint(path, model, None, step=2)
    import os
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert policy.reload() and policy.loaded_step == 2
    policy.reset()
    assert 0 <= policy(obs) < 3
