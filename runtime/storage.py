"""Where the replay store and the checkpoints live: a local folder, or an S3 bucket (`s3://bucket/prefix`).

Generators and learners on different hosts share one replay store through a bucket. Every other
module goes through the few calls here, so each works on a folder and on a bucket alike:

- `store_path(p)`: a `pathlib.Path` for a local path, a `RemotePath` for an `s3://` URL (it has the
  pathlib manners the project uses: `/`, `name`, `parent`, `exists()`, `read_bytes()` ...);
- `read_bytes(p)`, `write_bytes_atomic(p, data)`: a reader never sees half an object. Locally the
  bytes go to a temporary name that is renamed into place; on S3 the object is one PUT of the whole
  body, which readers see whole or not at all (S3 has no partial objects, and no rename);
- `exists(p)`, `stat_token(p)` (what changes when an object is rewritten: mtime locally, ETag +
  LastModified on S3), `remove(p)`;
- `list_after(folder, after)`: the subfolders of a folder and the names of its objects that sort
  after `after`. On S3 that is ListObjectsV2 with `StartAfter`, so a reader that remembers the last
  name it saw in a folder lists only what is new there, not the whole bucket again.

What only a bucket needs (its URL, RemotePath, the boto3 client, its errors as OSError, the request
counts) is in runtime/s3.py. This module is at the bottom: it imports nothing from pydreamer/ or tokenizer/.
"""
from __future__ import annotations

import collections
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from runtime import s3
from runtime.s3 import RemotePath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

StorePath = Union[Path, RemotePath]


def is_remote(path: Any) -> bool:
    """True for an object-store URL (`s3://...`, or any `scheme://`), False for a local path."""
    return isinstance(path, RemotePath) or (isinstance(path, str) and bool(_URL.match(path)))


def store_path(path: Union[str, os.PathLike, RemotePath]) -> StorePath:
    """A RemotePath for an `s3://` URL, else a pathlib.Path. (Path() itself would turn `s3://b/k` into `s3:/b/k`.)"""
    if isinstance(path, (RemotePath, Path)):
        return path
    text = os.fspath(path) if not isinstance(path, str) else path
    return RemotePath(text) if is_remote(text) else Path(text)


# ---- reading and writing -------------------------------------------------------------------------

class ReadCache:
    """Recently read objects, least recently used first out, up to `max_bytes`: their bytes, or what
    the reader made of them (`put(key, value, size)`: an episode's arrays, decoded and checked once).

    For stores whose objects are written once and never changed (episodes): a cached copy is
    never stale. A reader of a bucket keeps one, so an episode sampled again costs no request;
    `prefetch(url)` fetches an object it will want soon on one of `threads` threads, so the
    requests' latencies overlap instead of adding up. Thread-safe; make it in the process that
    uses it (its threads do not survive a fork).
    """

    def __init__(self, max_bytes: int, threads: int = 8):
        self.max_bytes = int(max_bytes)
        self.threads = int(threads)
        self.size = 0
        self.hits = self.misses = 0
        self._data: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()  # key -> (value, size)
        self._pending: dict[str, Any] = {}  # url -> Future of a prefetch under way
        self._lock = threading.Lock()
        self._pool = None

    def get(self, key: str) -> Any:
        """The cached value (waiting for a prefetch of it under way), or None."""
        with self._lock:
            pending = self._pending.get(key)
        if pending is not None:
            pending.exception()  # wait for it; a failed prefetch leaves the read (and its error) to the caller
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: str, value: Any, size: int | None = None) -> None:
        """Keep `value` (bytes, or anything of about `size` bytes), replacing what `key` held."""
        size = len(value) if size is None else int(size)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.size -= old[1]
            if size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self.size += size
            while self.size > self.max_bytes:
                _, (_, dropped) = self._data.popitem(last=False)
                self.size -= dropped

    def prefetch(self, url: str) -> None:
        """Start reading `url` into the cache, unless it is there or on its way."""
        with self._lock:
            if url in self._data or url in self._pending or self.threads <= 0:
                return
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="prefetch")
            future = self._pool.submit(self._fetch, url)
            self._pending[url] = future

    def _fetch(self, url: str) -> None:
        try:
            data = read_bytes(url)
            with self._lock:
                if url in self._data:  # read meanwhile
                    return
            self.put(url, data)
        finally:
            with self._lock:
                self._pending.pop(url, None)

    def __len__(self) -> int:
        return len(self._data)



