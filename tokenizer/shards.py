"""Utterance shards: many utterances per npz file, so a large corpus is a few hundred files.

A shard holds, without pickles:
- `offsets` int64 [N+1]: utterance i spans rows offsets[i]:offsets[i+1] of every per-step array;
- per-step arrays concatenated along axis 0 (e.g. `mel` [sum F, 80], `tokens` [sum T, G], `voice` [sum T]);
- per-utterance arrays of length N (e.g. `utterance_id`, `speaker`, `source` as unicode, `mean`, `std`;
  `label_<name>` unicode: the utterance's conditioning label `name`, '' where it has none);
- `step_keys` [K] unicode: which arrays are per-step (the rest, but `offsets`, are per-utterance).

Writers stream: they hold at most one shard in memory and write it to a temporary name
before renaming, so a reader never sees half a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from runtime.files import atomic_save_npz

SHARD_GLOB = "shard-*.npz"
LABEL_PREFIX = "label_"  # per-utterance `label_<name>` arrays: conditioning labels, carried stage to stage


class ShardWriter:
    """Collects utterances and writes `<prefix>-00000.npz`, ... once `max_rows` steps are held.

    `add(per_step={...}, per_utterance={...})`: per-step arrays share their first axis.
    """

    def __init__(self, folder: Path | str, max_rows: int = 200_000, prefix: str = "shard"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.prefix = prefix  # file names are <prefix>-00000.npz, ...; keep them matching SHARD_GLOB
        self.n_shards = 0
        self.n_utterances = 0
        self.n_rows = 0
        self._reset()

    def _reset(self) -> None:
        self._steps: dict[str, list[np.ndarray]] = {}
        self._utts: dict[str, list] = {}
        self._lengths: list[int] = []

    def add(self, per_step: dict[str, np.ndarray], per_utterance: dict[str, object]) -> None:
        lengths = {k: len(v) for k, v in per_step.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"per-step arrays differ in length: {lengths}")
        if self._lengths and (set(per_step) != set(self._steps) or set(per_utterance) != set(self._utts)):
            raise ValueError("every utterance in a shard needs the same keys")
        for k, v in per_step.items():
            self._steps.setdefault(k, []).append(np.asarray(v))
        for k, v in per_utterance.items():
            self._utts.setdefault(k, []).append(v)
        n = next(iter(lengths.values()))
        self._lengths.append(n)
        self.n_utterances += 1
        self.n_rows += n
        if sum(self._lengths) >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        if not self._lengths:
            return
        arrays: dict[str, np.ndarray] = {
            "offsets": np.concatenate([[0], np.cumsum(self._lengths)]).astype(np.int64)
        }
        arrays["step_keys"] = np.asarray(sorted(self._steps))
        for k, parts in self._steps.items():
            arrays[k] = np.concatenate(parts, axis=0)
        for k, values in self._utts.items():
            arrays[k] = np.asarray(values)  # strings become fixed-width unicode, never objects
            if arrays[k].dtype == object:
                raise ValueError(f"per-utterance value '{k}' is not a plain number or string")
        atomic_save_npz(self.folder / f"{self.prefix}-{self.n_shards:05d}.npz", **arrays)
        self.n_shards += 1
        self._reset()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


def shard_paths(folder: Path | str) -> list[Path]:
    return sorted(Path(folder).glob(SHARD_GLOB))


def read_shard(path: Path | str) -> list[dict]:
    """All utterances of one shard, each a dict of its per-step slices and per-utterance values."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    offsets = data.pop("offsets")
    step_keys = set(data.pop("step_keys").tolist())
    n = len(offsets) - 1
    utts = []
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        u = {k: (data[k][a:b] if k in step_keys else _scalar(data[k][i])) for k in data}
        utts.append(u)
    return utts


def _scalar(v):
    return v.item() if isinstance(v, np.generic) else v


def iter_utterances(folder: Path | str) -> Iterator[dict]:
    """Stream every utterance of a split, one shard in memory at a time."""
    for path in shard_paths(folder):
        yield from read_shard(path)


def iter_rows(folder: Path | str) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.generic]]]:
    """Every utterance of a split as (per-step slices, per-utterance values), the values kept as numpy
    scalars and the keys in the order written: handed to `ShardWriter.add` in the same order, they
    give back the same arrays (dtypes included). One shard in memory at a time."""
    for path in shard_paths(folder):
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        offsets = data.pop("offsets")
        step_keys = set(data.pop("step_keys").tolist())
        for i in range(len(offsets) - 1):
            a, b = offsets[i], offsets[i + 1]
            yield ({k: v[a:b] for k, v in data.items() if k in step_keys},
                   {k: v[i] for k, v in data.items() if k not in step_keys})
