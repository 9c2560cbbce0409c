"""A deterministic train/val/test split with no speaker in two splits.

Speakers, not utterances, are dealt out: a model evaluated on voices it trained on would
look better than it is. With too few speakers for that, the split falls back to
utterances and says so, so nobody mistakes it for a speaker-disjoint one.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Sequence

SPLITS = ("train", "val", "test")


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign_splits(
    utterances: Sequence[tuple[str, str]],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    min_speakers: int = 10,
) -> tuple[dict[str, str], str]:
    """Map utterance id -> split for (utterance id, speaker) pairs.

    Returns (assignment, mode) where mode is "speaker" or "utterance". Speakers are taken
    in a seeded hash order, each going to the split furthest below its target share of
    utterances, so the result does not depend on the order of the input.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {list(fractions)}")
    total = float(sum(fractions))
    fractions = [f / total for f in fractions]
    per_speaker = Counter(spk for _, spk in utterances)
    n = len(utterances)
    if len(per_speaker) >= max(min_speakers, 3):
        mode, units = "speaker", sorted(per_speaker, key=lambda s: _rank(seed, s))
        size = per_speaker
    else:
        mode, units = "utterance", sorted((u for u, _ in utterances), key=lambda u: _rank(seed, u))
        size = Counter({u: 1 for u, _ in utterances})
    filled = [0.0, 0.0, 0.0]
    unit_split: dict[str, str] = {}
    for unit in units:
        # The split with the largest deficit relative to its target takes the next unit;
        # val and test each get one unit first so neither is left empty by a big speaker.
        empties = [i for i in (1, 2) if fractions[i] > 0 and filled[i] == 0]
        if empties and len(unit_split) >= 1:
            i = empties[0]
        else:
            i = max(range(3), key=lambda k: fractions[k] * n - filled[k])
        unit_split[unit] = SPLITS[i]
        filled[i] += size[unit]
    if mode == "speaker":
        return {u: unit_split[s] for u, s in utterances}, mode
    return {u: unit_split[u] for u, _ in utterances}, mode
