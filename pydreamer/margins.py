"""How far the model is from the strongest simple predictor on the same cells, with an interval.

A margin against a weak baseline flatters; so per horizon the model is compared with the *best*
baseline on those very cells (the lowest NLL among all of them, whichever it is at that horizon),
and the margin (best baseline's bits per token minus the model's: positive when the model wins)
gets a 95% percentile-bootstrap interval over utterances, because the cells of one utterance are
not independent draws. The same holds for the voiced cells alone (target step voiced), where
silence cannot make every predictor look good.
"""
from __future__ import annotations

import warnings

import numpy as np

from pydreamer.forecast import CellSums

BOOTSTRAP = 2000
LEVEL = 0.95


def curves(sums: CellSums, voiced: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """{predictor: {"nll", "acc", "cells"}} per horizon (NaN where no cell)."""
    bits, hits, cells = sums.of(voiced)
    total = cells.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: {"nll": bits[p].sum(0) / total, "acc": hits[p].sum(0) / total, "cells": total}
                for p, name in enumerate(sums.names)}


def best_baselines(table: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """Per horizon, the baseline with the lowest NLL on the cells ('' where none has a cell)."""
    names = [n for n in table if n != "model"]
    nll = np.stack([table[n]["nll"] for n in names])  # [B, H]
    return [names[int(np.nanargmin(col))] if np.isfinite(col).any() else "" for col in nll.T]


def margin(sums: CellSums, best: list[str], voiced: bool = False, n_boot: int = BOOTSTRAP,
           seed: int = 0, level: float = LEVEL) -> dict[str, np.ndarray]:
    """Best baseline's NLL minus the model's per horizon, and its bootstrap interval over utterances."""
    bits, _, cells = sums.of(voiced)
    H = cells.shape[1]
    idx = [sums.names.index(b) if b else 0 for b in best]
    diff = bits[idx, :, np.arange(H)].T - bits[0]  # [U, H]: per utterance, best's bits minus the model's
    rng = np.random.default_rng(seed)
    U = len(cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = diff.sum(0) / cells.sum(0)
        if U == 0:
            lo = hi = np.full(H, np.nan)
        else:
            draws = rng.integers(0, U, (n_boot, U))
            boot = diff[draws].sum(1) / cells[draws].sum(1)  # [n_boot, H]
            with warnings.catch_warnings():  # a horizon without cells in every draw stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    missing = np.array([not b for b in best])
    for a in (point, lo, hi):
        a[missing] = np.nan
    return {"margin": point, "lo": lo, "hi": hi, "best": np.array(best, dtype=object)}
