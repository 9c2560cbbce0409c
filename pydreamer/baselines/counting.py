"""Hashed, pruned count tables of (context, next token) pairs, and what the predictors need of them.

A context (a few tokens of the last steps) is hashed to one uint64 (multiply-xor, 64 bits: with
at most ~1e7 contexts per table a collision has probability ~1e-5, so no dense ``K**n`` table is
ever built and the key never overflows). ``np.unique`` on the hashes gives the distinct contexts;
pairs are counted with ``np.bincount`` on ``context_id * K + token`` when that range is small, else
with ``np.unique`` on those int64 codes (a sort), so counting is O(M log M) with numpy, no Python
loop over steps.

Pruning (``min_count``): pairs seen fewer than ``min_count`` times are not stored; their count
stays in the context total and its mass goes to the lower order (the ``spare`` count), so the
smoothed distribution still sums to 1. A context left with no stored pair predicts exactly what
the lower order does, so it is dropped too: with ``min_count = 2`` every context seen once is gone,
and memory grows with the repeated pairs only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_OFFSET = 1  # tokens are hashed as token + 1; 0 stands for "before the utterance"
_MUL = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
DENSE_CODES = 1 << 24  # count pairs with bincount when contexts x K is at most this


def mix(h: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Fold ``tokens`` (int, -1 for padding) into the running hashes ``h`` (uint64, wraps mod 2**64)."""
    with np.errstate(over="ignore"):
        v = (h ^ (tokens + PAD_OFFSET).astype(np.uint64)) * _MUL
        return (v ^ (v >> np.uint64(29))) * _MUL2


def seed(n: int, salt: int) -> np.ndarray:
    """The starting hash of ``n`` contexts of one family (``salt`` keeps families apart)."""
    return np.full(n, np.uint64(salt * 0x632BE59BD9B4E019 % (1 << 64)), np.uint64)


def lagged(x: np.ndarray, pos: np.ndarray, lag: int) -> np.ndarray:
    """``x[j - lag]`` where step j of its utterance has ``lag`` steps before it, else -1 (padding)."""
    out = np.full_like(x, -1)
    ok = pos >= lag
    out[ok] = x[np.flatnonzero(ok) - lag]
    return out


@dataclass
class CountTable:
    """Pruned pair counts of one context family at one (horizon, position): CSR rows by context."""

    ctx: np.ndarray  # [C] uint64 sorted: context hashes that kept at least one pair
    total: np.ndarray  # [C] float64: n(c), every pair counted (pruned ones too)
    spare: np.ndarray  # [C] float64: n(c) minus the stored counts (the pruned pairs' mass)
    keys: np.ndarray  # [P] int64 sorted: row * K + token
    counts: np.ndarray  # [P] float64
    indptr: np.ndarray  # [C + 1] int64: row r's pairs are keys[indptr[r]:indptr[r+1]]
    n_tokens: int

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ctx, self.total, self.spare, self.keys, self.counts, self.indptr))

    def rows(self, q: np.ndarray) -> np.ndarray:
        """Row of each queried context hash, -1 where the table does not hold it."""
        if len(self.ctx) == 0:
            return np.full(q.shape, -1, np.int64)
        i = np.minimum(np.searchsorted(self.ctx, q), len(self.ctx) - 1)
        return np.where(self.ctx[i] == q, i, -1)

    def pair_counts(self, rows: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Stored count of token ``y`` after the context in ``rows`` (0 where absent or pruned)."""
        out = np.zeros(len(rows))
        ok = rows >= 0
        if not ok.any() or len(self.keys) == 0:
            return out
        code = rows[ok] * self.n_tokens + y[ok]
        i = np.minimum(np.searchsorted(self.keys, code), len(self.keys) - 1)
        out[ok] = np.where(self.keys[i] == code, self.counts[i], 0.0)
        return out

    def scale(self, rows: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)`` with ``p(y) = a c(y) + b p_lower(y)``: 0 and 1 for a context the table lacks."""
        a, b = np.zeros(len(rows)), np.ones(len(rows))
        ok = rows >= 0
        denom = self.total[rows[ok]] + beta
        a[ok] = 1.0 / denom
        b[ok] = (beta + self.spare[rows[ok]]) / denom
        return a, b

    def scatter(self, out: np.ndarray, rows: np.ndarray, coef: np.ndarray) -> None:
        """``out[i, :] += coef[i] * counts of row rows[i]`` for every cell i (out is ``[N, K]``)."""
        ok = np.flatnonzero((rows >= 0) & (coef != 0))
        if len(ok) == 0:
            return
        start, end = self.indptr[rows[ok]], self.indptr[rows[ok] + 1]
        lens = end - start
        cell = np.repeat(ok, lens)
        j = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(start, lens)
        K = self.n_tokens
        flat = cell * K + self.keys[j] % K
        out += np.bincount(flat, self.counts[j] * coef[cell], minlength=out.size).reshape(out.shape)


@dataclass
class Contexts:
    """The distinct contexts of one family in a corpus, seen at least ``min_count`` times."""

    ctx: np.ndarray  # [C] uint64 sorted
    sample: np.ndarray  # [M'] int64: the corpus steps whose context is kept
    cid: np.ndarray  # [M'] int64: their context's index in ctx


def contexts(hashes: np.ndarray, min_count: int) -> Contexts:
    """Distinct context hashes (one sort); steps whose context is rarer than ``min_count`` are dropped."""
    uniq, inv, cnt = np.unique(hashes, return_inverse=True, return_counts=True)
    keep = cnt >= min_count
    new_id = np.cumsum(keep) - 1
    sample = np.flatnonzero(keep[inv])
    return Contexts(uniq[keep], sample, new_id[inv[sample]])


def count_table(cx: Contexts, target: np.ndarray, remaining: np.ndarray, h: int, K: int,
                min_count: int) -> CountTable:
    """Pairs (context at step j, ``target[j + h]``) inside one utterance (``remaining[j] >= h``)."""
    ok = remaining[cx.sample] >= h
    j, cid = cx.sample[ok], cx.cid[ok]
    C = len(cx.ctx)
    codes = cid * K + target[j + h]
    if C * K <= DENSE_CODES:
        full = np.bincount(codes, minlength=C * K)
        codes = np.flatnonzero(full >= min_count)
        n = full[codes]
    else:
        codes, n = np.unique(codes, return_counts=True)
        keep = n >= min_count
        codes, n = codes[keep], n[keep]
    total = np.bincount(cid, minlength=C).astype(np.float64)
    row_of = codes // K
    used, new_row = np.unique(row_of, return_inverse=True)
    stored = np.bincount(new_row, n, minlength=len(used))
    keys = new_row.astype(np.int64) * K + codes % K
    indptr = np.searchsorted(keys, np.arange(len(used) + 1, dtype=np.int64) * K)
    return CountTable(cx.ctx[used], total[used], total[used] - stored, keys, n.astype(np.float64),
                      indptr.astype(np.int64), K)


def em_weights(p: np.ndarray, iters: int = 200, tol: float = 1e-7) -> np.ndarray:
    """Mixture weights maximising ``sum_i log sum_k w_k p[i, k]`` (EM from uniform); uniform with no rows."""
    n, k = p.shape
    w = np.full(k, 1.0 / k)
    if n == 0:
        return w
    prev = -np.inf
    for _ in range(iters):
        mixed = p @ w
        ll = np.log(mixed).mean()
        w = w * (p / mixed[:, None]).mean(0)
        w /= w.sum()
        if ll - prev < tol:
            break
        prev = ll
    return w
