"""Within-utterance memory (``cache``) and its mixture with the n-gram (``ngram_cache``).

``cache`` predicts ``x[t+h, g]`` from the counts ``C_t(b)`` of each token at position g over the
steps ``0..t`` this cell has seen, smoothed toward the h-step bigram's prediction ``p1``:
``p(b) = (C_t(b) + gamma p1(b | x[t, g])) / (t + 1 + gamma)``. ``gamma`` per (h, g) is picked on
val from ``GAMMAS`` (``inf`` = no cache, exactly the bigram). Speech repeats its speaker's sounds,
so the prefix says which part of the codebook this utterance uses.

A within-utterance h-step bigram sits on top of it: ``B_t(b | a)``, how often token b followed
``a = x[t, g]`` h steps later in steps ``0..t`` (pairs ``(s, s + h)`` with ``s + h <= t``):
``p(b) = (B_t(b | a) + delta p_unigram_cache(b)) / (n_t(a) + delta)``, ``delta`` per (h, g) on val
(``inf`` = off). It is what lets the cache learn a pattern this utterance repeats.

``ngram_cache`` is ``v p_ngram + (1 - v) p_cache`` with ``v`` per (h, g) fitted by EM on the same
val cells, so on val it is never worse than the better of the two.
"""
from __future__ import annotations

import numpy as np

from pydreamer.baselines.counting import em_weights
from pydreamer.baselines.ngram import COMPONENTS, LEVELS, NgramModel, ValCells

GAMMAS = np.append(np.geomspace(0.1, 1e4, 11), np.inf)
DELTAS = np.append(np.geomspace(0.01, 100, 9), np.inf)
P1 = COMPONENTS.index("p1")


def prefix_counts(x: np.ndarray, t: np.ndarray, K: int) -> np.ndarray:
    """``C[i, g, b]``: how often token b occurs at position g in steps ``0..t[i]`` of ``x [T, G]``."""
    T, G = x.shape
    onehot = np.zeros((T, G, K), np.int32)
    onehot[np.arange(T)[:, None], np.arange(G)[None], x] = 1
    return np.cumsum(onehot, axis=0, dtype=np.int32)[t]


