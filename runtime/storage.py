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

S3 goes through boto3 (botocore), configured the usual way: `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`) for an S3-compatible server, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
(or a profile, or an instance role), `AWS_DEFAULT_REGION`. Its errors come out as OSError
(FileNotFoundError for a missing object, PermissionError for refused access, ConnectionError when
the endpoint cannot be reached), so the callers' handling of a full or unwritable disk covers a
bucket too. This module is at the bottom: it imports nothing from pydreamer/ or tokenizer/.
"""
from __future__ import annotations

import collections
import errno
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

SCHEME = "s3://"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


# ---- URLs ------------------------------------------------------------------------------------

def is_remote(path: Any) -> bool:
    """True for an object-store URL (`s3://...`, or any `scheme://`), False for a local path."""
    return isinstance(path, RemotePath) or (isinstance(path, str) and bool(_URL.match(path)))


def url_problem(url: str) -> str | None:
    """Why `url` is not a usable store URL (None when it is): only `s3://bucket[/prefix]` is supported,
    with an S3 bucket name (3..63 lowercase letters, digits, dots and hyphens) and no empty path parts."""
    if not url.startswith(SCHEME):
        scheme = url.split("://", 1)[0]
        return f"'{scheme}://' URLs are not supported; use a local folder or s3://bucket/prefix"
    bucket, _, key = url[len(SCHEME):].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        return (f"'{bucket}' is not an S3 bucket name (3 to 63 lowercase letters, digits, dots or hyphens, "
                "starting and ending with a letter or digit)")
    key = key.rstrip("/")
    if key and ("" in key.split("/") or any(part in (".", "..") for part in key.split("/"))):
        return "the prefix after the bucket has an empty, '.' or '..' part"
    return None


class RemotePath:
    """`s3://bucket/key`: an object, or a "folder" (every object whose key starts with `key/`).

    Joined with `/` like a Path; `str()` gives the URL back. S3 has no folders, so `mkdir` does
    nothing and a folder exists as soon as one object lies under it.
    """

    __slots__ = ("bucket", "key")

    def __init__(self, url: Union[str, "RemotePath"]):
        url = str(url)
        problem = url_problem(url)
        if problem:
            raise ValueError(f"{url}: {problem}")
        bucket, _, key = url[len(SCHEME):].partition("/")
        self.bucket, self.key = bucket, key.strip("/")

    # pure path manners
    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __reduce__(self):
        return RemotePath, (str(self),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __lt__(self, other: "RemotePath") -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: Union[str, os.PathLike]) -> "RemotePath":
        part = str(part).strip("/")
        return RemotePath(f"{self}/{part}") if part else self

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def stem(self) -> str:
        name = self.name
        return name.rpartition(".")[0] if "." in name.lstrip(".") else name

    @property
    def suffix(self) -> str:
        name = self.name
        return "." + name.rpartition(".")[2] if "." in name.lstrip(".") else ""

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(f"{SCHEME}{self.bucket}/{self.key.rpartition('/')[0]}")

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def resolve(self) -> "RemotePath":
        return self

    # the store
    def exists(self) -> bool:
        return exists(self)

    def is_file(self) -> bool:
        return _head(self) is not None

    def is_dir(self) -> bool:
        return exists(self) and not self.is_file()

    def read_bytes(self) -> bytes:
        return read_bytes(self)

    def read_text(self, encoding: str = "utf-8") -> str:
        return read_bytes(self).decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        write_bytes_atomic(self, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and _head(self) is None:
            raise _missing(self)
        remove(self)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: an S3 "folder" is the common prefix of the objects put under it."""


StorePath = Union[Path, RemotePath]


def store_path(path: Union[str, os.PathLike, RemotePath]) -> StorePath:
    """A RemotePath for an `s3://` URL, else a pathlib.Path. (Path() itself would turn `s3://b/k` into `s3:/b/k`.)"""
    if isinstance(path, (RemotePath, Path)):
        return path
    text = os.fspath(path) if not isinstance(path, str) else path
    return RemotePath(text) if is_remote(text) else Path(text)


# ---- the S3 client -----------------------------------------------------------------------------

@dataclass
class Stats:
    """What this process asked of the object store (tests and benchmarks read it)."""

    list_requests: int = 0  # ListObjectsV2 calls (one per page of up to 1,000 keys)
    listed_keys: int = 0  # keys and common prefixes those calls returned
    get_requests: int = 0
    put_requests: int = 0
    head_requests: int = 0
    start_after: list[str] = field(default_factory=list)  # the StartAfter keys of the last 100 listings

    def reset(self) -> None:
        self.__init__()


stats = Stats()
_clients: dict[int, Any] = {}
_lock = threading.Lock()


