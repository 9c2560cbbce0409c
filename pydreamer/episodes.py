"""Episode files of the replay store: one npz (no pickles) per episode.

An episode of T env steps has T+1 rows (row 0 is the observation after reset):
- `tokens` [T+1, G] int: the observed tokens (any other observation key is stored the same way);
- `mel` [T+1, D] float16, optional (an env with `observation: mel`): each row's log-mel frames, read
  back as float32;
- `action` [T+1, A] float32: one-hot of the action that led to the row (row 0: zeros, as in pydreamer);
- `reward` [T+1] float32 (row 0: 0), `terminal` [T+1] bool (the env terminated there),
  `reset` [T+1] bool (True on row 0 only);
- ids as 0-d arrays: `utterance_id` (unicode), `worker`, `episode`, `split`;
- `label_<name>` 0-d unicode, optional: the utterance's conditioning labels (the env's `info["labels"]`),
  one member per label the utterance has; the replay reader turns them into `condition` ids.

The file name `w<worker>-e<episode>-n<T>.npz` carries what the reader needs to sample by
length without opening the file. Files are written to a temporary name and renamed; in a bucket
(`s3://...`, see runtime/storage.py) each is one PUT of the whole object. Either way a reader sees
an episode whole or not at all.
"""
from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from runtime import storage
from runtime.files import atomic_save_npz
from runtime.s3 import RemotePath
from runtime.storage import store_path

STEP_KEYS = ("tokens", "action", "reward", "terminal", "reset")
OPTIONAL_STEP_KEYS = ("mel",)  # per-step too, when present: checked, and loaded when asked for
LABEL_PREFIX = "label_"  # `label_<name>`: one conditioning label of the episode's utterance
Condition = Sequence[tuple[str, Sequence[str]]]  # (label name, its vocabulary) per label conditioned on
_NAME = re.compile(r"^w(\d+)-e(\d+)-n(\d+)\.npz$")


