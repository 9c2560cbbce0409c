"""Checkpoints: model + optimizers + step in one file, written atomically, read without pickles.

The replay store may be a bucket (`s3://...`): its checkpoints are then objects there, each written
with one PUT of the whole file (a reader gets the previous checkpoint or the new one, never half).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import torch

from runtime import storage
from runtime.files import atomic_path
from runtime.storage import RemotePath, store_path

CHECKPOINT_NAME = "latest.pt"
BEST_NAME = "best.pt"


def checkpoint_path(replay_dir: Path | str, which: str = "latest") -> Path | RemotePath:
    """The run's artifact `checkpoints/latest.pt` (the learner's latest weights, which the network policy
    follows) or `checkpoints/best.pt` (the weights with the lowest val `eval/nll_h1` so far: model selection)."""
    if which not in ("latest", "best"):
        raise ValueError(f"checkpoint must be 'latest' or 'best', not {which!r}")
    return store_path(replay_dir) / "checkpoints" / (CHECKPOINT_NAME if which == "latest" else BEST_NAME)


def save_checkpoint(path: Path | str, model: torch.nn.Module, optimizers: Mapping[str, Any] | None, step: int,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Write to a temporary name and rename (on S3: one PUT), so a reader (or a crash) never sees half a checkpoint."""
    data = {
        "step": int(step),
        "dims": dict(getattr(model, "dims", {})),
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
        torch.save(data, tmp)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by save_checkpoint (weights only: no code runs on load)."""
    path = store_path(path)
    source: Any = io.BytesIO(storage.read_bytes(path)) if isinstance(path, RemotePath) else path
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # a truncated or foreign file: say which
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from None


def restore(checkpoint: Mapping[str, Any], model: torch.nn.Module, optimizers: Mapping[str, Any] | None = None) -> int:
    """Load weights (and optimizer states) into place; returns the step the checkpoint was taken at."""
    dims = dict(getattr(model, "dims", {}))
    if checkpoint.get("dims") and dims and dict(checkpoint["dims"]) != dims:
        raise ValueError(f"checkpoint was trained for {dict(checkpoint['dims'])}, this model is {dims}")
    model.load_state_dict(checkpoint["model"])
    for name, opt in (optimizers or {}).items():
        if name in checkpoint.get("optimizers", {}):
            opt.load_state_dict(checkpoint["optimizers"][name])
    return int(checkpoint["step"])
