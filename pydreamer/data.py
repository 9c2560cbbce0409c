"""Replay reader: streams fixed-length training batches out of the replay store.

Like pydreamer, each of the `batch_size` columns of a batch is a lane that walks whole
episodes in consecutive chunks of `batch_length` steps; when an episode ends the lane goes
on with the next one inside the same chunk, and `reset` marks the first step of every
episode. So batch k+1 continues batch k column by column, and the learner can carry its
recurrent state from one batch to the next (truncated BPTT), zeroing it where `reset` is set.

Episodes are sampled with probability proportional to their length (every stored step is
equally likely to be trained on). The store is listed again every `reload_interval` seconds,
incrementally (only the names after the last one seen in each worker folder: on S3 one request per
worker folder, not a relisting of the bucket), so episodes written by running generators join the
sampling. A lane holds one episode at a time and the index of the store is a few integers per
episode, so memory stays bounded as the store grows. A file that cannot be read (damaged, or
deleted after it was listed) is skipped with a warning, counted, and never sampled again.

The store may be a folder or an `s3://bucket/prefix` (runtime/storage.py). A reader of a bucket
keeps the episodes it read, decoded, in a bounded cache (`cache_mb`: episodes never change once
written), and draws its episodes `read_ahead` draws early, so that their objects are fetched on the
cache's threads while the lanes use the ones drawn before.

Several DataLoader workers each run their own lanes from their own random stream; every
batch says which worker made it (`worker`), and consecutive batches of one worker continue
each other. The learner keeps one carried state per worker, as pydreamer does.

With several learner ranks (runtime.distributed) each rank's reader sees only its own share
of the store: episode `index` of generator worker `w` belongs to rank `(w + index) % world_size`
(`shard_of`), decided from the file name alone, so the shares are disjoint, cover the store, and
stay so as it grows.

A reader made for `observation: mel` also yields each step's log-mel frames (`mel`), taken from the
same rows as `tokens`; episodes without them (written with `observation: tokens`) are skipped as
unusable files are.

A reader given `condition` [(label name, vocabulary), ...] also yields `condition` int64 [T, B, C]: each
step's own episode's labels as ids, 0 ("none") where a label is missing or its value not in the vocabulary
(a voice heard only in the test split, say), so the same model also learns unconditioned (`condition_codes`).
"""
from __future__ import annotations

import collections
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pydreamer.distributed import shard_of
from pydreamer.episodes import (Condition, EpisodeError, EpisodeListing, EpisodeSpec, condition_codes, episode_filename,
                                episode_labels, label_keys, load_episode)
from pydreamer.replay_layout import ReplayLayout
from runtime.s3 import RemotePath
from runtime.storage import ReadCache, store_path
from tokenizer.layout import DataLayout
from tokenizer.tokens import condition_vocabulary

log = logging.getLogger(__name__)

_OUT_TYPES = {"tokens": np.int64, "action": np.float32, "reward": np.float32, "terminal": np.float32, "reset": bool}
_MEL_TYPES = {**_OUT_TYPES, "mel": np.float32}  # the batches of a reader for observation: mel


