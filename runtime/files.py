"""Writing files so that a reader (or a crash) never sees half of one."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed onto `path` when the block succeeds.

    On an error the temporary file is removed, so nothing half-written is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save_npz(path: Path | str, compressed: bool = False, **arrays: np.ndarray) -> None:
    """Write an npz (no pickles) under a temporary name, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a text file (manifest, meta, metrics) under a temporary name, then rename it into place."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Remove the temporary files (`.<name>.<pid>.tmp`) that a writer killed mid-write left in `folder`.

    Only those whose writing process is gone: a live writer's file is still being written.
    A bucket (`s3://...`) has none: its objects are written in one PUT.
    """
    removed = []
    if "://" in str(folder):
        return removed
    try:
        candidates = [p for p in Path(folder).iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for path in candidates:
        pid = path.name[:-len(".tmp")].rpartition(".")[2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def file_sha256(path: Path | str) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (a checkpoint may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unwritable(folder: Path | str) -> str | None:
    """Why `folder` cannot be written, or None when it can: tried, not guessed from permission bits. The
    folder, or the nearest one on its way that exists, gets a probe file that is removed at once (and the
    folder's times put back), so nothing is left behind and no folder is made."""
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        before = existing.stat()
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
        os.utime(existing, ns=(before.st_atime_ns, before.st_mtime_ns))  # the folder as it was, its times too
    except OSError as e:
        return f"cannot write in {existing} ({e.strerror or e})"
    return None