class EpisodeError(ValueError):
    """An episode file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class EpisodeSpec:
    """What every episode of a store must be, from the token corpus (the model's dimensions), never from
    the first file read: token ids below `n_tokens`, `tokens_per_step` (G) tokens and `action_dim` (A)
    numbers per row, `mel_dim` numbers per row of `mel` when a reader needs it. None: not checked."""

    n_tokens: int | None = None
    tokens_per_step: int | None = None
    action_dim: int | None = None
    mel_dim: int | None = None


ROW_BYTES_LIMIT = 1 << 16  # what one row of one member may hold: a file promising more is refused unread


def episode_filename(worker: int, index: int, length: int) -> str:
    """`w<worker>-e<index>-n<length>.npz`; length = env steps T (the file has T+1 rows)."""
    return f"w{worker:02d}-e{index:06d}-n{length:04d}.npz"


def parse_episode_filename(name: str) -> tuple[int, int, int] | None:
    """(worker, index, length) from a file name, or None when the name is not an episode's."""
    m = _NAME.match(name)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def save_episode(path: Path | str, episode: dict) -> Path:
    """Check and write one episode atomically (temporary name, then rename; on S3 a single PUT)."""
    path = store_path(path)
    missing = [k for k in STEP_KEYS if k not in episode]
    if missing:
        raise EpisodeError(f"{path}: episode lacks {', '.join(missing)}")
    arrays = {k: np.asarray(v) for k, v in episode.items()}
    rows = len(arrays["reward"])
    for k in STEP_KEYS + tuple(k for k in OPTIONAL_STEP_KEYS if k in arrays):
        if arrays[k].ndim == 0 or len(arrays[k]) != rows:
            raise EpisodeError(f"{path}: '{k}' has shape {arrays[k].shape}, expected {rows} rows")
    for k, v in arrays.items():
        if v.dtype == object:
            raise EpisodeError(f"{path}: '{k}' holds Python objects; episodes are plain arrays")
    _check_labels(path, arrays)
    if isinstance(path, RemotePath):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        storage.write_bytes_atomic(path, buf.getvalue())
    else:
        atomic_save_npz(path, **arrays)
    return path


def load_episode(path: Path | str, keys: tuple[str, ...] | None = None, n_tokens: int | None = None,
                 cache: storage.ReadCache | None = None, spec: EpisodeSpec | None = None) -> dict:
    """The arrays of one episode file (all, or `keys` plus the per-step ones: reading fewer is
    faster), checked with `check_episode` against `spec` (or just token ids below `n_tokens`) and its
    rows against the length its name gives; raises EpisodeError naming the file when it cannot be used:
    not a regular file (a FIFO would block the reader), a member that is not an array, or one larger
    than the rows its name promises can hold (a small file that inflates to gigabytes is never decoded).
    An `s3://` episode is read whole (one GET) and opened from memory; with a `cache` (one reader's: the same `keys` and `n_tokens` every time)
    it is kept there decoded and checked, its arrays shared by the callers (who must not change them)."""
    path = store_path(path)
    spec = spec or EpisodeSpec(n_tokens=n_tokens)
    source: Any = path
    head: bytes | None = None
    remote = isinstance(path, RemotePath)
    named = parse_episode_filename(path.name)
    if not remote:
        _check_regular(path)
    else:
        cached = cache.get(str(path)) if cache is not None else None
        if isinstance(cached, dict):  # episodes never change once written
            return dict(cached)
        try:
            source = cached if cached is not None else storage.read_bytes(path)
        except (FileNotFoundError, PermissionError) as e:  # listed, then deleted; or refused: as for a file
            raise EpisodeError(f"{path}: unreadable ({e.strerror or e})") from None
        head = source[:4]
        source = io.BytesIO(source)
    try:
        with np.load(source, allow_pickle=False) as z:
            missing = [k for k in STEP_KEYS if k not in z.files]
            if missing:
                raise EpisodeError(f"{path}: episode lacks {', '.join(missing)}")
            wanted = z.files if keys is None else [k for k in z.files if k in keys or k in STEP_KEYS]
            _check_sizes(path, z, wanted, named[2] + 1 if named else None)
            data = {k: z[k] for k in wanted}
            odd = [k for k, v in data.items() if not isinstance(v, np.ndarray)]
            if odd:
                raise EpisodeError(f"{path}: member '{odd[0]}' is not an array (.npy); episodes hold arrays only")
    except EpisodeError:
        raise
    except Exception as e:  # truncated zip, bad header, pickled member, missing file ...
        raise EpisodeError(f"{path}: {_unreadable_reason(path, e, head)}") from None
    rows = data["reward"].shape[0] if data["reward"].ndim else -1
    bad = [k for k in STEP_KEYS if data[k].ndim == 0 or data[k].shape[0] != rows]
    if bad or rows < 1:
        raise EpisodeError(f"{path}: per-step arrays disagree in length ({', '.join(bad) or 'reward'})")
    check_episode(path, data, spec=spec)
    if named and rows != named[2] + 1:
        raise EpisodeError(f"{path}: {rows} rows, but its name says {named[2]} steps ({named[2] + 1} rows)")
    if "mel" in data:  # float16 on disk (half the bytes), float32 to compute with
        data["mel"] = data["mel"].astype(np.float32)
    if remote and cache is not None:
        cache.put(str(path), dict(data), size=sum(v.nbytes for v in data.values()))
    return data


def _check_regular(path: Path) -> None:
    """A local episode must be a regular file: opening a FIFO or a device would block or never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise EpisodeError(f"{path}: unreadable ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise EpisodeError(f"{path}: not a regular file (a FIFO, a device or a folder); episodes are files")


def _check_sizes(path: Path, z: Any, members: Sequence[str], rows: int | None) -> None:
    """Refuse, before decoding, a member larger than `rows` rows can hold (ROW_BYTES_LIMIT each)."""
    limit = ROW_BYTES_LIMIT * (rows if rows is not None else 4096) + 4096
    archive: zipfile.ZipFile = z.zip
    stored = set(archive.namelist())
    for key in members:
        name = key if key in stored else key + ".npy"
        size = archive.getinfo(name).file_size
        if size > limit:
            raise EpisodeError(f"{path}: member '{key}' inflates to {size:,} bytes, more than {limit:,} for "
                               f"{rows if rows is not None else 'an unnamed file of up to 4096'} rows; not read")


def _unreadable_reason(path: Path, error: Exception, head: bytes | None = None) -> str:
    """Why np.load failed, in words: no bytes, not an npz at all, or an npz cut short or damaged
    (`head`: the first bytes, when they were read already)."""
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError as e:
            return f"unreadable ({e.strerror or e})"
    if not head:
        return "empty file (0 bytes)"
    if head != b"PK\x03\x04":
        return "not an npz file (it does not start like one)"
    return f"unreadable: truncated or damaged ({type(error).__name__}: {error})"


def check_episode(path: Path | str, data: dict, n_tokens: int | None = None, spec: EpisodeSpec | None = None) -> None:
    """Types, shapes, ranges and finiteness of the per-step arrays (against `spec` when given), so a file
    made by another writer (or damaged) is refused when it is read, not met as an index error or a NaN
    loss in the learner. The optional `mel` and the `label_*` members are checked when present."""
    spec = spec or EpisodeSpec(n_tokens=n_tokens)
    n_tokens = spec.n_tokens
    tokens, action = data["tokens"], data["action"]
    if tokens.ndim != 2 or not _of(tokens, np.integer):
        raise EpisodeError(f"{path}: 'tokens' must be integer ids [steps, G], not {tokens.dtype} {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or (n_tokens is not None and tokens.max() >= n_tokens)):
        limit = f"0..{n_tokens - 1} (the codebook has {n_tokens} codes)" if n_tokens is not None else "0 or more"
        raise EpisodeError(f"{path}: token ids range {tokens.min()}..{tokens.max()}, expected {limit}")
    if action.ndim != 2 or not _of(action, np.floating, np.integer, np.bool_):
        raise EpisodeError(f"{path}: 'action' must be numbers [steps, A], not {action.dtype} {action.shape}")
    if data["reward"].ndim != 1:
        raise EpisodeError(f"{path}: 'reward' must be one number per step [steps], not {data['reward'].shape}")
    _check_widths(path, data, spec)
    for key in ("action", "reward"):
        value = data[key]
        if not _of(value, np.floating, np.integer, np.bool_):
            raise EpisodeError(f"{path}: '{key}' must be numbers, not {value.dtype}")
        if _of(value, np.floating) and not np.isfinite(value).all():
            row = int(np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(1))[0])
            raise EpisodeError(f"{path}: '{key}' holds NaN or infinite values (first at row {row})")
    for key in ("terminal", "reset"):
        value = data[key]
        if value.ndim != 1 or not _of(value, np.bool_, np.integer) or (
                not _of(value, np.bool_) and not np.isin(value, (0, 1)).all()):
            raise EpisodeError(f"{path}: '{key}' must be true/false per step, not {value.dtype} {value.shape}")
    mel = data.get("mel")
    if mel is not None:
        if mel.ndim != 2 or not _of(mel, np.floating) or len(mel) != len(tokens):
            raise EpisodeError(f"{path}: 'mel' must be floating-point frames [{len(tokens)} steps, D], not "
                               f"{mel.dtype} {mel.shape}")
        if not np.isfinite(mel).all():
            row = int(np.flatnonzero(~np.isfinite(mel).all(1))[0])
            raise EpisodeError(f"{path}: 'mel' holds NaN or infinite values (first at row {row})")
    _check_labels(path, data)


def _check_widths(path: Any, data: dict, spec: EpisodeSpec) -> None:
    """Numbers per step of `tokens`, `action` and `mel` as the corpus and the model have them."""
    widths = (("tokens", spec.tokens_per_step, "tokens per step (G) of the token corpus"),
              ("action", spec.action_dim, "action numbers per step"),
              ("mel", spec.mel_dim, "log-mel numbers per step (time_downsample x n_mels)"))
    for key, want, what in widths:
        value = data.get(key)
        if want is not None and value is not None and value.ndim == 2 and value.shape[1] != want:
            raise EpisodeError(f"{path}: '{key}' has {value.shape[1]} numbers per step; the store's spec has "
                               f"{want} {what}")


def _check_labels(path: Any, data: dict) -> None:
    """Each `label_*` is one string: the reader compares it with a vocabulary, and arrays never match."""
    for key in (k for k in data if k.startswith(LABEL_PREFIX)):
        value = np.asarray(data[key])
        if value.ndim != 0 or not _of(value, np.str_):
            raise EpisodeError(f"{path}: '{key}' must be a 0-d string (a label of the episode's utterance), not "
                               f"{value.dtype} {value.shape}")


def label_members(labels: dict[str, str]) -> dict[str, str]:
    """The env's `info["labels"]` as the episode's members: {`label_<name>`: value}, empty values left out."""
    return {LABEL_PREFIX + str(name): str(value) for name, value in labels.items() if str(value)}


def label_keys(names: Iterable[str]) -> tuple[str, ...]:
    """The members holding labels `names` (to load just those with `load_episode(keys=...)`)."""
    return tuple(LABEL_PREFIX + name for name in names)


def episode_labels(data: dict) -> dict[str, str]:
    """The labels an episode (as loaded) holds: {name: value}."""
    return {k[len(LABEL_PREFIX):]: str(v) for k, v in data.items() if k.startswith(LABEL_PREFIX)}


def condition_codes(labels: Mapping[str, str], condition: Condition) -> np.ndarray:
    """int64 [C]: per (label name, vocabulary) of `condition`, 1 + the index of `labels`' value in the
    vocabulary, else 0 ("none": the label is missing, or its value was never seen in the train split)."""
    codes = np.zeros(len(condition), np.int64)
    for c, (name, vocabulary) in enumerate(condition):
        value = labels.get(name)
        if value in vocabulary:
            codes[c] = 1 + list(vocabulary).index(value)
    return codes


def iter_episode_names(folder: Path | str) -> Iterator[tuple[str, tuple[int, int, int]]]:
    """(relative path, (worker, index, length)) of every episode under `folder` and its worker folders.

    Lists names only (locally os.scandir without stat calls; on S3 ListObjectsV2 pages), so listing
    a store of 100,000 episodes stays cheap. A reader that lists again and again uses EpisodeListing.
    """
    yield from EpisodeListing(folder).new()


class EpisodeListing:
    """The episodes of a store folder, listed incrementally: each `new()` returns only those that
    appeared since the last call.

    It remembers, per worker folder, the last name it saw. A generator writes a worker folder's
    episodes in order of their index, zero-padded in the name (up to 999,999 per worker), so new
    names sort after the last one seen: on S3, `new()` costs one delimiter listing of the folder (to
    find new worker folders) plus one ListObjectsV2 with `StartAfter` per worker folder, whatever
    the store holds already. (Locally a folder is one scandir anyway; the same rule filters it.)
    Episodes deleted after they were listed are not noticed here: reading them fails, and the
    replay reader skips them.
    """

    def __init__(self, folder: Path | str):
        self.folder = store_path(folder)
        self.last: dict[str, str] = {}  # worker folder ('' for the top folder) -> the last name seen

    def new(self) -> list[tuple[str, tuple[int, int, int]]]:
        out: list[tuple[str, tuple[int, int, int]]] = []
        top = storage.list_after(self.folder)
        fresh = [(name, size) for name, size in top.files if name > self.last.get("", "")]
        self._take("", fresh, out)
        for sub in top.folders:
            self._take(sub, storage.list_after(self.folder / sub, self.last.get(sub, "")).files, out)
        return out

    def _take(self, sub: str, files: list[tuple[str, int]], out: list) -> None:
        if not files:
            return
        self.last[sub] = files[-1][0]
        for name, _ in files:
            parsed = parse_episode_filename(name)
            if parsed:
                out.append((f"{sub}/{name}" if sub else name, parsed))


def list_episodes(folder: Path | str) -> list[Path]:
    """Every episode file under `folder` (`folder/*.npz` and `folder/<worker>/*.npz`), sorted."""
    folder = store_path(folder)
    return sorted(folder / rel for rel, _ in iter_episode_names(folder))


def episode_length(path: Path | str) -> int:
    """Env steps T of an episode, from its file name."""
    parsed = parse_episode_filename(store_path(path).name)
    if parsed is None:
        raise EpisodeError(f"{path}: not an episode file name (expected w<worker>-e<index>-n<length>.npz)")
    return parsed[2]


def _of(array: np.ndarray, *types: type) -> bool:
    """The array's dtype is one of these numpy type families (np.integer: signed and unsigned)."""
    return any(np.issubdtype(array.dtype, t) for t in types)


def _token_dtype(tokens: np.ndarray):
    """The smallest integer type holding the tokens (int16 for any codebook up to 32,768 codes)."""
    if tokens.size == 0 or not _of(tokens, np.integer):
        return tokens.dtype
    lo, hi = tokens.min(), tokens.max()
    for dt in (np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return dt
    return tokens.dtype


class EpisodeBuilder:
    """Collects one episode step by step in the file's row layout (row 0 = the reset observation)."""

    def __init__(self, obs: dict[str, Any], n_actions: int):
        self.keys = list(obs)
        self.rows = {k: [obs[k]] for k in self.keys}
        self.n_actions = n_actions
        self.actions: list[int] = []
        self.rewards, self.terminals = [0.0], [False]

    def add(self, action: int, obs: dict[str, Any], reward: float, terminated: bool) -> None:
        """`action` (0-based) led to `obs`, `reward` and `terminated`."""
        for k in self.keys:
            self.rows[k].append(obs[k])
        self.actions.append(action)
        self.rewards.append(reward)
        self.terminals.append(terminated)

    @property
    def length(self) -> int:
        """Env steps T so far (the episode has T+1 rows)."""
        return len(self.rewards) - 1

    def finish(self, **ids: Any) -> dict[str, np.ndarray]:
        """The episode's arrays, ids (utterance_id, worker, episode, split, and `label_<name>`: see
        `label_members`) as 0-d arrays."""
        T = self.length
        action = np.zeros((T + 1, self.n_actions), np.float32)
        action[1 + np.arange(T), np.asarray(self.actions, np.int64)] = 1.0
        episode = {k: np.stack(v) for k, v in self.rows.items()}
        episode["tokens"] = episode["tokens"].astype(_token_dtype(episode["tokens"]))
        if "mel" in episode:  # half the bytes; float16 keeps 3 digits of the env's values (clipped into +-20)
            episode["mel"] = episode["mel"].astype(np.float16)
        reset = np.zeros(T + 1, bool)
        reset[0] = True
        episode.update(action=action, reward=np.asarray(self.rewards, np.float32),
                       terminal=np.asarray(self.terminals, bool), reset=reset)
        episode.update({k: np.asarray(v) for k, v in ids.items()})
        return episode
