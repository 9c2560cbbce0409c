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

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

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


def start_steps(T: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """The steps of an utterance of T steps a forecast starts after: every one with a next step, or a seeded `n`
    of them (n <= 0: all), so every model and baseline (tokens, log-mel) is scored on the same cells."""
    every = np.arange(T - 1)
    return every if n <= 0 or n >= len(every) else np.sort(rng.choice(every, n, replace=False))


VOICED = 0.5  # a step is voiced when at least half its frames are (the token corpus' per-step voice activity)


@dataclass
class CellSums:
    """Summed bits and hits per predictor, utterance and horizon, over all cells and over voiced cells.

    Kept per utterance (not only in total) so that intervals can resample utterances: cells of one
    utterance are not independent draws.
    """

    names: list[str]  # "model", then the baselines
    bits: np.ndarray  # [P, U, H]
    hits: np.ndarray  # [P, U, H]
    cells: np.ndarray  # [U, H] tokens scored (cells x G)
    voiced_bits: np.ndarray  # [P, U, H]: the cells whose target step is voiced
    voiced_hits: np.ndarray
    voiced_cells: np.ndarray  # [U, H]

    def of(self, voiced: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.voiced_bits, self.voiced_hits, self.voiced_cells) if voiced else (self.bits, self.hits, self.cells)


@torch.no_grad()
def evaluate_split(model: Dreamer, utterances: list[np.ndarray], baselines, horizons: int, samples: int,
                   starts_per_utterance: int, seed: int, device: torch.device,
                   voices: list[np.ndarray] | None = None,
                   observe: Callable[[int, np.ndarray, torch.Tensor], None] | None = None,
                   conditions: list[dict[str, str]] | None = None) -> CellSums:
    """Bits and hits of the model and each baseline on the same cells, per utterance and horizon.

    `voices[i]` is utterance i's per-step voice activity (0..1); without it no cell counts as voiced.
    `conditions[i]`, when given, are the label values utterance i is forecast conditioned on (a conditioned model).
    `observe(u, starts, probs)`, when given, sees every forecast too (the log-mel scores: log_mel.py).
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    names = ["model", *baselines.names]
    U = len(utterances)
    bits, hits = np.zeros((2, len(names), U, horizons)), np.zeros((2, len(names), U, horizons))
    cells = np.zeros((2, U, horizons))
    model.eval()
    for u, tokens in enumerate(utterances):
        starts = start_steps(len(tokens), starts_per_utterance, rng)
        with model.wm.conditioned(conditions[u]) if conditions else nullcontext():
            probs = model.wm.forecast(torch.from_numpy(tokens).to(device), horizons, samples,
                                      torch.from_numpy(starts).to(device), gen)
        m_bits, m_hits, valid = score(probs, tokens, starts)
        if observe is not None:
            observe(u, starts, probs)
        voice = voices[u] if voices is not None and voices[u] is not None else np.zeros(len(tokens))
        for h in range(horizons):
            v = valid[:, h]
            t = starts[v] + h + 1
            voiced = np.asarray(voice)[t] >= VOICED  # [n] of the valid cells
            scored = [(m_bits[v, h], m_hits[v, h])] + [baselines.score(name, tokens, starts, h + 1)
                                                      for name in baselines.names]
            for p, (b, hit) in enumerate(scored):
                bits[0, p, u, h], hits[0, p, u, h] = b.sum(), hit.sum()
                bits[1, p, u, h], hits[1, p, u, h] = b[voiced].sum(), hit[voiced].sum()
            cells[0, u, h], cells[1, u, h] = v.sum() * tokens.shape[1], voiced.sum() * tokens.shape[1]
    return CellSums(names, bits[0], hits[0], cells[0], bits[1], hits[1], cells[1])