class ReplayStoreIndex:
    """Which episodes a replay store folder holds: a few integers per episode.

    File names are rebuilt from (worker folder, worker, index, length); the rare name that does
    not round-trip is kept as text. With `shard=(rank, world_size)` it lists only the episodes
    that rank trains on (`shard_of`).
    """

    def __init__(self, folder: Path | str, shard: tuple[int, int] = (0, 1)):
        self.folder = store_path(folder)
        self.listing = EpisodeListing(self.folder)
        self.rank, self.world_size = int(shard[0]), int(shard[1])
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"shard {shard}: the rank must lie in 0..world_size-1")
        self.subdirs: list[str] = []
        self.subdir = np.zeros(0, np.int32)
        self.worker = np.zeros(0, np.int32)
        self.index = np.zeros(0, np.int64)
        self.length = np.zeros(0, np.int64)
        self.odd_names: dict[int, str] = {}
        self.bad: set[tuple[str, int, int]] = set()  # (subdir, worker, index) of unusable files
        self.usable = np.zeros(0, bool)
        self._cum = np.zeros(0, np.float64)

    def __len__(self) -> int:
        return int(self.usable.sum())

    def scan(self) -> int:
        """Add the episodes that appeared since the last scan (incremental listing); returns the number
        of usable episodes."""
        subdirs = {sub: s for s, sub in enumerate(self.subdirs)}
        rows: list[tuple[int, int, int, int]] = []
        first = len(self.length)
        for rel, (w, i, n) in self.listing.new():
            if self.world_size > 1 and shard_of(w, i, self.world_size) != self.rank:
                continue
            sub, _, name = rel.rpartition("/")
            s = subdirs.setdefault(sub, len(subdirs))
            if (sub, w, i) in self.bad:
                continue
            if name != episode_filename(w, i, n):
                self.odd_names[first + len(rows)] = name
            rows.append((s, w, i, n))
        self.subdirs = list(subdirs)
        if rows:
            arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
            self.subdir = np.concatenate([self.subdir, arr[:, 0].astype(np.int32)])
            self.worker = np.concatenate([self.worker, arr[:, 1].astype(np.int32)])
            self.index, self.length = np.concatenate([self.index, arr[:, 2]]), np.concatenate([self.length, arr[:, 3]])
            self.usable = np.concatenate([self.usable, np.ones(len(rows), bool)])
            self._weigh()
        return len(self)

    def drop(self, k: int) -> None:
        """Never sample episode k again (its file cannot be used)."""
        self.bad.add(self.key(k))
        self.usable[k] = False
        self._weigh()

    def _weigh(self) -> None:
        self._cum = np.cumsum(np.where(self.usable, self.length + 1, 0), dtype=np.float64)  # weight = rows = T + 1

    def path(self, k: int) -> Path | RemotePath:
        name = self.odd_names.get(k) or episode_filename(int(self.worker[k]), int(self.index[k]), int(self.length[k]))
        sub = self.subdirs[self.subdir[k]]
        return self.folder / sub / name if sub else self.folder / name

    def key(self, k: int) -> tuple[str, int, int]:
        return (self.subdirs[self.subdir[k]], int(self.worker[k]), int(self.index[k]))

    def sample(self, rng: np.random.Generator) -> int:
        """An episode, with probability proportional to its number of rows."""
        return int(np.searchsorted(self._cum, rng.random() * self._cum[-1], side="right"))

    @property
    def n_steps(self) -> int:
        return int(self.length.sum())


class _Lane:
    __slots__ = ("episode", "rows", "pos")

    def __init__(self):
        self.episode: dict | None = None
        self.rows = 0
        self.pos = 0


