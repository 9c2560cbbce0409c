"""`device: auto` means CUDA when present, else CPU; everything also runs on CPU."""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' was asked for but CUDA is not available here (use device: auto or cpu)")
    return device
