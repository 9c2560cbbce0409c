"""NetworkPolicy: the generators' policy from the learner's latest checkpoint.

It filters the episode with the world model's posterior (as the learner does) and samples
the actor's action. Until a checkpoint exists it acts uniformly at random, so generators
can start before the learner has saved anything.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from gymnasium import spaces

from .models.checkpoint import load_checkpoint, restore
from .models.dreamer import Dreamer
from .models.functions import sample_one_hot
from .models.rssm import RSSM


def space_dims(observation_space: spaces.Space, action_space: spaces.Space) -> dict[str, int]:
    """(codebook size, tokens per step, number of actions) from the env's spaces."""
    tokens = observation_space["tokens"] if isinstance(observation_space, spaces.Dict) else observation_space
    if not isinstance(tokens, spaces.MultiDiscrete):
        raise ValueError(f"expected a MultiDiscrete 'tokens' observation, got {tokens}")
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"expected a Discrete action space, got {action_space}")
    nvec = np.asarray(tokens.nvec).reshape(-1)
    return {"n_tokens": int(nvec.max()), "tokens_per_step": int(nvec.size), "action_dim": int(action_space.n)}


class NetworkPolicy:
    def __init__(
        self,
        conf: Mapping[str, Any],
        observation_space: spaces.Space,
        action_space: spaces.Space,
        checkpoint_path: Path | str,
    ):
        self.dims = space_dims(observation_space, action_space)
        self.model = Dreamer(conf, **self.dims).eval()
        self.checkpoint_path = Path(checkpoint_path)
        self.loaded_step: int | None = None
        self._mtime: float | None = None
        self._rng = np.random.default_rng(int(conf.get("seed", 0)) + os.getpid())
        self.reload()
        self.reset()

    def reset(self) -> None:
        """Call at the start of every episode: zero the recurrent state and the previous action."""
        self.state = self.model.initial_state(1)
        self.prev_action = torch.zeros(1, self.dims["action_dim"])

    def reload(self) -> bool:
        """Load the checkpoint if it appeared or changed since the last load; True when it did."""
        try:
            mtime = self.checkpoint_path.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime == self._mtime:
            return False
        try:
            ckpt = load_checkpoint(self.checkpoint_path)
            self.loaded_step = restore(ckpt, self.model)
        except (RuntimeError, FileNotFoundError) as e:  # replaced while reading: try again next time
            print(f"policy: checkpoint not loaded ({e})", flush=True)
            return False
        self._mtime = mtime
        return True

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, Any]) -> int:
        tokens = torch.as_tensor(np.asarray(obs["tokens"]), dtype=torch.int64).reshape(1, 1, -1)
        wm = self.model.wm
        embed = wm.encoder(tokens)
        reset = torch.zeros(1, 1, dtype=torch.bool)
        _, _, _, self.state = wm.rssm.observe(embed, self.prev_action.unsqueeze(0), reset, self.state)
        n = self.dims["action_dim"]
        if self.loaded_step is None:
            index = int(self._rng.integers(n))
        else:
            logits = self.model.ac.policy_logits(RSSM.features(self.state))
            index = int(sample_one_hot(logits, straight_through=False).argmax(-1).item())
        self.prev_action = torch.nn.functional.one_hot(torch.tensor([index]), n).float()
        return index