def read_bytes(path: Union[str, os.PathLike, RemotePath], cache: ReadCache | None = None) -> bytes:
    """The whole content of a file or object; FileNotFoundError when there is none. `cache` (remote
    objects only: the OS caches local files) answers repeated reads of objects that never change."""
    path = store_path(path)
    if not isinstance(path, RemotePath):
        return path.read_bytes()
    if cache is not None:
        data = cache.get(str(path))
        if isinstance(data, bytes):
            return data
    data = s3.get(path)
    if cache is not None:
        cache.put(str(path), data)
    return data


def write_bytes_atomic(path: Union[str, os.PathLike, RemotePath], data: bytes) -> str | None:
    """Write `data` so that no reader ever sees part of it: locally under a temporary name renamed
    into place; on S3 as a single PUT of the whole object (what a reader GETs is the old object, or
    none, until the PUT completes, then the whole new one). Returns the new object's ETag (None locally)."""
    path = store_path(path)
    if isinstance(path, RemotePath):
        return s3.put(path, data)
    from runtime.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return None


def exists(path: Union[str, os.PathLike, RemotePath]) -> bool:
    """A file or folder locally; on S3 an object, or a "folder" holding at least one object."""
    path = store_path(path)
    return s3.exists(path) if isinstance(path, RemotePath) else path.exists()


def stat_token(path: Union[str, os.PathLike, RemotePath]) -> tuple | None:
    """What changes when a file or object is rewritten (locally mtime and size; on S3 the ETag and
    LastModified), or None when there is none: poll it to notice a new checkpoint."""
    path = store_path(path)
    if not isinstance(path, RemotePath):
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)
    head = s3.head(path)
    if head is None:
        return None
    return (head.get("ETag"), str(head.get("LastModified")), head.get("ContentLength"))


def remove(path: Union[str, os.PathLike, RemotePath]) -> None:
    """Delete a file or object; nothing happens when there is none."""
    path = store_path(path)
    if isinstance(path, RemotePath):
        s3.delete(path)
    else:
        path.unlink(missing_ok=True)


# ---- listing ------------------------------------------------------------------------------------

@dataclass
class Listing:
    """What lies directly in a folder, sorted: its subfolders and the names of its objects (with their
    sizes; -1 where unknown), those that sort after a given name (all when it is empty)."""

    folders: list[str]
    files: list[tuple[str, int]]


def list_after(folder: Union[str, os.PathLike, RemotePath], after: str = "") -> Listing:
    """The subfolders of `folder` and the names (with sizes) of the files directly in it, those that sort
    after `after` (all of them when it is empty). A missing folder lists as empty.

    On S3: ListObjectsV2 with Delimiter '/' (one request lists the subfolders) and `StartAfter`
    `<folder>/<after>`, paged 1,000 keys at a time; so listing again from the last name seen costs one
    request plus the new names, however many objects the folder already holds. Locally: one scandir
    (no stat calls), filtered by name.
    """
    folder = store_path(folder)
    if isinstance(folder, RemotePath):
        return Listing(*s3.list_folder(folder, after))
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return Listing([], [])
    folders, files = [], []
    for entry in entries:
        try:
            if entry.name <= after:
                continue
            if entry.is_dir():
                folders.append(entry.name)
            else:
                files.append((entry.name, -1))  # size unknown: no stat calls
        except OSError:  # removed while listing
            continue
    return Listing(sorted(folders), sorted(files))