class ReplayReader(IterableDataset):
    """Endless batches from the replay store's episodes of `split` (train or val): dicts of time-major tensors.

    `tokens` int64 [T, B, G], `action` float32 [T, B, A], `reward` float32 [T, B],
    `terminal` float32 [T, B], `reset` bool [T, B] (True on an episode's first step),
    `worker` int64 [] (the DataLoader worker whose lanes made the batch), and `skipped` (a list
    of "path: reason" lines) on the batch after an unusable episode file was skipped. With
    `observation="mel"` also `mel` float32 [T, B, D], and episodes without it are skipped. With
    `condition` (label name, vocabulary) pairs also `condition` int64 [T, B, C] (see `condition_codes`).
    """

    def __init__(
        self,
        replay_dir: Path | str,
        split: str = "train",
        batch_size: int = 32,
        batch_length: int = 48,
        reload_interval: float = 10.0,
        wait_seconds: float = 600.0,
        seed: int | None = None,
        skip_first: bool = True,
        n_tokens: int | None = None,
        cache_mb: float = 512.0,
        read_ahead: int = 64,
        rank: int = 0,
        world_size: int = 1,
        observation: str = "tokens",
        condition: Condition = (),
        spec: EpisodeSpec | None = None,
    ):
        super().__init__()
        if observation not in ("tokens", "mel"):
            raise ValueError(f"observation must be 'tokens' or 'mel', not {observation!r}")
        if batch_size < 1 or batch_length < 1:
            raise ValueError(f"batch_size and batch_length must be positive, not {batch_size} x {batch_length}")
        self.folder = ReplayLayout.of(replay_dir).episodes(split)
        self.batch_size, self.batch_length = int(batch_size), int(batch_length)
        self.reload_interval = float(reload_interval)
        self.wait_seconds = float(wait_seconds)
        self.seed = seed
        self.skip_first = skip_first
        self.spec = spec or EpisodeSpec(n_tokens=n_tokens)  # every episode is checked against it, not the first read
        self.cache_mb = float(cache_mb)  # per process, for a bucket only (the OS caches local files)
        self.cache: ReadCache | None = None  # made in __iter__, in the process that reads
        self.read_ahead = int(read_ahead)  # a bucket: episodes drawn ahead of use, fetched meanwhile
        self._ahead: collections.deque[int] = collections.deque()
        self.rank, self.world_size = int(rank), int(world_size)  # this learner rank reads its share of the store
        self.observation = observation
        self.out_types = dict(_MEL_TYPES if observation == "mel" else _OUT_TYPES)  # what each batch holds
        self.condition = [(str(name), tuple(map(str, vocabulary))) for name, vocabulary in condition]
        self.load_keys = tuple(self.out_types) + label_keys(name for name, _ in self.condition)  # no other label
        if self.condition:
            self.out_types["condition"] = np.int64
        self.n_skipped = 0  # unusable files met by this process
        self.new_skips: list[str] = []  # their "path: reason" lines, handed on with the next batch
        self.n_loaded = 0
        self.clock = time.monotonic  # when to rescan the store (a test may drive it)

    # ---- store -----------------------------------------------------------------------
    def _wait_for_episodes(self, index: ReplayStoreIndex) -> None:
        start = last_note = time.monotonic()
        while index.scan() == 0:
            waited = time.monotonic() - start
            if waited >= self.wait_seconds:
                bad = f" ({len(index.bad)} unreadable files skipped)" if index.bad else ""
                share = (f" for learner rank {self.rank} of {self.world_size} (its share: episode e of worker w "
                         f"when (w + e) % {self.world_size} == {self.rank})" if self.world_size > 1 else "")
                raise TimeoutError(
                    f"no usable episodes in {self.folder}{share} after {waited:.0f} s{bad}: start generators with "
                    f"`python -m pydreamer.generator --configs ... --replay_dir {self.folder.parent}`"
                )
            if time.monotonic() - last_note >= 30:
                log.info("waiting for episodes in %s (%.0f s)", self.folder, waited)
                last_note = time.monotonic()
            time.sleep(min(1.0, max(0.05, self.wait_seconds / 10)))

    def _load(self, index: ReplayStoreIndex, rng: np.random.Generator, like: dict | None) -> dict:
        """A sampled, usable episode; unusable files are skipped with a warning and counted."""
        while True:
            if len(index) == 0:
                self._wait_for_episodes(index)
            k = self._draw(index, rng)
            if not index.usable[k]:  # drawn ahead, found unusable since
                continue
            path = index.path(k)
            try:
                ep = load_episode(path, keys=self.load_keys, cache=self.cache, spec=self.spec)
                if "mel" in self.out_types and "mel" not in ep:
                    raise EpisodeError(f"{path}: no 'mel' (written with observation: tokens?); a reader for "
                                       f"observation: mel needs each step's log-mel frames")
                for key in ("tokens", "action", "mel") if like is not None else ():  # what `spec` left open
                    if key in self.out_types and ep[key].shape[1:] != like[key].shape[1:]:
                        raise EpisodeError(f"{path}: '{key}' has shape {ep[key].shape[1:]} per step, the store's "
                                           f"other episodes have {like[key].shape[1:]}")
                self.n_loaded += 1
                codes = condition_codes(episode_labels(ep), self.condition)  # [C]; every row alike: a read-only view
                return {**{key: ep[key] for key in self.out_types if key != "condition"},
                        "condition": np.broadcast_to(codes, (len(ep["reward"]), len(codes)))}
            except EpisodeError as e:
                self.n_skipped += 1
                self.new_skips.append(str(e))
                index.drop(k)
                log.warning("skipping episode file (%d skipped so far): %s", self.n_skipped, e)

    def _draw(self, index: ReplayStoreIndex, rng: np.random.Generator) -> int:
        """The next episode to read: sampled now, or from a bucket `read_ahead` draws ago, its object
        fetched on the cache's threads since."""
        if self.cache is None or self.read_ahead <= 0:
            return index.sample(rng)
        while len(self._ahead) < self.read_ahead:
            k = index.sample(rng)
            self._ahead.append(k)
            self.cache.prefetch(str(index.path(k)))
        return self._ahead.popleft()

    # ---- batches ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info else 0
        if self.seed is not None:  # rank 0 draws as the single learner does; other ranks draw their own
            rng = np.random.default_rng([int(self.seed), worker] + ([self.rank] if self.rank else []))
        else:
            rng = np.random.default_rng(info.seed if info else None)
        index = ReplayStoreIndex(self.folder, (self.rank, self.world_size))
        remote = isinstance(self.folder, RemotePath) and self.cache_mb > 0
        self.cache = ReadCache(int(self.cache_mb * 2**20)) if remote else None
        self._ahead.clear()
        self._wait_for_episodes(index)
        last_scan = self.clock()
        lanes = [_Lane() for _ in range(self.batch_size)]
        like: dict | None = None
        T, B = self.batch_length, self.batch_size
        worker_tensor = torch.tensor(worker, dtype=torch.int64)
        while True:
            if self.reload_interval > 0 and self.clock() - last_scan >= self.reload_interval:
                index.scan()
                last_scan = self.clock()
            out: dict[str, np.ndarray] | None = None
            for b, lane in enumerate(lanes):
                t = 0
                while t < T:
                    if lane.episode is None or lane.pos >= lane.rows:
                        first = lane.episode is None
                        lane.episode = self._load(index, rng, like)
                        lane.rows = len(lane.episode["reward"])
                        # Lanes start at random points of their first episode, so they do not all
                        # reach episode ends in the same batch.
                        lane.pos = int(rng.integers(lane.rows)) if (first and self.skip_first) else 0
                        if like is None:
                            like = lane.episode
                    if out is None:
                        out = {
                            key: np.zeros((T, B) + like[key].shape[1:], dtype=dt) for key, dt in self.out_types.items()
                        }
                    n = min(T - t, lane.rows - lane.pos)
                    ep, a = lane.episode, lane.pos
                    for key in self.out_types:
                        out[key][t : t + n, b] = ep[key][a : a + n]
                    t += n
                    lane.pos += n
            batch = {key: torch.from_numpy(v) for key, v in out.items()}
            batch["worker"] = worker_tensor
            if self.new_skips:  # the learner counts and names them in MLflow (DataLoader workers are other processes)
                batch["skipped"], self.new_skips = self.new_skips, []
            yield batch


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)
    # torchrun stops a learner rank with a SIGTERM to the rank's whole process group: a reader process
    # leaves quietly (exit 0), so the rank's DataLoader does not raise "worker killed by signal" in the
    # middle of the rank's last checkpoint.
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))


