"""Policies the generators act with.

- RandomPolicy: uniformly random actions, the prefill policy (and the only one that matters
  for the audio env's null action);
- NetworkPolicy: the learner's checkpoint: it filters the episode with the world model's
  posterior (as the learner does) and samples the actor's action;
- PrefilledNetworkPolicy: random until the learner's first checkpoint exists, then the network.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from envs import space_dims
from pydreamer.models.checkpoint import args_differ, build_model, load_checkpoint, restore
from pydreamer.replay_layout import checkpoint_path
from pydreamer.models.dreamer import Dreamer
from pydreamer.models.functions import sample_one_hot
from runtime.storage import stat_token, store_path

log = logging.getLogger("pydreamer.policy")


class RandomPolicy:
    """Uniformly random actions: the prefill policy (and the only one that matters for the null action)."""

    def __init__(self, conf: Mapping[str, Any] | None, observation_space: spaces.Space, action_space: spaces.Space,
                 checkpoint_path: Path | str | None = None, seed: int | None = None):
        if not isinstance(action_space, spaces.Discrete):
            raise TypeError(f"generators support Discrete action spaces, not {action_space}")
        self.n = int(action_space.n)
        self.start = int(action_space.start)
        self.rng = np.random.default_rng(seed)
        self._draws = np.zeros(0, np.int64)

    def reset(self) -> None:
        pass

    def reload(self) -> bool:
        return False

    def __call__(self, obs: dict) -> int:
        if self.n == 1:
            return self.start
        if len(self._draws) == 0:  # draw in blocks: one numpy call per 1024 steps
            self._draws = self.rng.integers(self.n, size=1024)
        a, self._draws = int(self._draws[0]), self._draws[1:]
        return self.start + a


class PrefilledNetworkPolicy:
    """The learner's latest checkpoint; cheap random actions until the checkpoint file exists.

    At an episode start, once `reload_interval` env steps have passed, it asks the network
    policy to load a newer checkpoint, so an episode is never acted by two different networks.
    """

    def __init__(self, conf: Mapping[str, Any], observation_space, action_space, checkpoint_path: Path,
                 seed: int | None = None, reload_interval: int = 1000):
        self.checkpoint_path = store_path(checkpoint_path)
        self.random = RandomPolicy(conf, observation_space, action_space, seed=seed)
        self.network = NetworkPolicy(conf, observation_space, action_space, self.checkpoint_path)
        self.reload_interval = int(reload_interval)
        self.use_network = False
        self.n_reloads = 0
        self._steps_since_check = self.reload_interval  # look at the first episode start

    def reset(self) -> None:
        if self._steps_since_check >= self.reload_interval:
            self._steps_since_check = 0
            if _exists(self.checkpoint_path):
                self.use_network = True
                if self.network.reload():
                    self.n_reloads += 1
                    log.info("policy: loaded %s (reload %d)", self.checkpoint_path, self.n_reloads)
        (self.network if self.use_network else self.random).reset()

    def reload(self) -> bool:
        """Look for a newer checkpoint now; True when one was loaded."""
        self._steps_since_check = self.reload_interval
        before = self.n_reloads
        self.reset()
        return self.n_reloads > before

    def __call__(self, obs: dict) -> int:
        self._steps_since_check += 1
        return int(self.network(obs)) if self.use_network else self.random(obs)


def _exists(path) -> bool:
    try:
        return path.exists()
    except OSError as e:  # a bucket that cannot be reached just now: act on, look again later
        log.warning("policy: cannot look for %s (%s)", path, e)
        return False


def make_policy(conf: Mapping[str, Any], env: gym.Env, replay_dir: Path | str, seed: int | None = None):
    kind = conf["generator_policy"]
    if kind == "random":
        return RandomPolicy(conf, env.observation_space, env.action_space, seed=seed)
    if kind == "network":
        return PrefilledNetworkPolicy(conf, env.observation_space, env.action_space, checkpoint_path(replay_dir),
                                      seed=seed, reload_interval=conf["policy_reload_interval"])
    raise ValueError(f"generator_policy must be 'random' or 'network', not {kind!r}")


class NetworkPolicy:
    """Acts with the actor of the checkpoint at `checkpoint_path`; uniformly at random until it exists."""

    def __init__(
        self,
        conf: Mapping[str, Any],
        observation_space: spaces.Space,
        action_space: spaces.Space,
        checkpoint_path: Path | str,
    ):
        self.conf = conf
        self.dims = space_dims(observation_space, action_space)
        self.model = Dreamer(conf, **self.dims).eval()
        self.checkpoint_path = store_path(checkpoint_path)  # a file, or an object in a bucket
        self.loaded_step: int | None = None
        self._version: tuple | None = None  # mtime and size of the file loaded; ETag and LastModified on S3
        self._rng = np.random.default_rng(conf["seed"] + os.getpid())
        self.reload()
        self.reset()

    def reset(self) -> None:
        """Call at the start of every episode: zero the recurrent state and the previous action."""
        self.state = self.model.initial_state(1)
        self.prev_action = torch.zeros(1, self.dims["action_dim"])

    def reload(self) -> bool:
        """Load the checkpoint if it appeared or changed since the last load; True when it did."""
        try:
            version = stat_token(self.checkpoint_path)
        except OSError as e:  # the bucket cannot be reached just now: keep acting, look again later
            print(f"policy: cannot look for a new checkpoint ({e})", flush=True)
            return False
        if version is None or version == self._version:
            return False
        try:
            ckpt = load_checkpoint(self.checkpoint_path)
            if args_differ(ckpt, self.model):  # a run resumed as its checkpoint's model, not this config's
                self.model = build_model(ckpt, self.conf).eval()
                self.reset()
            self.loaded_step = restore(ckpt, self.model)
        except (RuntimeError, OSError) as e:  # replaced while reading, or the bucket away: try again next time
            print(f"policy: checkpoint not loaded ({e})", flush=True)
            return False
        self._version = version
        return True

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, Any]) -> int:
        n = self.dims["action_dim"]
        if self.model.ac is None:  # a world model without a latent trains no actor: act at random
            return int(self._rng.integers(n))
        tokens = torch.as_tensor(np.asarray(obs["tokens"]), dtype=torch.int64).reshape(1, -1)
        wm = self.model.wm
        self.state = wm.observe_step(self.state, tokens, self.prev_action)
        if self.loaded_step is None:
            index = int(self._rng.integers(n))
        else:
            logits = self.model.ac.policy_logits(wm.latent_features(self.state))
            index = int(sample_one_hot(logits, straight_through=False).argmax(-1).item())
        self.prev_action = torch.nn.functional.one_hot(torch.tensor([index]), n).float()
        return index
