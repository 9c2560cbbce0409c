"""Simple per-position predictors of future tokens: the floor a world model must beat.

A token corpus is a list of utterances, each an int array ``tokens [T, G]`` (G token
positions per step, each token in ``[0, K)``). Every position g uses its own part of the
codebook, so every baseline here is fitted per position. A cell is (utterance, start t,
horizon h): predict ``x[t+h, g]`` having seen steps ``0..t``. Scores are the NLL in bits
per token, ``-log2 p(x[t+h, g])``, and top-1 accuracy.

Predictors (fitted on train, smoothing chosen on val by the val NLL, lowest wins):

* ``unigram``   -- ``p_g(b) = (c_g(b) + alpha) / (n_g + K alpha)``; ``alpha`` per position
  from ``UNIGRAM_ALPHAS``. It is also the prior every other predictor backs off to.
* ``bigram``    -- the h-step bigram (not a rollout): counts ``c(a, b)`` of pairs
  ``(x[t, g], x[t+h, g]) = (a, b)`` h steps apart inside one utterance, smoothed towards the
  unigram with a Dirichlet prior of strength ``beta``:
  ``p(b | a) = (c(a, b) + beta p_g(b)) / (n(a) + beta)``. An unseen context ``a`` falls back
  to the unigram, and a context seen often hardly moves towards it. ``beta`` per
  (h, g) from ``BIGRAM_BETAS``; ``choices()`` also reports the resulting mean weight of the
  unigram on the val pairs (``prior_weight``), the amount of smoothing actually applied.
* ``copy_last`` -- ``x[t+h] := x[t]``: ``p = (1 - eps) onehot(x[t, g]) + eps p_g``, ``eps``
  per (h, g) minimising the val NLL (convex in eps, so a bounded scalar search is exact).
  Its point prediction is ``x[t, g]`` whatever eps, so its accuracy is that of copying.

Accuracy of ``unigram``/``bigram`` is that of the argmax of the predictive distribution.
Where val holds no pair for a horizon, the most smoothing is taken (largest alpha/beta,
``eps = 0.5``) rather than a choice made on no evidence.

Memory: bigram counts are ``scipy.sparse`` CSR tables of int32, one per (h, g), so they
grow with the number of distinct train pairs, never with ``K**2`` (K = 1024, G = 4, H = 15
as dense float64 would be 480 MB). Only the context rows asked for are densified.
Per-context argmaxes (``[H, G, K]`` int32) are computed once at fit time, so ``score``
never builds a ``[N, G, K]`` array; ``probs`` does, so callers with many cells chunk it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize_scalar

log = logging.getLogger(__name__)

SIMPLE_NAMES: tuple[str, ...] = ("unigram", "bigram", "copy_last")
UNIGRAM_ALPHAS = np.geomspace(1e-3, 1.0, 7)  # add-alpha per token, half-decade steps
BIGRAM_BETAS = np.geomspace(1e-2, 1e4, 13)  # Dirichlet prior strength in pseudo-counts
_EPS_BOUNDS = (1e-6, 1.0 - 1e-6)
_EPS_NO_DATA = 0.5


def _as_tokens(tokens: np.ndarray, n_tokens: int, n_positions: int | None = None) -> np.ndarray:
    """int64 ``[T, G]`` with every token checked to lie in ``[0, n_tokens)``."""
    x = np.asarray(tokens)
    if x.ndim != 2 or (n_positions is not None and x.shape[1] != n_positions):
        raise ValueError(f"tokens must be [T, G={n_positions}], got shape {x.shape}")
    x = x.astype(np.int64, copy=False)
    if x.size and (x.min() < 0 or x.max() >= n_tokens):
        raise ValueError(f"tokens outside [0, {n_tokens})")
    return x


def _lagged_pairs(utterances: Sequence[np.ndarray], h: int, n_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x[t], x[t+h])`` for every t with ``t + h < T`` inside each utterance: two ``[M, G]`` arrays."""
    long_enough = [u for u in utterances if len(u) > h]
    if not long_enough:
        empty = np.zeros((0, n_positions), np.int64)
        return empty, empty
    return np.concatenate([u[:-h] for u in long_enough]), np.concatenate([u[h:] for u in long_enough])