def s3_client():
    """This process's boto3 S3 client (one per process: a DataLoader worker forked from a reader
    must not share the parent's connections). Endpoint, credentials and region come from the usual
    AWS_* variables and files; botocore retries throttling and dropped connections itself."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        with _lock:
            client = _clients.get(pid)
            if client is None:
                try:
                    import boto3
                    from botocore.config import Config
                except ImportError:
                    raise ImportError("s3:// stores need boto3 (a dependency of this project): pip install boto3") \
                        from None
                retries = {} if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE") else {
                    "retries": {"mode": "standard", "max_attempts": 5}}  # else as the variables say
                config = Config(connect_timeout=10, read_timeout=60, max_pool_connections=32, **retries)
                client = boto3.session.Session().client("s3", config=config)
                _clients.clear()
                _clients[pid] = client
    return client


def _missing(path: RemotePath) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))


def _os_error(error: Exception, path: RemotePath) -> OSError:
    """A boto3/botocore error as the OSError a local file operation would have raised."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code != "NoSuchBucket"):
            return _missing(path)
        if code == "NoSuchBucket":
            return FileNotFoundError(errno.ENOENT, f"no such bucket '{path.bucket}'", str(path))
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return PermissionError(errno.EACCES, f"access denied by S3 ({code})", str(path))
        return OSError(errno.EIO, f"S3 error {code or status}: {info.get('Message', error)}", str(path))
    if isinstance(error, NoCredentialsError):
        return PermissionError(errno.EACCES, "no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                               str(path))
    if isinstance(error, EndpointConnectionError):
        return ConnectionError(errno.ECONNREFUSED, f"cannot reach the S3 endpoint ({error})", str(path))
    return ConnectionError(errno.EIO, f"S3 request failed ({type(error).__name__}: {error})", str(path))


def _call(path: RemotePath, method: str, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return getattr(s3_client(), method)(**kwargs)
    except (ClientError, BotoCoreError) as e:
        raise _os_error(e, path) from None


def _head(path: RemotePath) -> dict | None:
    stats.head_requests += 1
    try:
        return _call(path, "head_object", Bucket=path.bucket, Key=path.key)
    except FileNotFoundError:
        return None


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
    stats.get_requests += 1
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = s3_client().get_object(Bucket=path.bucket, Key=path.key)["Body"]
        data = body.read()
    except (ClientError, BotoCoreError) as e:
        raise _os_error(e, path) from None
    if cache is not None:
        cache.put(str(path), data)
    return data


def write_bytes_atomic(path: Union[str, os.PathLike, RemotePath], data: bytes) -> str | None:
    """Write `data` so that no reader ever sees part of it: locally under a temporary name renamed
    into place; on S3 as a single PUT of the whole object (what a reader GETs is the old object, or
    none, until the PUT completes, then the whole new one). Returns the new object's ETag (None locally)."""
    path = store_path(path)
    if isinstance(path, RemotePath):
        stats.put_requests += 1
        return str(_call(path, "put_object", Bucket=path.bucket, Key=path.key, Body=bytes(data)).get("ETag", ""))
    from runtime.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return None


def exists(path: Union[str, os.PathLike, RemotePath]) -> bool:
    """A file or folder locally; on S3 an object, or a "folder" holding at least one object."""
    path = store_path(path)
    if not isinstance(path, RemotePath):
        return path.exists()
    if path.key and _head(path) is not None:
        return True
    prefix = f"{path.key}/" if path.key else ""
    stats.list_requests += 1
    page = _call(path, "list_objects_v2", Bucket=path.bucket, Prefix=prefix, MaxKeys=1)
    return bool(page.get("KeyCount", 0))


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
    head = _head(path)
    if head is None:
        return None
    return (head.get("ETag"), str(head.get("LastModified")), head.get("ContentLength"))


def remove(path: Union[str, os.PathLike, RemotePath]) -> None:
    """Delete a file or object; nothing happens when there is none."""
    path = store_path(path)
    if isinstance(path, RemotePath):
        _call(path, "delete_object", Bucket=path.bucket, Key=path.key)
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
        return _list_s3(folder, after)
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


def _list_s3(folder: RemotePath, after: str) -> Listing:
    prefix = f"{folder.key}/" if folder.key else ""
    kwargs: dict[str, Any] = dict(Bucket=folder.bucket, Prefix=prefix, Delimiter="/")
    if after:
        kwargs["StartAfter"] = prefix + after
        stats.start_after = (stats.start_after + [prefix + after])[-100:]
    folders: list[str] = []
    files: list[tuple[str, int]] = []
    for page in _pages(folder, kwargs):
        for p in page.get("CommonPrefixes", ()):
            name = p["Prefix"][len(prefix):].rstrip("/")
            if name and (not after or name > after):
                folders.append(name)
        for obj in page.get("Contents", ()):
            name = obj["Key"][len(prefix):]
            if name and "/" not in name:
                files.append((name, int(obj.get("Size", -1))))
    return Listing(folders, files)


def _pages(folder: RemotePath, kwargs: dict) -> Iterator[dict]:
    while True:
        stats.list_requests += 1
        page = _call(folder, "list_objects_v2", **kwargs)
        stats.listed_keys += len(page.get("Contents", ())) + len(page.get("CommonPrefixes", ()))
        yield page
        if not page.get("IsTruncated"):
            return
        kwargs = {**kwargs, "ContinuationToken": page["NextContinuationToken"]}
        kwargs.pop("StartAfter", None)  # the token carries the position on


# ---- whole folders (runtime/sync.py keeps local copies of them) --------------------------------

def walk(folder: Union[str, RemotePath], under: str = "") -> list[tuple[str, int, str]]:
    """(path relative to `folder`, size, ETag) of every object under an S3 folder, at any depth; only
    those whose relative path starts with `under` when given (one listing of that prefix)."""
    folder = RemotePath(folder) if not isinstance(folder, RemotePath) else folder
    prefix = f"{folder.key}/" if folder.key else ""
    out = []
    for page in _pages(folder, dict(Bucket=folder.bucket, Prefix=prefix + under)):
        for obj in page.get("Contents", ()):
            rel = obj["Key"][len(prefix):]
            if rel and not rel.endswith("/"):
                out.append((rel, int(obj.get("Size", -1)), str(obj.get("ETag", ""))))
    return out
