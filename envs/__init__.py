"""Environments: the token-replay env (AudioTokens-v0) and whatever else is registered with Gymnasium."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.audio_token_env import ENV_ID as AUDIO_TOKENS_ID
from envs.audio_token_env import AudioTokenEnv, local_data_dir, mel_step_shape
from tokenizer.layout import DataLayout
from tokenizer.tokens import MissingTokensError, read_token_spec

# Optional env modules that register themselves on import.
_ENV_MODULES = ("envs.toy_env",)


def make_env(conf: Mapping[str, Any], split: str = "train", worker: int = 0, n_workers: int = 1) -> gym.Env:
    """The env named by `conf.env_id`; AudioTokens-v0 gets the data dir, order, reward, observation and
    this worker's share of the split's utterances. Other ids go to `gymnasium.make` as they are."""
    env_id = conf["env_id"]
    if env_id == AUDIO_TOKENS_ID:
        return gym.make(
            AUDIO_TOKENS_ID,
            data_dir=conf["data_dir"],  # a bucket's: the env fetches its tokens
            split=split,
            order=conf["env_order"],
            reward=conf["env_reward"],
            max_steps=conf["env_max_steps"] or None,
            worker=worker,
            n_workers=n_workers,
            codebook_size=conf["codebook_size"],
            observation=conf.get("observation", "tokens"),  # configs from before the key: tokens
            disable_env_checker=True,
        )
    for name in _ENV_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
    return gym.make(env_id)


def space_dims(observation_space: spaces.Space, action_space: spaces.Space) -> dict[str, int]:
    """(codebook size, tokens per step, number of actions) from an env's spaces."""
    tokens = observation_space["tokens"] if isinstance(observation_space, spaces.Dict) else observation_space
    if not isinstance(tokens, spaces.MultiDiscrete):
        raise ValueError(f"expected a MultiDiscrete 'tokens' observation, got {tokens}")
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"expected a Discrete action space, got {action_space}")
    nvec = np.asarray(tokens.nvec).reshape(-1)
    return {"n_tokens": int(nvec.max()), "tokens_per_step": int(nvec.size), "action_dim": int(action_space.n)}


def env_dims(conf: Mapping[str, Any], layout: DataLayout | None = None) -> dict[str, int]:
    """What a model of the env needs to know (n_tokens, tokens_per_step, action_dim).

    For the token corpus this is its TokenSpec (no env is built, no shard indexed); other
    envs are built once to read their spaces.
    """
    if conf["env_id"] == AUDIO_TOKENS_ID:
        spec = read_token_spec(layout or DataLayout.of(local_data_dir(conf["data_dir"])), conf["codebook_size"])
        return {"n_tokens": spec.codebook_size, "tokens_per_step": spec.tokens_per_step, "action_dim": 1}
    env = make_env(conf)
    try:
        return space_dims(env.observation_space, env.action_space)
    finally:
        env.close()


def mel_dim(conf: Mapping[str, Any], layout: DataLayout | None = None) -> int | None:
    """Numbers per step of the 'mel' observation (frames per step * n_mels) with `observation: mel`, None
    otherwise: what a model of continuous log-mel features predicts, read from the data as the env reads
    it (meta.json and one shard header; no env is built)."""
    if conf.get("observation", "tokens") != "mel":
        return None
    if conf["env_id"] != AUDIO_TOKENS_ID:
        raise ValueError(f"observation: mel needs env_id {AUDIO_TOKENS_ID}, not {conf['env_id']}")
    layout = layout or DataLayout.of(local_data_dir(conf["data_dir"], ("tokens", "mels/train")))
    ds, n_mels = mel_step_shape(layout, "train")
    return ds * n_mels


__all__ = ["AUDIO_TOKENS_ID", "AudioTokenEnv", "MissingTokensError", "env_dims", "make_env", "mel_dim", "space_dims"]
