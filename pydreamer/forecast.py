"""Forecasts per horizon: what a world model predicts for steps t+1..t+H after observing steps 0..t.

One estimator for every world model (each owns its rollouts: `WorldModel.forecast`), so their numbers
mean the same thing. For each start step t the model imagines S futures (the RSSM from its prior
after filtering steps 0..t through the posterior; the Transformer by sampling its own tokens) and
the predictive distribution of each token at t+h is the *mean probability* over the S futures. Its NLL is
-log2 of that mean (a Monte-Carlo estimate of the predictive likelihood, not the mean of
log-probabilities, which would punish a model for being unsure in a few futures), and top-1
accuracy is the argmax of that mean against the true token.
"""
from __future__ import annotations

import numpy as np
import torch

from pydreamer.models import Dreamer


def score(probs: torch.Tensor, tokens: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bits [N, H, G], hits [N, H, G], valid [N, H]) of forecasts against the true tokens at t+h."""
    N, H, G, K = probs.shape
    T = len(tokens)
    target_t = starts[:, None] + np.arange(1, H + 1)[None]  # [N, H]
    valid = target_t < T
    target = tokens[np.minimum(target_t, T - 1)]  # [N, H, G]
    p = probs.float().cpu().numpy()
    p_true = np.take_along_axis(p, target[..., None].astype(np.int64), -1)[..., 0]
    bits = -np.log2(np.maximum(p_true, 1e-12))
    hits = p.argmax(-1) == target
    return bits, hits, valid


def _starts(T: int, n: int, rng: np.random.Generator) -> np.ndarray:
    every = np.arange(T - 1)
    return every if n <= 0 or n >= len(every) else np.sort(rng.choice(every, n, replace=False))


@torch.no_grad()
def evaluate_split(model: Dreamer, utterances: list[np.ndarray], baselines, horizons: int, samples: int,
                   starts_per_utterance: int, seed: int, device: torch.device) -> dict[str, dict[str, np.ndarray]]:
    """Mean bits per token and accuracy per horizon, for the model and each baseline, on the same cells."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    sums = {"model": np.zeros((2, horizons))}
    sums.update({name: np.zeros((2, horizons)) for name in baselines.names})
    cells = np.zeros(horizons)
    model.eval()
    for tokens in utterances:
        starts = _starts(len(tokens), starts_per_utterance, rng)
        probs = model.wm.forecast(torch.from_numpy(tokens).to(device), horizons, samples,
                                  torch.from_numpy(starts).to(device), gen)
        bits, hits, valid = score(probs, tokens, starts)
        for h in range(horizons):
            v = valid[:, h]
            sums["model"][0, h] += bits[v, h].sum()
            sums["model"][1, h] += hits[v, h].sum()
            cells[h] += v.sum() * tokens.shape[1]
            for name in baselines.names:
                b_bits, b_hits = baselines.score(name, tokens, starts, h + 1)
                sums[name][0, h] += b_bits.sum()
                sums[name][1, h] += b_hits.sum()
    denom = np.maximum(cells, 1)
    return {name: {"nll": v[0] / denom, "acc": v[1] / denom, "cells": cells} for name, v in sums.items()}
