"""A `data_dir` in a bucket (`s3://bucket/prefix`): everything works on this host's copy of it.

Readers (generators, the learner, evaluate, dream) fetch the parts they read (`local_data_dir`).
A tokenizer stage fetches what it may read, runs in the copy as in a local folder, and when it
succeeds sends back what it wrote and removed (`fetch_for_stage`, `send_back`), the files that mark
finished output last (tokenizer.records.marks_done). A stage that fails sends nothing: the bucket
keeps what it had, and the copy keeps the partial output for the next try on this host.
The copies live under runtime.sync.cache_root(); runtime/sync.py does the transfers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from runtime import storage, sync
from tokenizer.layout import DataLayout
from tokenizer.parts import RECORD, Share
from tokenizer.records import marks_done
from tokenizer.tokens import MissingTokensError


def local_data_dir(data_dir: Path | str, parts: Sequence[str] = ("tokens",), required: bool = True) -> Path | str:
    """`data_dir` as a local folder: a bucket's `parts` (default: the tokens, all the env and the learner
    read) are fetched into this host's copy first, and again when they change there. A local folder
    comes back as it is. MissingTokensError when the bucket holds none of `parts` and they are `required`."""
    if not storage.is_remote(str(data_dir)):
        return data_dir
    root = storage.RemotePath(str(data_dir))
    try:
        return sync.mirror(root, parts=parts, missing_ok=not required)
    except FileNotFoundError as e:
        raise MissingTokensError(
            f"no {' or '.join(parts)} in {root} ({e.strerror}): make the tokens there with python -m tokenizer "
            f"prepare|train|encode --data_dir {root} (or on one machine, then: python -m runtime.sync copy "
            f"DATA/tokens {root}/tokens)") from None


def _part_data(stage: str, share: Share | None) -> Callable[[str], bool]:
    """Which objects a stage need not fetch: worker parts' data, but for `merge` (all of it) and a
    worker (its own part); the parts' records are always fetched (they say whether parts wait for a merge)."""
    own = f"parts/{stage}/{share.name}/" if share is not None else None

    def skip(rel: str) -> bool:
        return (stage != "merge" and rel.startswith("parts/") and not rel.endswith(f"/{RECORD}")
                and not (own and rel.startswith(own)))

    return skip


def fetch_for_stage(data_dir: str, stage: str, share: Share | None = None) -> Path:
    """This host's copy of a bucket `data_dir`, up to date for running `stage` (or "merge", or "all") in it."""
    return sync.mirror(data_dir, skip=_part_data(stage, share), missing_ok=True)


def fetch_for_launch(data_dir: str) -> Path:
    """This host's copy of a bucket `data_dir` for launch.py: the finished tokens with what says how they
    were made (not the log-mels: a GPU host training on a large corpus need not hold them); when the
    tokens are not there yet, all that the stages read, for launch.py to make them."""
    local = sync.mirror(data_dir, parts=("manifest.json", "settings", "tokenizer", "tokens", "parts"),
                        skip=_part_data("all", None), missing_ok=True)
    if DataLayout.of(local).has_tokens():
        return local
    return fetch_for_stage(data_dir, "all")


def send_back(local: Path, data_dir: str) -> str:
    """Send a stage's changes in this host's copy to the bucket; returns the line that says what went."""
    sent, deleted = sync.push(local, data_dir, last=marks_done)
    return f"{data_dir}: sent {sent} files from {local}" + (f", deleted {deleted}" if deleted else "")