def _sorted_keys(cells: ValCells, g: int, K: int, h: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per utterance, the steps of each token (h = 0) or of each h-step pair (h > 0), as sorted int64 keys."""
    if (g, h) not in cells.sorted_keys:
        utt = np.cumsum(cells.pos == 0) - 1
        span = int(cells.pos.max()) + 1 if len(cells.pos) else 1
        code = utt * K + cells.x[:, g]
        s = np.arange(len(code)) if h == 0 else np.flatnonzero(cells.remaining >= h)
        if h:
            code = code[s] * K + cells.x[s + h, g]
        cells.sorted_keys[(g, h)] = (np.sort(code * span + cells.pos[s]), utt, span)
    return cells.sorted_keys[(g, h)]


def prefix_target_counts(cells: ValCells, i: np.ndarray, y: np.ndarray, g: int, K: int,
                         h: int = 0, lag: int = 0) -> np.ndarray:
    """At the val sample cells ``i``: ``C_{t-lag}(y)`` (h = 0), or ``B_t(y | x[t, g])`` (h > 0, lag = h)."""
    keys, utt, span = _sorted_keys(cells, g, K, h)
    step = cells.sample[i]
    base = utt[step] * K + (y if h == 0 else cells.x[step, g])
    base = base * span if h == 0 else (base * K + y) * span
    upto = base + cells.pos[step] - lag
    return (np.searchsorted(keys, upto, side="right") - np.searchsorted(keys, base)).astype(float)


def pair_cache(x: np.ndarray, t: np.ndarray, h: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """``B_t(. | x[t, g])`` ``[N, G, K]`` and ``n_t(x[t, g])`` ``[N, G]`` in one utterance ``x [T, G]``."""
    T, G = x.shape
    counts, totals = np.zeros((len(t), G, K)), np.zeros((len(t), G))
    if T <= h:
        return counts, totals
    for g in range(G):
        a, b = x[:-h, g], x[h:, g]
        order = np.lexsort((np.arange(T - h), a))  # pairs by (a, s)
        key = a[order] * T + order
        lo = np.searchsorted(key, x[t, g] * T)
        hi = np.searchsorted(key, x[t, g] * T + (t - h), side="right")  # s <= t - h
        lens = np.maximum(hi - lo, 0)
        totals[:, g] = lens
        cell = np.repeat(np.arange(len(t)), lens)
        j = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(lo, lens)
        counts[:, g] = np.bincount(cell * K + b[order[j]], minlength=len(t) * K).reshape(len(t), K)
    return counts, totals


def cache_probs(counts: np.ndarray, length: np.ndarray, p1: np.ndarray, gamma: float | np.ndarray) -> np.ndarray:
    """``(C + gamma p1) / (L + gamma)`` written so that ``gamma = inf`` gives ``p1``; broadcasts."""
    w = np.where(np.isinf(gamma), 1.0, gamma / (length + np.where(np.isinf(gamma), 0.0, gamma)))
    return (1.0 - w) * counts / length + w * p1


def pair_probs(counts: np.ndarray, totals: np.ndarray, lower: np.ndarray, delta: float | np.ndarray) -> np.ndarray:
    """``(B + delta lower) / (n + delta)``: ``lower`` where ``delta = inf`` or the context is new here."""
    inf = np.isinf(delta)
    w = np.where(inf | (totals == 0), 1.0, delta / np.maximum(totals + np.where(inf, 0.0, delta), 1e-300))
    return (1.0 - w) * counts / np.maximum(totals, 1.0) + w * lower


class CacheModel:
    """Per (h, g): the cache strengths ``gamma``, ``delta`` and the n-gram's weight ``v`` in ``ngram_cache``."""

    def __init__(self, horizons: int, n_positions: int):
        self.gamma = np.full((horizons, n_positions), np.inf)  # no val: the bigram
        self.delta = np.full((horizons, n_positions), np.inf)  # no val: no pair cache
        self.mix = np.full((horizons, n_positions), 0.5)  # ngram's weight in ngram_cache

    def fit_val(self, ngram: NgramModel, cells: ValCells) -> dict[str, np.ndarray]:
        """Betas and weights of ``ngram``, then gamma, delta and ``v``, on the val cells; the val NLLs in bits."""
        H, G = self.gamma.shape
        nll = {name: np.full((H, G), np.nan) for name in ("bigram", "ngram", "cache", "ngram_cache")}
        for h in range(1, H + 1):
            for g in range(G):
                i, y = cells.at(h, g)
                comp = ngram._fit_betas(h, g, cells.hashes, i, y)
                ngram.weights[h - 1, g] = em_weights(comp)
                if len(i) == 0:
                    continue
                p_ng, p1 = comp @ ngram.weights[h - 1, g], comp[:, P1]
                p_cache = self._fit_cache(ngram.unigram.shape[1], cells, i, y, p1, h, g)
                self.mix[h - 1, g] = em_weights(np.stack([p_ng, p_cache], 1))[0]
                p_mix = self.mix[h - 1, g] * p_ng + (1 - self.mix[h - 1, g]) * p_cache
                for name, p in (("bigram", p1), ("ngram", p_ng), ("cache", p_cache), ("ngram_cache", p_mix)):
                    nll[name][h - 1, g] = -np.log2(p).mean()
        return nll

    def _fit_cache(self, K: int, cells: ValCells, i: np.ndarray, y: np.ndarray, p1: np.ndarray,
                   h: int, g: int) -> np.ndarray:
        """gamma on the val NLL, then delta given it; the cache's val probabilities."""
        counts = prefix_target_counts(cells, i, y, g, K)
        length = cells.pos[cells.sample[i]] + 1.0
        grid = cache_probs(counts[None], length[None], p1[None], GAMMAS[:, None])
        k = int(np.argmin(-np.log(grid).sum(1)))
        self.gamma[h - 1, g] = GAMMAS[k]
        pairs = prefix_target_counts(cells, i, y, g, K, h=h, lag=h)
        context = cells.x[cells.sample[i], g]
        totals = prefix_target_counts(cells, i, context, g, K, lag=h)
        grid = pair_probs(pairs[None], totals[None], grid[k][None], DELTAS[:, None])
        k = int(np.argmin(-np.log(grid).sum(1)))
        self.delta[h - 1, g] = DELTAS[k]
        return grid[k]

    def dense(self, ngram: NgramModel, hashes: dict[str, np.ndarray], counts: np.ndarray, length: np.ndarray,
              pairs: tuple[np.ndarray, np.ndarray], h: int) -> dict[str, np.ndarray]:
        """``ngram``, ``cache`` and ``ngram_cache`` distributions ``[N, G, K]`` at the cells.

        ``counts``/``length``: the prefix counts and t + 1; ``pairs``: ``pair_cache``'s counts and totals.
        """
        G = counts.shape[1]
        p_ng = ngram.dense(hashes, h)
        only_p1 = np.zeros((G, len(COMPONENTS)))
        only_p1[:, P1] = 1.0
        p1 = ngram.dense({lv: hashes[lv] for lv in LEVELS}, h, only_p1)
        p_cache = cache_probs(counts, length[:, None, None].astype(float), p1, self.gamma[h - 1][None, :, None])
        p_cache = pair_probs(pairs[0], pairs[1][..., None], p_cache, self.delta[h - 1][None, :, None])
        v = self.mix[h - 1][None, :, None]
        return {"ngram": p_ng, "cache": p_cache, "ngram_cache": v * p_ng + (1 - v) * p_cache}

    def choices(self) -> dict:
        finite = lambda a: [[None if np.isinf(v) else float(v) for v in row] for row in np.atleast_2d(a)]  # noqa: E731
        return {"gamma": finite(self.gamma), "gamma_grid": finite(GAMMAS)[0], "delta": finite(self.delta),
                "delta_grid": finite(DELTAS)[0], "ngram_weight": np.round(self.mix, 6).tolist()}
