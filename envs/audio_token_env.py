"""A Gymnasium environment that replays tokenized utterances, one utterance per episode.

One step is the `G` tokens of one time step (`tokens_per_step`); the only action is the
null action, so the "world" is the audio itself and a world model learns to predict it.
The reward is that step's voice activity (or 0), which gives the reward head something
real to predict. `info["labels"]` holds the utterance's conditioning labels ({name: value},
empty for a corpus without them), which generators store with the episode.

Shards are read lazily: the env keeps a compact index of where each utterance lives and at
most one shard's per-step arrays in memory, so memory does not grow with the corpus.
With `order="shuffle"` each epoch visits the shards in a random order and the utterances of
each shard in a random order (one shard load per shard and epoch, however large the corpus).

With `observation="mel"` every observation also holds the step's log-mel frames (`MelSteps`), read
the same way from the prepare stage's `mels/{split}/` shards, so a world model of continuous
features trains on the very steps the tokens describe.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from tokenizer.bucket import local_data_dir
from tokenizer.features import renormalize
from tokenizer.layout import DataLayout
from tokenizer.shards import shard_paths
from tokenizer.tokens import ShardError, TokenSplit, read_token_meta, read_token_spec

log = logging.getLogger(__name__)

ENV_ID = "AudioTokens-v0"


# Bounds of the 'mel' observation (corpus z-scores): real corpora (LibriSpeech, the synthetic one) stay
# within about -2.5..4, since top_db caps every log-mel 80 dB below its peak; values beyond are clipped.
MEL_BOUND = 20.0


def mel_shard_paths(layout: DataLayout, split: str) -> list[Path]:
    """The split's log-mel shards (the prepare stage's output); none is an error naming the folder."""
    folder = layout.mels(split)
    paths = shard_paths(folder) if folder.is_dir() else []
    if not paths:
        raise ValueError(f"observation 'mel': no log-mel shards (shard-*.npz) in {folder} for split '{split}': the "
                         f"mel observation reads the prepare stage's mels/ beside tokens/ (or use observation: tokens)")
    return paths


def mel_scale(layout: DataLayout) -> tuple[float, float]:
    """The corpus' log-mel level and spread (dB) from meta.json: one fixed scale for every utterance."""
    meta = read_token_meta(layout)
    try:
        mean, std = float(meta["mel_mean"]), float(meta["mel_std"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{layout.token_meta}: no usable mel_mean and mel_std (written by the encode stage): "
                         f"observation 'mel' z-scores every log-mel frame with them") from None
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise ValueError(f"{layout.token_meta}: mel_mean {mean} and mel_std {std} must be finite, mel_std positive")
    return mean, std


def mel_width(path: Path) -> int:
    """n_mels of a log-mel shard, from the header of its `mel` array (the array itself is not read)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("mel.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
    except Exception as e:
        raise ValueError(f"{path}: unreadable log-mel shard ({type(e).__name__}: {e})") from None
    if len(shape) != 2:
        raise ValueError(f"{path}: 'mel' should be [frames, n_mels], has shape {shape}")
    return int(shape[1])


def frames_per_step(layout: DataLayout, split: str, frames: np.ndarray, steps: np.ndarray, ids: np.ndarray) -> int:
    """Log-mel frames per token step: meta.json's `time_downsample` (the encode stage records it), else the
    one value with ceil(F / ds) == T for every utterance (F frames, T token steps). Either way checked
    against every utterance, so log-mels that do not belong to the tokens are an error here."""
    meta = read_token_meta(layout)
    frames, steps = np.asarray(frames, np.int64), np.asarray(steps, np.int64)
    if meta.get("time_downsample") is not None:
        ds, source = meta["time_downsample"], f"time_downsample of {layout.token_meta}"
        if not isinstance(ds, int) or ds < 1:
            raise ValueError(f"{layout.token_meta}: time_downsample must be a positive integer, not {ds!r}")
    else:
        lo = int((-(-frames // np.maximum(steps, 1))).max(initial=1))  # ceil(F / ds) == T: F / T <= ds < F / (T - 1)
        many = steps > 1
        hi = int((-(-frames[many] // (steps[many] - 1)) - 1).min(initial=np.iinfo(np.int64).max))
        if lo > hi or lo < 1:
            raise ValueError(f"{layout.mels(split)}: no time_downsample fits the log-mel and token lengths (and "
                             f"{layout.token_meta} records none)")
        if lo < hi:
            raise ValueError(f"{layout.token_meta}: records no time_downsample and the lengths allow {lo}..{hi}")
        ds, source = lo, "from the log-mel and token lengths"
    bad = np.flatnonzero(-(-frames // ds) != steps)
    if len(bad):
        u = int(bad[0])
        raise ValueError(f"{layout.mels(split)}: utterance {str(ids[u])!r} has {frames[u]} log-mel frames for "
                         f"{steps[u]} token steps, expected ceil(frames / {ds}) == steps ({source}; {len(bad)} such "
                         f"utterances)")
    return int(ds)


def mel_step_shape(layout: DataLayout, split: str = "train") -> tuple[int, int]:
    """(frames per step, n_mels) of the 'mel' observation: from meta.json and one shard's header when
    meta.json records time_downsample, else from the split's index (as the env finds them)."""
    paths = mel_shard_paths(layout, split)
    mel_scale(layout)  # a mel observation cannot be made without it: say so here already
    if read_token_meta(layout).get("time_downsample") is not None:
        return frames_per_step(layout, split, np.zeros(0), np.zeros(0), np.zeros(0)), mel_width(paths[0])
    mel = MelSteps(layout, TokenSplit(layout, split))
    return mel.ds, mel.n_mels


class MelSteps:
    """Each token step's log-mel frames for the utterances of a TokenSplit, on one corpus-wide scale.

    The index (mel shard and row per token utterance, matched by `utterance_id`) is built from the
    shards' `offsets` and `utterance_id` alone; at most one shard's arrays are held at a time. Step t
    is frames [t*ds, (t+1)*ds), the last step padded with its last frame, flattened frame by frame:
    dB = z * std + mean (the utterance's own), then z-scored with meta.json's mel_mean and mel_std
    (a model sees absolute levels) and clipped into [-MEL_BOUND, MEL_BOUND].
    """

    def __init__(self, layout: DataLayout, corpus: TokenSplit):
        self.folder = layout.mels(corpus.split)
        self.scale = mel_scale(layout)
        self.paths = mel_shard_paths(layout, corpus.split)
        ids, shard_of, row_of, frames = [], [], [], []
        self.n_mels = mel_width(self.paths[0])
        for no, path in enumerate(self.paths):
            width = mel_width(path) if no else self.n_mels
            if width != self.n_mels:
                raise ValueError(f"{path}: {width} mel bins, {self.paths[0].name} has {self.n_mels}")
            try:
                with np.load(path, allow_pickle=False) as z:
                    offsets, uids = z["offsets"], z["utterance_id"]
            except Exception as e:
                raise ValueError(f"{path}: unreadable log-mel shard ({type(e).__name__}: {e})") from None
            if len(offsets) != len(uids) + 1:
                raise ValueError(f"{path}: {len(offsets)} offsets for {len(uids)} utterances")
            ids.append(uids.astype(str))
            shard_of.append(np.full(len(uids), no, np.int32))
            row_of.append(np.arange(len(uids), dtype=np.int32))
            frames.append(np.diff(offsets).astype(np.int64))
        all_ids = np.concatenate(ids)  # matched to the token utterances by sorting, not a dict: a few bytes each
        order = np.argsort(all_ids, kind="stable")
        pos = np.minimum(np.searchsorted(all_ids[order], corpus.ids), max(len(all_ids) - 1, 0))
        found = (all_ids[order[pos]] == corpus.ids) if len(all_ids) else np.zeros(len(corpus), bool)
        if not found.all():
            missing = corpus.ids[~found]
            raise ValueError(f"{self.folder}: no log-mel for utterance {str(missing[0])!r} of the token split "
                             f"'{corpus.split}' ({len(missing)} of {len(corpus)} token utterances have none)")
        k = order[pos]
        self.shard_of, self.row_of = np.concatenate(shard_of)[k], np.concatenate(row_of)[k]
        self.ds = frames_per_step(layout, corpus.split, np.concatenate(frames)[k], corpus.lengths, corpus.ids)
        self.ids = corpus.ids
        self._cache_no, self._cache = -1, None

    @property
    def dim(self) -> int:
        return self.ds * self.n_mels

    def _load(self, no: int) -> dict:
        if no == self._cache_no:
            return self._cache
        self._cache, self._cache_no = None, -1  # free the old shard before reading the next
        path = self.paths[no]
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {key: z[key] for key in ("offsets", "mel", "mean", "std")}
        except KeyError as e:
            raise ShardError(f"{path}: log-mel shard has no array {e}") from None
        except Exception as e:
            raise ShardError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
        if data["mel"].ndim != 2 or data["mel"].shape[1] != self.n_mels:
            raise ShardError(f"{path}: 'mel' should be [frames, {self.n_mels}], has shape {data['mel'].shape}")
        self._cache, self._cache_no = data, no
        return data

    def steps(self, u: int) -> np.ndarray:
        """Utterance `u` (of the TokenSplit) as [T, ds * n_mels] float32, one row per token step."""
        data = self._load(int(self.shard_of[u]))
        i = int(self.row_of[u])
        a, b = int(data["offsets"][i]), int(data["offsets"][i + 1])
        n = -(-(b - a) // self.ds)
        z = renormalize(data["mel"][a:b], data["mean"][i], data["std"][i], self.scale)
        if not np.isfinite(z).all():
            raise ShardError(f"{self.paths[int(self.shard_of[u])]}: the log-mel of {str(self.ids[u])!r} holds NaN or "
                             f"infinite values")
        z = np.pad(z, ((0, n * self.ds - (b - a)), (0, 0)), mode="edge")
        return np.clip(z, -MEL_BOUND, MEL_BOUND).reshape(n, self.dim).astype(np.float32, copy=False)


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
        observation: "tokens", or "mel": each observation also holds `mel`, the step's log-mel frames
            on the corpus scale, flattened frame by frame [ds * n_mels] float32 (see MelSteps).
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
        observation: str = "tokens",
    ):
        if observation not in ("tokens", "mel"):
            raise ValueError(f"observation must be 'tokens' or 'mel', not {observation!r}")
        if order not in ("shuffle", "sequential"):
            raise ValueError(f"order must be 'shuffle' or 'sequential', not {order!r}")
        if reward not in ("voice", "none"):
            raise ValueError(f"reward must be 'voice' or 'none', not {reward!r}")
        if not (0 <= worker < n_workers):
            raise ValueError(f"worker must be in [0, n_workers={n_workers}), not {worker}")
        parts = ("tokens", f"mels/{split}") if observation == "mel" else ("tokens",)
        data_dir = local_data_dir(data_dir, parts)  # a bucket's tokens (and log-mels): mirrored here first
        self.data_dir = Path(data_dir)
        self.split = split
        self.order = order
        self.reward_kind = reward
        self.max_steps = int(max_steps) if max_steps else None
        self.worker, self.n_workers = int(worker), int(n_workers)
        self.render_mode = render_mode
        self.observation = observation

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

        obs_spaces: dict[str, spaces.Space] = {
            "tokens": spaces.MultiDiscrete(np.full(g, self.codebook_size, dtype=np.int64))}
        self.mel = MelSteps(layout, self.corpus) if observation == "mel" else None
        if self.mel is not None:
            obs_spaces["mel"] = spaces.Box(-MEL_BOUND, MEL_BOUND, (self.mel.dim,), np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Discrete(1)

        self._order: np.ndarray | None = None
        self._position = 0  # next entry of self._order
        self.epoch = 0
        self._utt_tokens: np.ndarray | None = None
        self._utt_reward: np.ndarray | None = None
        self._utt_mel: np.ndarray | None = None
        self._utt_id = ""
        self._utt_labels: dict[str, str] = {}
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
        self._utt_mel = self.mel.steps(u) if self.mel is not None else None
        self._utt_id = utt["utterance_id"]
        self._utt_labels = utt["labels"]
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
        obs = {"tokens": self._utt_tokens[self._t].copy()}
        if self._utt_mel is not None:
            obs["mel"] = self._utt_mel[self._t].copy()
        return obs

    def _info(self) -> dict:
        return {"utterance_id": self._utt_id, "step": self._t, "labels": dict(self._utt_labels)}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="envs.audio_token_env:AudioTokenEnv")
