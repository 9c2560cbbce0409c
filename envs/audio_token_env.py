"""A Gymnasium environment that replays tokenized utterances, one utterance per episode.

One step is the `G` tokens of one time step (`tokens_per_step`); the only action is the
null action, so the "world" is the audio itself and a world model learns to predict it.
The reward is that step's voice activity (or 0), which gives the reward head something
real to predict.

Shards are read lazily: the env keeps a compact index of where each utterance lives and at
most one shard's per-step arrays in memory, so memory does not grow with the corpus.
With `order="shuffle"` each epoch visits the shards in a random order and the utterances of
each shard in a random order (one shard load per shard and epoch, however large the corpus).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from tokenizer.bucket import local_data_dir
from tokenizer.layout import DataLayout
from tokenizer.tokens import ShardError, TokenSplit, read_token_spec

log = logging.getLogger(__name__)

ENV_ID = "AudioTokens-v0"


class AudioTokenEnv(gym.Env):
    """Replays the token steps of one utterance per episode.

    Args:
        data_dir: the folder holding `tokens/{train,val,test}/shard-*.npz` (and `tokens/meta.json`).
        split: which split to replay.
        order: "shuffle" (a fresh random order every epoch) or "sequential" (index order).
        reward: "voice" (the step's voice activity in [0, 1]) or "none" (always 0).
        max_steps: truncate an episode after this many steps (None or 0: the utterance's length).
        worker, n_workers: this env replays every n_workers-th utterance of the split, from
            `worker`, so N generator workers share the corpus without duplicates.
        codebook_size: used only when meta.json does not say it.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        data_dir: Path | str,
        split: str = "train",
        order: str = "shuffle",
        reward: str = "voice",
        max_steps: int | None = None,
        worker: int = 0,
        n_workers: int = 1,
        codebook_size: int | None = None,
        render_mode: str | None = None,
    ):
        if order not in ("shuffle", "sequential"):
            raise ValueError(f"order must be 'shuffle' or 'sequential', not {order!r}")
        if reward not in ("voice", "none"):
            raise ValueError(f"reward must be 'voice' or 'none', not {reward!r}")
        if not (0 <= worker < n_workers):
            raise ValueError(f"worker must be in [0, n_workers={n_workers}), not {worker}")
        data_dir = local_data_dir(data_dir)  # a bucket's tokens: mirrored here first
        self.data_dir = Path(data_dir)
        self.split = split
        self.order = order
        self.reward_kind = reward
        self.max_steps = int(max_steps) if max_steps else None
        self.worker, self.n_workers = int(worker), int(n_workers)
        self.render_mode = render_mode

        layout = DataLayout.of(data_dir)
        self.corpus = TokenSplit(layout, split)
        self.spec = self.corpus.spec = read_token_spec(layout, codebook_size)
        lengths = self.corpus.lengths
        # Utterances with fewer than 2 steps cannot make an episode (reset, then at least one step).
        usable = np.flatnonzero(lengths >= 2)
        self.n_too_short = int(len(lengths) - len(usable))
        self._mine = usable[self.worker :: self.n_workers]
        if len(self._mine) == 0:
            raise ValueError(
                f"split '{split}' in {self.corpus.folder} has {len(usable)} usable utterances: too few for "
                f"worker {worker} of {n_workers}"
            )
        self.n_utterances = len(self._mine)
        self.n_steps_per_epoch = int(lengths[self._mine].sum())
        self.tokens_per_step, self.codebook_size = self.spec.tokens_per_step, self.spec.codebook_size
        g = self.tokens_per_step
        self._keys = ("tokens", "voice") if self.reward_kind == "voice" else ("tokens",)
        self._bad_shards: set[int] = set()

        self.observation_space = spaces.Dict(
            {"tokens": spaces.MultiDiscrete(np.full(g, self.codebook_size, dtype=np.int64))}
        )
        self.action_space = spaces.Discrete(1)

        self._order: np.ndarray | None = None
        self._position = 0  # next entry of self._order
        self.epoch = 0
        self._utt_tokens: np.ndarray | None = None
        self._utt_reward: np.ndarray | None = None
        self._utt_id = ""
        self._t = 0
        self._done = True

    # ---- utterances ------------------------------------------------------------------
    @property
    def skipped_shards(self) -> dict[str, str]:
        return self.corpus.skipped_shards

    def _start_utterance(self, u: int) -> None:
        utt = self.corpus.utterance(u, self._keys)
        self._utt_tokens = utt["tokens"]
        n = len(self._utt_tokens)
        self._utt_reward = utt["voice"].astype(np.float64) if self.reward_kind == "voice" else np.zeros(n)
        self._utt_id = utt["utterance_id"]
        self._t = 0
        self._done = False

    # ---- epoch order -----------------------------------------------------------------
    def _new_epoch(self) -> None:
        mine = self._mine
        if self.order == "sequential":
            self._order = mine
        else:  # shards in random order, utterances in random order within each shard
            shard_of = self.corpus.shard_of
            shard_rank = self.np_random.permutation(len(self.corpus.shards))[shard_of[mine]]
            self._order = mine[np.lexsort((self.np_random.random(len(mine)), shard_rank))]
        self._position = 0

    # ---- Gymnasium API ---------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or self._order is None:
            self._new_epoch()
            self.epoch = 0
        options = options or {}
        if options.get("utterance") is not None:
            self._start_utterance(self.corpus.find(options["utterance"]))
        else:
            while True:  # the next utterance whose shard is usable
                if self._position >= len(self._order):
                    self._new_epoch()
                    self.epoch += 1
                u = int(self._order[self._position])
                self._position += 1
                shard = int(self.corpus.shard_of[u])
                if shard in self._bad_shards:
                    continue
                try:
                    self._start_utterance(u)
                    break
                except ShardError as e:
                    self._bad_shards.add(shard)
                    self.corpus.skip_shard(self.corpus.shards[shard], e)
                    if all(int(s) in self._bad_shards for s in np.unique(self.corpus.shard_of[self._mine])):
                        raise ShardError(
                            f"no usable token shards left for split '{self.split}' of {self.data_dir}: "
                            + "; ".join(self.skipped_shards.values())
                        ) from None
        return self._obs(), self._info()

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode has ended: call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        self._t += 1
        t = self._t
        terminated = t >= len(self._utt_tokens) - 1
        truncated = bool(self.max_steps and t >= self.max_steps and not terminated)
        self._done = terminated or truncated
        return self._obs(), float(self._utt_reward[t]), terminated, truncated, self._info()

    def _obs(self) -> dict:
        return {"tokens": self._utt_tokens[self._t].copy()}

    def _info(self) -> dict:
        return {"utterance_id": self._utt_id, "step": self._t}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="envs.audio_token_env:AudioTokenEnv")
