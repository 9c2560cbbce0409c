"""ToyTokens-v0: a tiny token env whose actions matter, to test the actor-critic end to end.

Each step shows G tokens: token 0 is a cue in [0, n_actions), the others are noise.
The action taken after seeing a cue earns reward 1 when it equals that cue, else 0.
A random policy earns 1/n_actions per step; a policy that reads the cue earns 1.
The observation space is the audio env's: Dict(tokens=MultiDiscrete([codebook_size] * G)).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "ToyTokens-v0"


class ToyTokensEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, codebook_size: int = 8, tokens_per_step: int = 2, n_actions: int = 3, episode_steps: int = 12):
        if not 2 <= n_actions <= codebook_size:
            raise ValueError(f"n_actions must lie in [2, codebook_size={codebook_size}], got {n_actions}")
        if tokens_per_step < 1 or episode_steps < 1:
            raise ValueError("tokens_per_step and episode_steps must be at least 1")
        self.codebook_size = codebook_size
        self.tokens_per_step = tokens_per_step
        self.n_actions = n_actions
        self.episode_steps = episode_steps
        self.observation_space = spaces.Dict(
            {"tokens": spaces.MultiDiscrete(np.full(tokens_per_step, codebook_size, dtype=np.int64))}
        )
        self.action_space = spaces.Discrete(n_actions)
        self._cue = 0
        self._t = 0

    def _observe(self) -> dict[str, np.ndarray]:
        self._cue = int(self.np_random.integers(self.n_actions))
        noise = self.np_random.integers(self.codebook_size, size=self.tokens_per_step - 1)
        return {"tokens": np.concatenate([[self._cue], noise]).astype(np.int64)}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._observe(), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        action = int(np.asarray(action).reshape(-1)[0]) if np.ndim(action) else int(action)
        if not 0 <= action < self.n_actions:
            raise ValueError(f"action {action} outside Discrete({self.n_actions})")
        reward = float(action == self._cue)
        self._t += 1
        terminated = self._t >= self.episode_steps
        return self._observe(), reward, terminated, False, {}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=ToyTokensEnv)
