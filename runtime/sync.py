"""Local copies of a bucket's folders, kept in step both ways.

Whatever reads a `data_dir` in a bucket (generators, the learner, evaluate, dream) reads a local copy
of the parts it needs, fetched again where an object's ETag changed (`mirror`). A tokenizer stage
run on such a `data_dir` works in the same copy and then sends back what it wrote and deletes what it
removed (`push`), each file one PUT. The files that say "done" (a stage's last output, a worker part's
record) go up last and are deleted first, so a reader on another host never finds a marker before
the data it stands for.

A copy's state (`.sync-state.json`: each file's ETag and the local size and mtime it had then) tells
what changed on either side; a file lock serializes the processes of one host that share a copy.
`python -m runtime.sync copy SRC DST` copies a folder to or from a bucket; `ls URL` lists one.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

from runtime.files import atomic_write_text
from runtime.s3 import RemotePath, walk
from runtime.storage import read_bytes, remove, store_path, write_bytes_atomic

STATE = ".sync-state.json"
LOCK = ".sync.lock"
_OWN = (STATE, LOCK, ".mirror-etags.json")  # the copy's own files (the last: an older name of the state)
THREADS = 8  # transfers at once

Url = Union[str, RemotePath]


def cache_root() -> Path:
    """Where local copies of bucket folders are kept: $XDG_CACHE_HOME (or ~/.cache)/audio-world-model/s3."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audio-world-model" / "s3"


def copy_dir(url: Url) -> Path:
    """The local copy of a bucket folder on this host: cache_root()/<bucket>/<prefix>."""
    src = _remote(url)
    return cache_root() / src.bucket / src.key


def _remote(url: Url) -> RemotePath:
    return url if isinstance(url, RemotePath) else RemotePath(str(url))


def _within(rel: str, parts: Sequence[str]) -> bool:
    return not parts or any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in parts)


