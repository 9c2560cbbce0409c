"""A bucket as the store sees it: the `s3://bucket/prefix` URL, RemotePath, and the requests made to S3.

runtime/storage.py puts a local folder and a bucket behind one interface; what only a bucket needs is
here, so that interface reads the same for both. Every request goes through this module, which counts
them (`stats`: tests and benchmarks read it).

S3 goes through boto3 (botocore), configured the usual way: `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`) for an S3-compatible server, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
(or a profile, or an instance role), `AWS_DEFAULT_REGION`. Its errors come out as OSError
(FileNotFoundError for a missing object, PermissionError for refused access, ConnectionError when
the endpoint cannot be reached), so the callers' handling of a full or unwritable disk covers a
bucket too. Imports nothing of this project.
"""
from __future__ import annotations

import errno
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

SCHEME = "s3://"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


# ---- URLs and objects ----------------------------------------------------------------------------

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

    def __reduce__(self) -> tuple:
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
        return head(self) is not None

    def is_dir(self) -> bool:
        return exists(self) and not self.is_file()

    def read_bytes(self) -> bytes:
        return get(self)

    def read_text(self, encoding: str = "utf-8") -> str:
        return get(self).decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        put(self, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and head(self) is None:
            raise _missing(self)
        delete(self)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: an S3 "folder" is the common prefix of the objects put under it."""


# ---- the client ----------------------------------------------------------------------------------

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


def s3_client() -> Any:
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


# ---- requests on objects -------------------------------------------------------------------------

def head(path: RemotePath) -> dict | None:
    """The object's metadata (ETag, LastModified, ContentLength ...), or None when there is no such object."""
    stats.head_requests += 1
    try:
        return _call(path, "head_object", Bucket=path.bucket, Key=path.key)
    except FileNotFoundError:
        return None


def get(path: RemotePath) -> bytes:
    """The whole object (one GET); FileNotFoundError when there is none."""
    stats.get_requests += 1
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = s3_client().get_object(Bucket=path.bucket, Key=path.key)["Body"]
        data = body.read()
    except (ClientError, BotoCoreError) as e:
        raise _os_error(e, path) from None
    return data


def put(path: RemotePath, data: bytes) -> str:
    """One PUT of the whole object, so readers see the old one or the new one, never part; returns its ETag."""
    stats.put_requests += 1
    return str(_call(path, "put_object", Bucket=path.bucket, Key=path.key, Body=bytes(data)).get("ETag", ""))


def delete(path: RemotePath) -> None:
    """Delete the object; S3 answers the same when there is none."""
    _call(path, "delete_object", Bucket=path.bucket, Key=path.key)


def exists(path: RemotePath) -> bool:
    """An object, or a "folder" holding at least one object (S3 has no folders of its own)."""
    if path.key and head(path) is not None:
        return True
    prefix = f"{path.key}/" if path.key else ""
    stats.list_requests += 1
    page = _call(path, "list_objects_v2", Bucket=path.bucket, Prefix=prefix, MaxKeys=1)
    return bool(page.get("KeyCount", 0))


# ---- listing -------------------------------------------------------------------------------------

def list_folder(folder: RemotePath, after: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(subfolders, (name, size) of the objects) directly in `folder` that sort after `after`: ListObjectsV2
    with Delimiter '/' and StartAfter, so listing again from the last name seen costs one request plus the new
    names (runtime/storage.py `list_after`)."""
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
    return folders, files


def walk(folder: Union[str, RemotePath], under: str = "") -> list[tuple[str, int, str]]:
    """(path relative to `folder`, size, ETag) of every object under an S3 folder, at any depth; only
    those whose relative path starts with `under` when given (one listing of that prefix).
    runtime/sync.py keeps local copies of whole folders with it."""
    folder = RemotePath(folder) if not isinstance(folder, RemotePath) else folder
    prefix = f"{folder.key}/" if folder.key else ""
    out = []
    for page in _pages(folder, dict(Bucket=folder.bucket, Prefix=prefix + under)):
        for obj in page.get("Contents", ()):
            rel = obj["Key"][len(prefix):]
            if rel and not rel.endswith("/"):
                out.append((rel, int(obj.get("Size", -1)), str(obj.get("ETag", ""))))
    return out


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
