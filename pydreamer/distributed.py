"""The learner ranks' shares of the replay store (the generic rank plumbing is runtime.distributed).

Every rank reads its own share of the replay store's episodes (`shard_of`); see runtime/distributed.py
for how the ranks join, agree and average.
"""
from __future__ import annotations


def shard_of(worker: int, index: int, world_size: int) -> int:
    """The rank that trains on episode `index` of generator worker `worker`.

    A pure function of the episode's own name (never of what else is in the store), so each
    episode stays with one rank as the store grows; consecutive episodes of a worker go to
    consecutive ranks, so the shares stay balanced at any size."""
    return (int(worker) + int(index)) % int(world_size)