def _grid_pick(nll: np.ndarray, has_data: bool) -> int:
    """Lowest val NLL on an ascending smoothing grid (ties: less smoothing); the most smoothing without data."""
    return int(np.argmin(nll)) if has_data else len(nll) - 1


class SimpleBaselines:
    """Unigram, h-step bigram and copy-last predictors per token position, smoothed on val."""

    names: tuple[str, ...] = SIMPLE_NAMES

    def __init__(
        self,
        n_tokens: int,
        unigram: np.ndarray,
        alpha: np.ndarray,
        pair_counts: list[list[sp.csr_array]],
        beta: np.ndarray,
        prior_weight: np.ndarray,
        eps: np.ndarray,
    ):
        self.n_tokens = n_tokens
        self.unigram = unigram  # [G, K] smoothed, rows sum to 1
        self.alpha = alpha  # [G]
        self.pair_counts = pair_counts  # [H][G] CSR K x K int32: c(a, b) at lag h
        self.context_totals = np.stack(
            [np.stack([np.asarray(c.sum(axis=1), np.float64).ravel() for c in row]) for row in pair_counts]
        )  # [H, G, K]: n(a)
        self.beta = beta  # [H, G]
        self.prior_weight = prior_weight  # [H, G]
        self.eps = eps  # [H, G]
        self.horizons, self.n_positions = beta.shape
        self._bigram_argmax = np.stack(
            [
                np.stack([np.argmax(c.toarray() + b * u[None], axis=1) for c, b, u in zip(row, betas, unigram)])
                for row, betas in zip(pair_counts, beta)
            ]
        ).astype(np.int32)  # [H, G, K]: argmax_b p(b | a), computed once (one K x K at a time)

    @classmethod
    def fit(cls, train: Sequence[np.ndarray], val: Sequence[np.ndarray], n_tokens: int, horizons: int) -> "SimpleBaselines":
        """Count on ``train`` utterances, choose every smoothing on ``val``, for h = 1..horizons."""
        if not train:
            raise ValueError("no train utterances")
        G = np.asarray(train[0]).shape[-1]
        K = n_tokens
        train = [_as_tokens(u, K, G) for u in train]
        val = [_as_tokens(u, K, G) for u in val]

        # unigram: add-alpha per position, alpha on all val tokens
        tr_all = np.concatenate(train)
        va_all = np.concatenate(val) if val else np.zeros((0, G), np.int64)
        counts = np.stack([np.bincount(tr_all[:, g], minlength=K) for g in range(G)]).astype(np.float64)
        val_counts = np.stack([np.bincount(va_all[:, g], minlength=K) for g in range(G)]).astype(np.float64)
        a = UNIGRAM_ALPHAS[:, None, None]
        grid_p = (counts[None] + a) / (counts.sum(-1)[None, :, None] + K * a)  # [A, G, K]
        nll = -(val_counts[None] * np.log2(grid_p)).sum(-1)  # [A, G]
        pick = [_grid_pick(nll[:, g], len(va_all) > 0) for g in range(G)]
        alpha = UNIGRAM_ALPHAS[pick]
        unigram = grid_p[pick, np.arange(G)]  # [G, K]

        pair_counts: list[list[sp.csr_array]] = []
        beta = np.zeros((horizons, G))
        prior_weight = np.zeros((horizons, G))
        eps = np.zeros((horizons, G))
        for h in range(1, horizons + 1):
            a_tr, b_tr = _lagged_pairs(train, h, G)
            a_va, b_va = _lagged_pairs(val, h, G)
            row = []
            for g in range(G):
                c = sp.coo_array(
                    (np.ones(len(a_tr), np.int32), (a_tr[:, g], b_tr[:, g])), shape=(K, K)
                ).tocsr()  # duplicates summed: pair counts
                row.append(c)
                n_a = np.asarray(c.sum(axis=1), np.float64).ravel()
                # val pairs, deduplicated with their multiplicity
                codes, w = np.unique(a_va[:, g] * K + b_va[:, g], return_counts=True)
                va, vb = np.divmod(codes, K)
                w = w.astype(np.float64)
                has_data = len(w) > 0
                total = max(w.sum(), 1.0)
                c_ab = np.asarray(c[va, vb], np.float64).ravel() if has_data else np.zeros(0)
                u_b = unigram[g, vb]
                bb = BIGRAM_BETAS[:, None]
                p = (c_ab[None] + bb * u_b[None]) / (n_a[va][None] + bb)
                i = _grid_pick(-(w * np.log2(p)).sum(-1) / total, has_data)
                beta[h - 1, g] = BIGRAM_BETAS[i]
                weight = BIGRAM_BETAS[i] / (n_a[va] + BIGRAM_BETAS[i])  # of the unigram, per val pair
                prior_weight[h - 1, g] = (w * weight).sum() / total if has_data else 1.0
                # copy_last: NLL(eps) is convex, so a bounded scalar search finds the optimum
                same = (va == vb).astype(np.float64)
                if has_data:
                    res = minimize_scalar(
                        lambda e: -(w * np.log2((1 - e) * same + e * u_b)).sum() / total,
                        bounds=_EPS_BOUNDS,
                        method="bounded",
                    )
                    eps[h - 1, g] = float(res.x)
                else:
                    eps[h - 1, g] = _EPS_NO_DATA
            pair_counts.append(row)
            log.info(
                "baselines h=%d: bigram beta %s (unigram weight on val %s), copy_last eps %s",
                h,
                np.round(beta[h - 1], 4).tolist(),
                np.round(prior_weight[h - 1], 4).tolist(),
                np.round(eps[h - 1], 4).tolist(),
            )
        log.info("baselines: unigram alpha per position %s", alpha.tolist())
        return cls(K, unigram, alpha, pair_counts, beta, prior_weight, eps)

    # -- predictions ---------------------------------------------------------------------

    def _check(self, name: str, context_last: np.ndarray, h: int) -> np.ndarray:
        if name not in self.names:
            raise ValueError(f"unknown baseline {name!r}; one of {self.names}")
        if not 1 <= h <= self.horizons:
            raise ValueError(f"horizon {h} outside 1..{self.horizons}")
        return _as_tokens(context_last, self.n_tokens, self.n_positions)

    def probs(self, name: str, context_last: np.ndarray, h: int) -> np.ndarray:
        """Predictive distribution of step t+h given the tokens at t (``context_last [N, G]``): ``[N, G, K]``."""
        x = self._check(name, context_last, h)
        N, G, K = len(x), self.n_positions, self.n_tokens
        if name == "unigram":
            return np.broadcast_to(self.unigram[None], (N, G, K)).copy()
        if name == "copy_last":
            e = self.eps[h - 1]
            out = np.broadcast_to(e[None, :, None] * self.unigram[None], (N, G, K)).copy()
            n_idx, g_idx = np.meshgrid(np.arange(N), np.arange(G), indexing="ij")
            out[n_idx, g_idx, x] += 1.0 - e[None, :]
            return out
        out = np.empty((N, G, K))
        for g in range(G):
            b = self.beta[h - 1, g]
            rows = self.pair_counts[h - 1][g][x[:, g]].toarray().astype(np.float64)
            out[:, g] = (rows + b * self.unigram[g][None]) / (self.context_totals[h - 1, g, x[:, g]] + b)[:, None]
        return out

    def predict(self, name: str, context_last: np.ndarray, h: int) -> np.ndarray:
        """Top-1 token for step t+h, ``[N, G]``: the argmax (unigram, bigram) or the copied token (copy_last)."""
        x = self._check(name, context_last, h)
        if name == "copy_last":
            return x.copy()
        if name == "unigram":
            return np.broadcast_to(self.unigram.argmax(-1)[None], x.shape).copy()
        return self._bigram_argmax[h - 1, np.arange(self.n_positions)[None], x].astype(np.int64)

    def bits(self, name: str, context_last: np.ndarray, target: np.ndarray, h: int) -> np.ndarray:
        """``-log2 p(target)`` per cell and position, ``[N, G]``, without building ``[N, G, K]``."""
        x = self._check(name, context_last, h)
        y = _as_tokens(target, self.n_tokens, self.n_positions)
        if len(x) == 0:
            return np.zeros(x.shape)
        g_idx = np.arange(self.n_positions)[None]
        u_y = self.unigram[g_idx, y]
        if name == "unigram":
            p = u_y
        elif name == "copy_last":
            e = self.eps[h - 1][None]
            p = (1.0 - e) * (y == x) + e * u_y
        else:
            b = self.beta[h - 1][None]
            counts = self.pair_counts[h - 1]
            c_xy = np.stack(
                [np.asarray(counts[g][x[:, g], y[:, g]], np.float64).ravel() for g in range(self.n_positions)], axis=1
            )
            p = (c_xy + b * u_y) / (self.context_totals[h - 1][g_idx, x] + b)
        return -np.log2(p)

    def score(self, name: str, tokens: np.ndarray, starts: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Bits and hits, each ``[N, G]``, for the cells (t, h) of one utterance with t in ``starts`` and t+h < T."""
        x = _as_tokens(tokens, self.n_tokens, self.n_positions)
        t = np.asarray(starts, np.int64).ravel()
        t = t[(t >= 0) & (t + h < len(x))]
        context, target = x[t], x[t + h]
        return self.bits(name, context, target, h), self.predict(name, context, h) == target

    def evaluate(
        self, utterances: Sequence[np.ndarray], starts: Sequence[np.ndarray], horizons: Iterable[int] | None = None
    ) -> dict[str, dict[str, np.ndarray]]:
        """Mean bits per token, accuracy and cell count per horizon, over utterances and positions.

        ``starts[i]`` are the start steps scored in ``utterances[i]`` (the model's cells).
        Returns ``{name: {"horizon", "bits", "accuracy", "cells"}}`` with arrays over horizons
        (bits and accuracy are NaN at a horizon with no cell).
        """
        hs = np.arange(1, self.horizons + 1) if horizons is None else np.asarray(list(horizons), np.int64)
        out = {}
        for name in self.names:
            bits, acc, cells = np.zeros(len(hs)), np.zeros(len(hs)), np.zeros(len(hs), np.int64)
            for i, h in enumerate(hs):
                scored = [self.score(name, u, s, int(h)) for u, s in zip(utterances, starts)]
                b = np.concatenate([s[0] for s in scored]) if scored else np.zeros((0, self.n_positions))
                hit = np.concatenate([s[1] for s in scored]) if scored else np.zeros((0, self.n_positions), bool)
                cells[i] = len(b)
                bits[i] = b.mean() if b.size else np.nan
                acc[i] = hit.mean() if hit.size else np.nan
            out[name] = {"horizon": hs, "bits": bits, "accuracy": acc, "cells": cells}
        return out

    def choices(self) -> dict:
        """The smoothing chosen on val, JSON-ready: per position, and per horizon x position."""
        return {
            "unigram": {"alpha": self.alpha.tolist(), "grid": UNIGRAM_ALPHAS.tolist()},
            "bigram": {
                "beta": self.beta.tolist(),
                "prior_weight": self.prior_weight.tolist(),
                "grid": BIGRAM_BETAS.tolist(),
            },
            "copy_last": {"eps": self.eps.tolist()},
        }