@contextmanager
def _locked(dest: Path) -> Iterator[dict]:
    """The copy's state, read under an exclusive lock and written back when the block ends (also on an
    error: what was transferred before it is recorded)."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads((dest / STATE).read_text())
        except (OSError, ValueError):
            state = {}
        state = {rel: entry for rel, entry in (state.items() if isinstance(state, dict) else ())
                 if isinstance(entry, dict) and {"etag", "size", "mtime_ns"} <= entry.keys()}  # else: fetched again
        before = json.dumps(state, sort_keys=True)
        try:
            yield state
        finally:
            if json.dumps(state, sort_keys=True) != before:
                atomic_write_text(dest / STATE, json.dumps(state, indent=0, sort_keys=True))


def _entry(etag: str, path: Path) -> dict:
    st = path.stat()
    return {"etag": etag, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _unchanged(entry: dict | None, path: Path) -> bool:
    """Whether the local file is still what it was when last fetched or sent (its size and mtime then)."""
    if entry is None:
        return False
    st = path.stat()
    return (st.st_size, st.st_mtime_ns) == (entry["size"], entry["mtime_ns"])


def _in_parallel(items: Sequence[str], work: Callable[[str], object], done: Callable[[str, object], None]) -> None:
    """`work(item)` for every item on THREADS threads (transfers wait on the network, not the CPU), then
    `done(item, result)` in this thread as each finishes; on an error, what finished is still `done`."""
    if len(items) <= 1:
        for item in items:
            done(item, work(item))
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(min(THREADS, len(items)), thread_name_prefix="sync") as pool:
        futures = {pool.submit(work, item): item for item in items}
        error = None
        for future in as_completed(futures):
            try:
                done(futures[future], future.result())
            except Exception as e:  # keep what the other transfers did, then raise the first error
                if error is None:
                    error = e
                    for f in futures:
                        f.cancel()
        if error is not None:
            raise error


def mirror(url: Url, dest: Union[str, os.PathLike, None] = None, parts: Sequence[str] = (),
           skip: Callable[[str], bool] | None = None, missing_ok: bool = False) -> Path:
    """Bring the local copy of the bucket folder `url` (default: copy_dir(url)) up to date and return it.

    Only the objects under `parts` (paths relative to `url`; all when empty), less those `skip` names.
    Objects new or whose ETag changed since the last call are downloaded (each to a temporary name,
    renamed); files that came from the bucket and are gone from it are removed here. A file made here
    and not pushed is kept. FileNotFoundError when nothing is there, unless `missing_ok`.
    """
    src = _remote(url)
    dest = Path(dest) if dest is not None else copy_dir(src)
    listed = [(rel, etag) for part in (parts or ("",)) for rel, _, etag in walk(src, under=part)
              if _within(rel, parts)]  # listed under each part only: a reader of tokens/ lists no log-mels
    objects = [(rel, etag) for rel, etag in listed if not (skip and skip(rel))]
    if not objects and not missing_ok:
        what = f" ({', '.join(parts)})" if parts else ""
        raise FileNotFoundError(2, f"nothing under this S3 folder{what}", str(src))
    with _locked(dest) as state:
        there = {rel for rel, _ in listed}
        etags = dict(objects)
        stale = [rel for rel, etag in objects
                 if rel not in state or state[rel]["etag"] != etag or not (dest / rel).exists()]
        _in_parallel(stale, lambda rel: write_bytes_atomic(dest / rel, read_bytes(src / rel)),
                     lambda rel, _: state.__setitem__(rel, _entry(etags[rel], dest / rel)))
        for rel in [r for r in state if r not in there and _within(r, parts)]:
            (dest / rel).unlink(missing_ok=True)  # deleted in the bucket (a merge removed its parts, ...)
            _prune_empty(dest, (dest / rel).parent)
            del state[rel]
    return dest


def _prune_empty(dest: Path, folder: Path) -> None:
    """Remove `folder` and its parents up to `dest` while no file lies below them: in the bucket, which has
    no folders, they are gone (a merged worker part, say), and a stage must not find them here."""
    import shutil

    while folder != dest and dest in folder.parents:
        if not folder.exists():
            folder = folder.parent
            continue
        if any(p.is_file() for p in folder.rglob("*")):
            return
        shutil.rmtree(folder, ignore_errors=True)
        folder = folder.parent


def push(dest: Union[str, os.PathLike], url: Url, last: Callable[[str], bool] = lambda rel: False) -> tuple[int, int]:
    """Send the local copy's changes to the bucket folder `url`: files new or changed since they were
    mirrored or pushed are PUT, files that came from the bucket and were removed here are deleted there.
    Those `last` names (markers of finished output) are deleted first and PUT last.
    Returns (files sent, objects deleted)."""
    src, dest = _remote(url), Path(dest)
    local = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                   if p.is_file() and p.name not in _OWN and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    with _locked(dest) as state:
        present = set(local)
        gone = [r for r in state if r not in present]
        changed = [r for r in local if not _unchanged(state.get(r), dest / r)]

        def deleted_(rel: str, _) -> None:
            del state[rel]

        def sent_(rel: str, etag) -> None:
            state[rel] = _entry(etag or "", dest / rel)

        def put(rel: str):
            return write_bytes_atomic(src / rel, (dest / rel).read_bytes())

        for rel in [r for r in gone if last(r)]:  # markers first: then the data they stand for
            deleted_(rel, remove(src / rel))
        _in_parallel([r for r in gone if not last(r)], lambda rel: remove(src / rel), deleted_)
        _in_parallel([r for r in changed if not last(r)], put, sent_)
        for rel in [r for r in changed if last(r)]:  # markers last: the data they stand for is there
            sent_(rel, put(rel))
    return len(changed), len(gone)


def copy_tree(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> int:
    """Copy a folder into a bucket (one PUT per file) or a bucket's folder here; returns the files copied."""
    src_path, dst_path = store_path(src), store_path(dst)
    if isinstance(src_path, RemotePath) and not isinstance(dst_path, RemotePath):
        before = len(walk(src_path))
        mirror(src_path, dst_path)
        return before
    if isinstance(src_path, RemotePath) or not isinstance(dst_path, RemotePath):
        raise ValueError("copy a local folder to s3://bucket/prefix, or s3://bucket/prefix to a local folder")
    if not Path(src_path).is_dir():
        raise ValueError(f"{src_path}: no such folder")
    files = [p.relative_to(src_path).as_posix() for p in sorted(Path(src_path).rglob("*"))
             if p.is_file() and p.name not in _OWN and not p.name.endswith(".tmp")]
    _in_parallel(files, lambda rel: write_bytes_atomic(dst_path / rel, (Path(src_path) / rel).read_bytes()),
                 lambda rel, _: None)
    return len(files)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m runtime.sync",
        description="Copy a folder to or from a bucket (endpoint and credentials: the AWS_* variables), e.g. "
                    "a corpus' tokens made on one machine: copy data/tokens s3://bucket/data/tokens")
    sub = parser.add_subparsers(dest="command", required=True)
    cp = sub.add_parser("copy", help="copy SRC to DST: a local folder and s3://bucket/prefix, either way")
    cp.add_argument("src")
    cp.add_argument("dst")
    ls = sub.add_parser("ls", help="the objects under s3://bucket/prefix, with their sizes")
    ls.add_argument("url")
    args = parser.parse_args(argv)
    try:
        if args.command == "copy":
            n = copy_tree(args.src, args.dst)
            print(f"copied {n} files from {args.src} to {args.dst}")
        else:
            for rel, size, _ in walk(args.url):
                print(f"{size:>12}  {rel}")
    except ValueError as e:  # a bad URL or folder on the command line
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except OSError as e:  # the bucket's answer: missing, refused, unreachable
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main())
