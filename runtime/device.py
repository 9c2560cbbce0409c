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


def size_for_this_machine(configs: list[str]) -> tuple[list[str], str]:
    """`--auto_size`: the config sections as given on a GPU host, else with `small` (the CPU demo) added.
    Returns (sections, the sentence that says which and why)."""
    if torch.cuda.is_available():
        return configs, (f"a GPU is present ({torch.cuda.get_device_name(0)}): training the size the sections "
                         f"{' '.join(configs)} give")
    if "small" in configs or "tiny" in configs:
        return configs, "no GPU: training the size the sections give on the CPU"
    return [*configs, "small"], ("no GPU found: training the CPU demo size (config section `small`: a 90-minute corpus, "
                                 "under 30 minutes on 2 cores); on a GPU host the same command trains the "
                                 "`audio` size")
