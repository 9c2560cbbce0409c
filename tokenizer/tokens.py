"""The token corpus: the one reader and writer of `<data_dir>/tokens/` (the tokenizer's output).

    tokens/meta.json                  codebook size, tokens per step, steps per second, mel statistics,
                                      `labels`: {label name: sorted distinct values in the train split}
    tokens/{train,val,test}/shard-*.npz   utterance shards (see shards.py): per step `tokens` [T, G]
                                      int16 and `voice` [T]; per utterance `utterance_id`, `speaker`, `source`
                                      and `label_<name>` (a conditioning label; '' where the utterance has none)

The env, the learner, the evaluator, the benchmarks and the tests read it through here, so
the format has one owner: `TokenSpec` says what a step is, `TokenSplit` indexes one split
lazily (a few bytes per utterance) and reads validated utterances from their shards;
`condition_vocabulary` says what a model conditioned on some labels can be told. A corpus
prepared before labels were kept has no `label_*` arrays and no meta `labels`: it reads as a
corpus without labels.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from runtime.files import atomic_write_text
from tokenizer.layout import DataLayout
from tokenizer.shards import LABEL_PREFIX, shard_paths
from tokenizer.split import SPLITS

log = logging.getLogger(__name__)

MAKE_TOKENS_COMMAND = "python -m tokenizer prepare|train|encode --configs defaults audio --data_dir {data_dir}"


class MissingTokensError(FileNotFoundError):
    """The token corpus (or one split of it) is not there yet."""


class ShardError(ValueError):
    """A token shard that cannot be used; the message names the file and the reason."""


class ConditionError(ValueError):
    """Conditioning on a label the corpus does not have; one line naming the data folder and the label."""


@dataclass(frozen=True)
class TokenSpec:
    """What one step of the corpus is: everything a model or a dream needs to know about the tokens."""

    codebook_size: int
    tokens_per_step: int
    steps_per_second: float = 25.0
    mel_mean: float = 0.0  # the corpus' typical log-mel level and spread: dreams have no utterance of their own
    mel_std: float = 1.0

    @property
    def bits_per_second(self) -> float:
        return self.steps_per_second * self.tokens_per_step * float(np.log2(self.codebook_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_token_meta(layout: DataLayout, meta: Mapping[str, Any]) -> None:
    """`tokens/meta.json` (written last by encode, atomically: its presence means the corpus is complete)."""
    missing = [k for k in ("codebook_size", "tokens_per_step", "steps_per_second") if k not in meta]
    if missing:
        raise ValueError(f"token meta lacks {', '.join(missing)}")
    atomic_write_text(layout.token_meta, json.dumps(dict(meta), indent=2))


def read_token_meta(layout: DataLayout) -> dict:
    """`tokens/meta.json` as a dict, or {} when absent; a file that is not JSON is an error naming it."""
    path = layout.token_meta
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return meta


def read_token_spec(layout: DataLayout, codebook_size: int | None = None) -> TokenSpec:
    """The corpus' TokenSpec from meta.json; without one, the train shards say G and the largest
    token (or `codebook_size`, when larger) says the codebook size."""
    meta = read_token_meta(layout)
    fields = {k: meta[k] for k in ("steps_per_second", "mel_mean", "mel_std") if k in meta}
    if meta.get("tokens_per_step") and meta.get("codebook_size"):
        return TokenSpec(int(meta["codebook_size"]), int(meta["tokens_per_step"]), **fields)
    paths = [p for split in SPLITS for p in shard_paths(layout.tokens(split))]
    if not paths:
        raise MissingTokensError(
            f"no token corpus in {layout.root}: create it with `{MAKE_TOKENS_COMMAND.format(data_dir=layout.root)}`")
    with np.load(paths[0], allow_pickle=False) as z:
        first = z["tokens"]
    g = int(meta.get("tokens_per_step") or first.shape[1])
    k = int(meta.get("codebook_size") or max(codebook_size or 0, int(first.max()) + 1))
    return TokenSpec(k, g, **fields)


class TokenSplit:
    """One split of the corpus: a compact index (shard, row, id, length per utterance) and
    validated reads, one shard in memory at a time. Unreadable shards are skipped, named in
    `skipped_shards`, and never read again.
    """

    def __init__(self, layout: DataLayout, split: str, spec: TokenSpec | None = None):
        self.layout, self.split = layout, split
        self.folder = layout.tokens(split)
        self.spec = spec
        self.skipped_shards: dict[str, str] = {}  # shard path -> why it is not used
        shards, shard_of, row_of, ids, speakers, lengths = [], [], [], [], [], []
        labels: list[dict[str, np.ndarray]] = []  # per shard: label name -> per-utterance values
        for path in shard_paths(self.folder) if self.folder.is_dir() else []:
            try:
                with np.load(path, allow_pickle=False) as z:
                    offsets, uids = z["offsets"], z["utterance_id"]
                    spk = z["speaker"] if "speaker" in z.files else np.full(len(uids), "")
                    lab = {k[len(LABEL_PREFIX):]: z[k].astype(str) for k in z.files if k.startswith(LABEL_PREFIX)}
                if any(v.shape != uids.shape for v in lab.values()):
                    raise ValueError(f"label arrays {sorted(lab)} do not hold one value per utterance")
                if len(offsets) != len(uids) + 1:
                    raise ValueError(f"{len(offsets)} offsets for {len(uids)} utterances")
            except Exception as e:
                self.skip_shard(path, e)
                continue
            shard_of.append(np.full(len(uids), len(shards), np.int32))
            row_of.append(np.arange(len(uids), dtype=np.int32))
            ids.append(uids.astype(str))
            speakers.append(spk.astype(str))
            lengths.append(np.diff(offsets).astype(np.int64))
            labels.append(lab)
            shards.append(path)
        cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
        self.shards: list[Path] = shards
        self.shard_of, self.row_of = cat(shard_of, np.int32), cat(row_of, np.int32)
        self.ids, self.speakers, self.lengths = cat(ids, str), cat(speakers, str), cat(lengths, np.int64)
        # label name -> per-utterance value ('' where none), like `speakers`
        self.labels: dict[str, np.ndarray] = {
            name: cat([lab.get(name, np.full(len(u), "")) for lab, u in zip(labels, ids)], str)
            for name in sorted({n for lab in labels for n in lab})}
        self._cache_no, self._cache = -1, None
        if not len(self.ids):
            bad = (f" ({len(self.skipped_shards)} unreadable: {'; '.join(self.skipped_shards.values())})"
                   if self.skipped_shards else "")
            raise MissingTokensError(
                f"no token shards for split '{split}' in {self.folder}{bad}: create them with "
                f"`{MAKE_TOKENS_COMMAND.format(data_dir=layout.root)}`")

    def __len__(self) -> int:
        return len(self.ids)

    def skip_shard(self, path: Path, error: Exception) -> None:
        reason = f"{path}: {error}" if str(path) not in str(error) else str(error)
        self.skipped_shards[str(path)] = reason
        log.warning("skipping token shard (%d skipped): %s", len(self.skipped_shards), reason)

    def load_shard(self, no: int, keys: tuple[str, ...] = ("tokens", "voice")) -> dict:
        """One shard's `offsets` and `keys`, checked against the spec (G, codebook range); cached."""
        if no == self._cache_no and all(k in self._cache for k in keys):
            return self._cache
        self._cache, self._cache_no = None, -1  # free the old shard before reading the next
        path = self.shards[no]
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {key: z[key] for key in ("offsets",) + tuple(keys)}
        except KeyError as e:
            raise ShardError(f"{path}: token shard has no array {e}") from None
        except Exception as e:
            raise ShardError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
        tokens = data.get("tokens")
        if tokens is not None:
            if tokens.ndim != 2:
                raise ShardError(f"{path}: 'tokens' should be [steps, G], has shape {tokens.shape}")
            if self.spec is not None:
                if tokens.shape[1] != self.spec.tokens_per_step:
                    raise ShardError(f"{path}: {tokens.shape[1]} tokens per step, expected {self.spec.tokens_per_step}")
                if tokens.size and (tokens.min() < 0 or tokens.max() >= self.spec.codebook_size):
                    raise ShardError(f"{path}: tokens outside [0, codebook_size={self.spec.codebook_size})")
        self._cache, self._cache_no = data, no
        return data

    def utterance(self, u: int, keys: tuple[str, ...] = ("tokens", "voice")) -> dict:
        """Utterance number `u` of the index: its per-step arrays (tokens as int64), its id, speaker and
        `labels` {name: value} (the non-empty ones)."""
        data = self.load_shard(int(self.shard_of[u]), keys)
        i = int(self.row_of[u])
        a, b = int(data["offsets"][i]), int(data["offsets"][i + 1])
        out = {k: data[k][a:b] for k in keys}
        if "tokens" in out:
            out["tokens"] = out["tokens"].astype(np.int64)
        out["utterance_id"] = str(self.ids[u])
        out["speaker"] = str(self.speakers[u])
        out["labels"] = {name: str(v[u]) for name, v in self.labels.items() if str(v[u])}
        return out

    def find(self, utterance_id: str) -> int:
        hits = np.flatnonzero(self.ids == str(utterance_id))
        if len(hits) == 0:
            raise ValueError(f"utterance {utterance_id!r} is not in split '{self.split}' of {self.layout.root}")
        return int(hits[0])

    def __iter__(self) -> Iterator[dict]:
        """Every readable utterance in index order (shard by shard, so each shard is read once)."""
        for u in range(len(self)):
            if str(self.shards[int(self.shard_of[u])]) in self.skipped_shards:
                continue
            try:
                yield self.utterance(u)
            except ShardError as e:
                self.skip_shard(self.shards[int(self.shard_of[u])], e)


def condition_vocabulary(layout: DataLayout, names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(name, the train split's values from meta.json) for each requested label, in order: what a model
    conditioned on `names` can be told (any other value, e.g. a test-only voice, is "none").
    ConditionError, one line, when the corpus lacks a label; with no names nothing is read."""
    if not names:
        return []
    if not layout.token_meta.is_file():
        raise ConditionError(f"condition {list(names)}: no {layout.token_meta} in data_dir {layout.data_dir_arg}: "
                             f"create the tokens with `{MAKE_TOKENS_COMMAND.format(data_dir=layout.data_dir_arg)}`")
    known = read_token_meta(layout).get("labels") or {}
    for name in names:
        if name in known:
            continue
        if not known:
            raise ConditionError(
                f"condition: data_dir {layout.data_dir_arg} has no labels, so label '{name}' is unknown: the corpus "
                f"was prepared before labels were kept; remove its mels/ and tokens/ folders or use a new "
                f"--data_dir and run the tokenizer again")
        raise ConditionError(f"condition: data_dir {layout.data_dir_arg} has no label '{name}'; its labels: "
                             f"{', '.join(sorted(known))}")
    return [(name, [str(v) for v in known[name]]) for name in names]