def make_replay_loader(conf: Mapping[str, Any], replay_dir: Path | str, split: str = "train",
                       n_tokens: int | None = None, cache_mb: float = 512.0, rank: int = 0,
                       world_size: int = 1, spec: EpisodeSpec | None = None) -> DataLoader:
    """The learner's batch stream: a DataLoader over a ReplayReader with `data_workers` processes
    (episodes unlike `spec`, or with token ids at or above `n_tokens`, are skipped; a bucket's episodes are
    cached in each worker, up to `cache_mb`); learner rank `rank` of `world_size` reads only its share
    of the store. With `observation: mel` the batches also hold `mel` (episodes without it are skipped);
    with labels in `condition`, `condition` ids (see `replay_condition`)."""
    reader = ReplayReader(
        replay_dir,
        split=split,
        batch_size=conf["batch_size"],
        batch_length=conf["batch_length"],
        reload_interval=conf["replay_reload_interval"],
        wait_seconds=conf["learner_wait_s"],
        seed=conf["seed"],
        n_tokens=n_tokens,
        cache_mb=cache_mb,
        rank=rank,
        world_size=world_size,
        observation=conf.get("observation", "tokens"),  # configs from before the key: tokens
        condition=replay_condition(conf),
        spec=spec,
    )
    workers = conf["data_workers"]
    return DataLoader(
        reader,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_init_worker if workers else None,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )


def replay_condition(conf: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(label name, train vocabulary) per label of `conf["condition"]` from the corpus' meta.json (of a bucket
    data_dir: fetched first); [] unread when unconditioned. ConditionError, one line, for a label it lacks."""
    names = list(conf.get("condition") or ())  # configs from before the key: unconditioned
    if not names:
        return []
    from tokenizer.bucket import local_data_dir  # the bucket machinery only where a label is asked for

    data_dir = local_data_dir(conf["data_dir"], parts=("tokens/meta.json",), required=False)
    return condition_vocabulary(DataLayout.of(data_dir), names)


def episode_batch(episodes: list[dict], max_steps: int,
                  condition: Condition = ()) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Whole episodes (cut to `max_steps` rows) as one time-major batch, zero-padded, with the
    mask of real rows [T, B]; row 0 of each column is its episode's reset step; `mel` too when they all
    hold it; `condition` int64 [T, B, C] when given (label name, vocabulary) pairs, as the reader makes it."""
    lengths = [min(len(e["reward"]), max_steps) for e in episodes]
    T, B = max(lengths), len(episodes)
    like = episodes[0]
    types = _MEL_TYPES if all("mel" in e for e in episodes) else _OUT_TYPES  # a mel model's eval reads `mel` too
    out = {key: np.zeros((T, B) + like[key].shape[1:], dtype=dt) for key, dt in types.items()}
    mask = np.zeros((T, B), bool)
    for b, (e, n) in enumerate(zip(episodes, lengths)):
        for key in types:
            out[key][:n, b] = e[key][:n]
        mask[:n, b] = True
    if condition:
        out["condition"] = np.zeros((T, B, len(condition)), np.int64)
        for b, (e, n) in enumerate(zip(episodes, lengths)):
            out["condition"][:n, b] = condition_codes(episode_labels(e), condition)
    out["reset"][:] = False
    out["reset"][0] = True
    return out, mask
