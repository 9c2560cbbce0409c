"""Environments: the token-replay env (AudioTokens-v0) and whatever else is registered with Gymnasium."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

import gymnasium as gym

from envs.audio_token_env import ENV_ID as AUDIO_TOKENS_ID
from envs.audio_token_env import AudioTokenEnv, MissingTokensError

# Optional env modules that register themselves on import.
_ENV_MODULES = ("envs.toy_env",)


def make_env(conf: Mapping[str, Any], split: str = "train", worker: int = 0, n_workers: int = 1) -> gym.Env:
    """The env named by `conf.env_id`; AudioTokens-v0 gets the data dir, order, reward and this
    worker's share of the split's utterances. Other ids go to `gymnasium.make` as they are."""
    env_id = conf["env_id"]
    if env_id == AUDIO_TOKENS_ID:
        return gym.make(
            AUDIO_TOKENS_ID,
            data_dir=conf["data_dir"],
            split=split,
            order=conf.get("env_order", "shuffle"),
            reward=conf.get("env_reward", "voice"),
            max_steps=conf.get("env_max_steps") or None,
            worker=worker,
            n_workers=n_workers,
            codebook_size=conf.get("codebook_size"),
            disable_env_checker=True,
        )
    for name in _ENV_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
    return gym.make(env_id)


__all__ = ["AUDIO_TOKENS_ID", "AudioTokenEnv", "MissingTokensError", "make_env"]
