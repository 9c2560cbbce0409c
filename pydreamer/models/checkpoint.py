"""Checkpoints: model + optimizers + step in one file, written atomically, read without pickles.

A checkpoint carries its model's `model_args` (world model kind, dimensions, architecture keys), so
evaluate, dream, the network policy and resume build the very model that was trained, whatever the
config of the day says (`build_model`); one from before model_args were kept is built from the config.

The replay store may be a bucket (`s3://...`): its checkpoints are then objects there, each written
with one PUT of the whole file (a reader gets the previous checkpoint or the new one, never half).
"""
from __future__ import annotations

import errno
import io
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from runtime import storage
from runtime.files import atomic_path
from runtime.s3 import RemotePath
from runtime.storage import store_path

def save_checkpoint(path: Path | str, model: torch.nn.Module, optimizers: Mapping[str, Any] | None, step: int,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Write to a temporary name and rename (on S3: one PUT), so a reader (or a crash) never sees half a checkpoint."""
    data = {
        "step": int(step),
        "dims": dict(getattr(model, "dims", {})),
        "model_args": model.model_args() if hasattr(model, "model_args") else {},
        "model": model.state_dict(),
        "optimizers": {k: v.state_dict() for k, v in (optimizers or {}).items()},
        "extra": dict(extra or {}),
    }
    path = store_path(path)
    if isinstance(path, RemotePath):
        buf = io.BytesIO()
        torch.save(data, buf)
        storage.write_bytes_atomic(path, buf.getvalue())
        return
    with atomic_path(path) as tmp:
        try:
            torch.save(data, tmp)
        except RuntimeError as e:  # PyTorch's zip writer on a full disk: "file write failed", not an OSError
            raise _write_error(tmp, e) from None


def _write_error(tmp: Path, error: RuntimeError) -> OSError:
    """What torch.save's RuntimeError was, as the OSError a caller handles: ENOSPC when the disk holding
    `tmp` (still there, half written) has under 1 MiB left, else an I/O error quoting PyTorch."""
    try:
        full = shutil.disk_usage(tmp.parent).free < (1 << 20)
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, "No space left on device", str(tmp.parent))
    return OSError(errno.EIO, f"torch.save failed ({str(error).splitlines()[0]})", str(tmp.parent))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, damaged, or not one of ours); one line names it."""


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by save_checkpoint (weights only: no code runs on load)."""
    path = store_path(path)
    source: Any = io.BytesIO(storage.read_bytes(path)) if isinstance(path, RemotePath) else path
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # a truncated or foreign file: say which, without PyTorch's advice to unpickle it
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in reason or "Weights only load failed" in reason:
            reason = "it holds objects other than weights (never unpickled here)"
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None


def restore(checkpoint: Mapping[str, Any], model: torch.nn.Module, optimizers: Mapping[str, Any] | None = None) -> int:
    """Load weights (and optimizer states) into place; returns the step the checkpoint was taken at."""
    dims = dict(getattr(model, "dims", {}))
    if checkpoint.get("dims") and dims and dict(checkpoint["dims"]) != dims:
        raise ValueError(f"checkpoint was trained for {dict(checkpoint['dims'])}, this model is {dims}")
    differ = args_differ(checkpoint, model)
    if differ:
        raise ValueError(f"checkpoint was trained as another model: {differ}")
    model.load_state_dict(checkpoint["model"])
    for name, opt in (optimizers or {}).items():
        if name in checkpoint.get("optimizers", {}):
            opt.load_state_dict(checkpoint["optimizers"][name])
    return int(checkpoint["step"])


# Architecture keys added after checkpoints were written: a checkpoint without one was trained as this value.
ARCH_KEYS_ADDED = {"condition_heads": False}


def args_differ(checkpoint: Mapping[str, Any], model: torch.nn.Module) -> str:
    """'' when the checkpoint's model_args are the model's (or it has none), else which keys differ and how."""
    saved, mine = dict(checkpoint.get("model_args") or {}), model.model_args() if hasattr(model, "model_args") else {}
    if not saved or not mine:
        return ""
    flat = lambda a: {**{k: v for k, v in a.items() if k != "conf"}, **a.get("conf", {})}  # noqa: E731
    saved, mine = flat(saved), flat(mine)
    saved.update({k: v for k, v in ARCH_KEYS_ADDED.items() if k in mine and k not in saved})
    return ", ".join(f"{k} {saved.get(k)!r} (this config: {mine.get(k)!r})"
                     for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k))


def build_model(checkpoint: Mapping[str, Any], conf: Mapping[str, Any], dims: Mapping[str, int] | None = None):
    """A Dreamer as the checkpoint was trained: its model_args over `conf` (which still gives what is not
    architecture: loss weights, sampling settings). A checkpoint without model_args (older) is built from
    `conf` and its `dims` (or the `dims` given). The weights are not loaded: `restore` does that."""
    from .dreamer import Dreamer

    args = dict(checkpoint.get("model_args") or {})
    if not args:
        dims = dict(checkpoint.get("dims") or dims or {})
        if not dims:
            raise ValueError("the checkpoint records neither its model_args nor its dims, and none were given")
        return Dreamer(conf, **dims)
    merged = {**dict(conf), **ARCH_KEYS_ADDED, **args.pop("conf", {}), "world_model": args.pop("world_model")}
    return Dreamer(merged, **args)
