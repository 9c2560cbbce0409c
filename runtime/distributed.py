"""Several processes (ranks) training one model with DistributedDataParallel: the rank plumbing.

Used by the world-model learner (pydreamer.train) and the tokenizer's VQ-VAE stage (tokenizer.train):

    torchrun --standalone --nproc_per_node N -m pydreamer.train --configs ... --replay_dir DIR
    torchrun --standalone --nproc_per_node N -m tokenizer train --configs ... --data_dir DIR

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and MASTER_ADDR/PORT; with a world
size above 1 each rank joins one process group (NCCL on GPUs, one GPU per local rank; gloo on
CPU). Every rank reads its own share of the data (the learner: pydreamer.distributed.shard_of), computes
gradients on its batch, and DDP averages them, so the ranks take the same optimizer step and hold
the same weights: the effective batch is `batch_size` x world size sequences. Rank 0 alone logs
to MLflow, evaluates and writes checkpoints; the others only train. A world size of 1 (plain
`python -m pydreamer.train`, or torchrun with one process) is the single-process learner,
untouched: no process group, no DDP.

The ranks must agree on when to stop: `agree` is one small all-reduce, so a signal or a NaN
that one rank sees stops every rank at the same step instead of leaving the others blocked in
a collective.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """Where this process sits among the learner processes (torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Ranks":
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", 1))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        return cls(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)), local_world)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes checkpoints."""
        return self.rank == 0


SINGLE = Ranks()


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """CUDA: the local rank's own GPU (one GPU per process); CPU stays CPU."""
    if device.type != "cuda" or not ranks.distributed:
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {ranks.local_rank} has no GPU: this host has {torch.cuda.device_count()}; "
                         f"start at most that many processes per node (torchrun --nproc_per_node)")
    dev = torch.device("cuda", ranks.local_rank)
    torch.cuda.set_device(dev)
    return dev


def init(ranks: Ranks, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the process group: NCCL when the ranks train on GPUs, else gloo."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    log.info("rank %d of %d joined the %s process group", ranks.rank, ranks.world_size, backend)


def shutdown() -> None:
    """Leave the process group while the interpreter is whole. DistributedDataParallel wrappers sit in
    reference cycles that hold the group; left to the interpreter's exit, the group's gloo threads
    were destroyed still running, and a rank that had finished could die of SIGABRT ("terminate called
    without an active exception")."""
    import gc

    import torch.distributed as dist

    gc.collect()  # the finished model's DDP wrappers, and with them their hold on the group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def agree(code: int, device: torch.device) -> int:
    """The largest of every rank's `code` (0 = go on): one all-reduce that each rank must reach."""
    import torch.distributed as dist

    flag = torch.tensor([int(code)], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def mean_over_ranks(values: dict[str, float], device: torch.device, sums: tuple[str, ...] = ()) -> dict[str, float]:
    """Every rank's `values` averaged over the ranks (`sums` keys added up); same keys on every rank."""
    import torch.distributed as dist

    keys = sorted(values)
    vec = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    world = dist.get_world_size()
    return {k: float(v) if k in sums else float(v) / world for k, v in zip(keys, vec.tolist())}


def broadcast(obj, device: torch.device):
    """Rank 0's `obj` on every rank (small picklable values: a path, the dims, an error)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def weights_digest(state_dict) -> str:
    """sha256 of a state_dict's names and values: equal digests, equal weights."""
    import hashlib

    h = hashlib.sha256()
    for name, value in state_dict.items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
