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

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import logging

from tokenizer.layout import DataLayout
from tokenizer.shards import shard_paths

log = logging.getLogger(__name__)

ENV_ID = "AudioTokens-v0"
MAKE_TOKENS_COMMAND = "python -m tokenizer prepare|train|encode --configs defaults audio --data_dir {data_dir}"


class MissingTokensError(FileNotFoundError):
    """The token corpus (or one split of it) is not there yet."""


class ShardError(ValueError):
    """A token shard that cannot be used; the message names the file and the reason."""


def read_token_meta(data_dir: Path | str) -> dict:
    """`<data_dir>/tokens/meta.json` (codebook_size, tokens_per_step, ...) or {} when absent."""
    path = DataLayout.of(data_dir).token_meta
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return meta


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
        self.data_dir = Path(data_dir)
        self.split = split
        self.order = order
        self.reward_kind = reward
        self.max_steps = int(max_steps) if max_steps else None
        self.worker, self.n_workers = int(worker), int(n_workers)
        self.render_mode = render_mode

        folder = DataLayout.of(data_dir).tokens(split)
        self.skipped_shards: dict[str, str] = {}  # shard path -> why it is not used
        self._bad_shards: set[int] = set()
        self._index_split(folder)
        if not len(self._ids):
            bad = f" ({len(self.skipped_shards)} unreadable: {'; '.join(self.skipped_shards.values())})" if self.skipped_shards else ""
            raise MissingTokensError(
                f"no token shards for split '{split}' in {folder}{bad}: create them with "
                f"`{MAKE_TOKENS_COMMAND.format(data_dir=data_dir)}`"
            )
        lengths = self._lengths
        # Utterances with fewer than 2 steps cannot make an episode (reset, then at least one step).
        usable = np.flatnonzero(lengths >= 2)
        self.n_too_short = int(len(lengths) - len(usable))
        self._mine = usable[self.worker :: self.n_workers]
        if len(self._mine) == 0:
            raise ValueError(
                f"split '{split}' in {folder} has {len(usable)} usable utterances: too few for "
                f"worker {worker} of {n_workers}"
            )
        self.n_utterances = len(self._mine)
        self.n_steps_per_epoch = int(lengths[self._mine].sum())

        meta = read_token_meta(data_dir)
        if meta.get("tokens_per_step") and meta.get("codebook_size"):
            g, k = int(meta["tokens_per_step"]), int(meta["codebook_size"])
        else:  # no meta.json: the shards say G; the config (or the largest token) says the codebook size
            first = self._load_shard(0, check=False)["tokens"]
            g = int(meta.get("tokens_per_step") or first.shape[1])
            k = int(meta.get("codebook_size") or max(codebook_size or 0, int(first.max()) + 1))
        self.tokens_per_step, self.codebook_size = g, int(k)
        self._cache_no, self._cache = -1, None

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

    # ---- shards ----------------------------------------------------------------------
    def _index_split(self, folder: Path) -> None:
        """A compact index of the split (a few bytes per utterance), reading only the small
        per-shard arrays; unreadable shards are skipped with a warning and named."""
        shards, shard_of, row_of, ids, lengths = [], [], [], [], []
        for path in shard_paths(folder) if folder.is_dir() else []:
            try:
                with np.load(path, allow_pickle=False) as z:
                    offsets, uids = z["offsets"], z["utterance_id"]
                if len(offsets) != len(uids) + 1:
                    raise ValueError(f"{len(offsets)} offsets for {len(uids)} utterances")
            except Exception as e:
                self._skip_shard(path, e)
                continue
            shard_of.append(np.full(len(uids), len(shards), np.int32))
            row_of.append(np.arange(len(uids), dtype=np.int32))
            ids.append(uids.astype(str))
            lengths.append(np.diff(offsets).astype(np.int64))
            shards.append(path)
        self._shards = shards
        cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
        self._shard_of, self._row_of = cat(shard_of, np.int32), cat(row_of, np.int32)
        self._ids, self._lengths = cat(ids, str), cat(lengths, np.int64)

    def _skip_shard(self, path: Path, error: Exception) -> None:
        reason = f"{path}: {error}" if str(path) not in str(error) else str(error)
        self.skipped_shards[str(path)] = reason
        log.warning("skipping token shard (%d skipped): %s", len(self.skipped_shards), reason)

    def _load_shard(self, no: int, check: bool = True) -> dict:
        path = self._shards[no]
        keys = ("offsets", "tokens") + (("voice",) if self.reward_kind == "voice" else ())
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {key: z[key] for key in keys}
        except KeyError as e:
            raise ShardError(f"{path}: token shard has no array {e}") from None
        except Exception as e:
            raise ShardError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
        tokens = data["tokens"]
        if tokens.ndim != 2:
            raise ShardError(f"{path}: 'tokens' should be [steps, G], has shape {tokens.shape}")
        if check:
            if tokens.shape[1] != self.tokens_per_step:
                raise ShardError(f"{path}: {tokens.shape[1]} tokens per step, expected {self.tokens_per_step}")
            if tokens.size and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
                raise ShardError(f"{path}: tokens outside [0, codebook_size={self.codebook_size})")
        return data

    def _shard(self, no: int) -> dict:
        if no != self._cache_no:
            self._cache, self._cache_no = None, -1  # free the old shard before reading the next
            self._cache, self._cache_no = self._load_shard(no), no
        return self._cache

    def _start_utterance(self, u: int) -> None:
        data = self._shard(int(self._shard_of[u]))
        i = int(self._row_of[u])
        a, b = int(data["offsets"][i]), int(data["offsets"][i + 1])
        self._utt_tokens = data["tokens"][a:b].astype(np.int64)
        if self.reward_kind == "voice":
            self._utt_reward = data["voice"][a:b].astype(np.float64)
        else:
            self._utt_reward = np.zeros(b - a)
        self._utt_id = str(self._ids[u])
        self._t = 0
        self._done = False

    # ---- epoch order -----------------------------------------------------------------
    def _new_epoch(self) -> None:
        mine = self._mine
        if self.order == "sequential":
            self._order = mine
        else:  # shards in random order, utterances in random order within each shard
            shard_rank = self.np_random.permutation(len(self._shards))[self._shard_of[mine]]
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
            uid = str(options["utterance"])
            hits = np.flatnonzero(self._ids == uid)
            if len(hits) == 0:
                raise ValueError(f"utterance {uid!r} is not in split '{self.split}' of {self.data_dir}")
            self._start_utterance(int(hits[0]))
        else:
            while True:  # the next utterance whose shard is usable
                if self._position >= len(self._order):
                    self._new_epoch()
                    self.epoch += 1
                u = int(self._order[self._position])
                self._position += 1
                if int(self._shard_of[u]) in self._bad_shards:
                    continue
                try:
                    self._start_utterance(u)
                    break
                except ShardError as e:
                    self._bad_shards.add(int(self._shard_of[u]))
                    self._skip_shard(self._shards[int(self._shard_of[u])], e)
                    if all(int(s) in self._bad_shards for s in np.unique(self._shard_of[self._mine])):
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
