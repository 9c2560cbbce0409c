"""Leases: one live writer per folder or role (a run's learner, a generator worker id, a data_dir's stages).

A lease is an advisory `flock` on a small file that also names its holder (host, pid, when, what), so a
second writer is refused with one line naming the first, instead of both writing the same files. The
kernel drops the lock when the holder dies, kill -9 included, so a dead holder never blocks anyone and
there is nothing to clean up; a file left behind by a dead holder is simply taken over. On a shared
file system the lock holds across hosts where it supports `flock` (NFS v4, Lustre, local disks); a
bucket (`s3://`) has no locks, and the per-host commands that use one say so in the README.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class LeaseHeld(RuntimeError):
    """Another live process holds the lease; the message names it."""


class Lease:
    """`with Lease(path, "the learner of run X"):` or `acquire()` / `release()`."""

    def __init__(self, path: Path | str, what: str):
        self.path = Path(path)
        self.what = what
        self.fd: int | None = None

    def holder(self) -> dict | None:
        """Who holds it now (host, pid, since, what), or None when no live process does."""
        if not self.path.is_file():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read(self.path) or {"host": "?", "pid": "?"}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self) -> "Lease":
        """Take it, or raise LeaseHeld naming the live holder. Taking it again in the same process is a no-op."""
        if self.fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseHeld(describe(self.what, _read(self.path) or {})) from None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": self.what}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(record).encode())
        except OSError:  # a full disk: the lock holds all the same, a refused writer just cannot name us
            pass
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # no holder named: the next reader sees a free lease
        except OSError:
            pass
        os.close(self.fd)  # closing drops the lock
        self.fd = None

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe(what: str, holder: dict) -> str:
    """'<what> is held by pid P on host H, since ...': the one line a refused second writer prints (the holder's own
    words for what it holds, when it wrote them)."""
    what = str(holder.get("what") or what)
    since = holder.get("since")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) else ""
    return f"{what} is held by pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
