"""A mixture of hierarchically smoothed h-step n-gram predictors per token position.

Levels (each a hashed, pruned ``CountTable`` per (h, g), see counting.py):

* ``p1``..``p5``: the context is the last n tokens at the target's own position,
  ``x[t-n+1..t, g]`` (padding before the utterance). ``p1`` is the h-step bigram.
* ``j1``, ``j2``: the context is every position's tokens of the last 1 or 2 steps, ``x[t-m+1..t, :]``.

Each level is a Dirichlet smoother of its parent (``p_n -> p_{n-1}``, ``p1 -> unigram``,
``j2 -> j1 -> p1``): ``p(y | c) = (n(c, y) + (beta + spare(c)) p_parent(y)) / (n(c) + beta)``, with
``beta`` per (h, g, level) picked on val from a grid, lowest levels first. The prediction is the
mixture ``w_0 unigram + sum_l w_l p_l`` whose weights per (h, g) are fitted by EM on val cells.
Val cells are a seeded sample of at most ``MAX_VAL_CELLS`` steps, so choosing stays fast on large corpora.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from pydreamer.baselines.counting import CountTable, contexts, count_table, em_weights, lagged, mix, seed

log = logging.getLogger(__name__)

ORDERS = 5  # per-position contexts of 1..ORDERS steps
JOINT_ORDERS = 2  # all-position contexts of 1..JOINT_ORDERS steps
LEVELS: tuple[str, ...] = tuple(f"p{n}" for n in range(1, ORDERS + 1)) + tuple(f"j{m}" for m in range(1, JOINT_ORDERS + 1))
PARENT: dict[str, str | None] = {"p1": None, **{f"p{n}": f"p{n - 1}" for n in range(2, ORDERS + 1)},
                                 "j1": "p1", **{f"j{m}": f"j{m - 1}" for m in range(2, JOINT_ORDERS + 1)}}
COMPONENTS: tuple[str, ...] = ("unigram",) + LEVELS
BETAS = np.geomspace(1e-2, 1e4, 13)  # Dirichlet strength per level, as for the bigram
MIN_COUNT = {"p1": 1}  # the bigram keeps every pair; higher levels drop pairs seen once
DEFAULT_MIN_COUNT = 2
MAX_VAL_CELLS = 200_000


def iter_hashes(x: np.ndarray, pos: np.ndarray) -> Iterator[tuple[str, int | None, np.ndarray]]:
    """``(level, position or None for joint levels, [M] uint64 context hashes)`` for every step of ``x``."""
    M, G = x.shape
    for g in range(G):
        h = seed(M, 1 + g)
        for n in range(1, ORDERS + 1):
            h = mix(h, lagged(x[:, g], pos, n - 1))
            yield f"p{n}", g, h
    h = seed(M, 100)
    for m in range(1, JOINT_ORDERS + 1):
        step = lagged(x, pos, m - 1)
        for g in range(G):
            h = mix(h, step[:, g])
        yield f"j{m}", None, h


def cell_hashes(x: np.ndarray, pos: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Context hashes ``[N, G]`` per level at the cells ``t`` of ``x`` (an utterance, or the concatenated val split)."""
    G = x.shape[1]
    out = {lv: np.zeros((len(t), G), np.uint64) for lv in LEVELS}
    for level, g, h in iter_hashes(x, pos):
        if g is None:
            out[level][:] = h[t][:, None]
        else:
            out[level][:, g] = h[t]
    return out


def concat(utterances: Sequence[np.ndarray], G: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens ``[M, G]``, each step's index in its utterance, and the steps left after it."""
    if not utterances:
        return np.zeros((0, G), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    lens = np.array([len(u) for u in utterances], np.int64)
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    pos = np.arange(lens.sum()) - starts
    return np.concatenate(utterances), pos, np.repeat(lens, lens) - pos - 1


class NgramModel:
    """Count tables per (h, g, level), with the smoothing and mixture weights chosen on val."""

    def __init__(self, tables: list[list[dict[str, CountTable]]], unigram: np.ndarray):
        self.tables = tables  # [H][G] level -> table
        self.unigram = unigram  # [G, K]
        H, G = len(tables), unigram.shape[0]
        self.beta = np.full((H, G, len(LEVELS)), BETAS[-1])
        self.weights = np.full((H, G, len(COMPONENTS)), 1.0 / len(COMPONENTS))

    @classmethod
    def count(cls, train: Sequence[np.ndarray], unigram: np.ndarray, horizons: int) -> "NgramModel":
        """Every level's pair counts on the train utterances, for h = 1..horizons."""
        G, K = unigram.shape
        x, pos, remaining = concat(train, G)
        tables: list[list[dict[str, CountTable]]] = [[{} for _ in range(G)] for _ in range(horizons)]
        for level, g, hashes in iter_hashes(x, pos):
            mc = MIN_COUNT.get(level, DEFAULT_MIN_COUNT)
            cx = contexts(hashes, mc)
            for h in range(1, horizons + 1):
                for gg in range(G) if g is None else (g,):
                    tables[h - 1][gg][level] = count_table(cx, x[:, gg], remaining, h, K, mc)
        return cls(tables, unigram)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for row in self.tables for cell in row for t in cell.values())

    def _fit_betas(self, h: int, g: int, hashes: dict, i: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Beta per level, lowest first (each by its own val NLL); returns the components' val probs."""
        probs = {None: self.unigram[g, y]}
        for li, level in enumerate(LEVELS):
            table = self.tables[h - 1][g][level]
            rows = table.rows(hashes[level][i, g])
            c = table.pair_counts(rows, y)
            ok = rows >= 0
            lower = probs[PARENT[level]]
            if ok.any():
                n, s = table.total[rows[ok]], table.spare[rows[ok]]
                b = BETAS[:, None]
                p = (c[ok][None] + (b + s[None]) * lower[ok][None]) / (n[None] + b)
                self.beta[h - 1, g, li] = BETAS[int(np.argmin(-np.log(p).sum(1)))]
            a, bb = table.scale(rows, self.beta[h - 1, g, li])
            probs[level] = a * c + bb * lower
        return np.stack([probs[None]] + [probs[lv] for lv in LEVELS], axis=1)

    def component_probs(self, hashes: dict[str, np.ndarray], y: np.ndarray, h: int, g: int) -> np.ndarray:
        """Each component's probability of the targets ``y`` ``[N]`` at position g: ``[N, len(COMPONENTS)]``."""
        probs = {None: self.unigram[g, y]}
        for li, level in enumerate(LEVELS):
            table = self.tables[h - 1][g][level]
            rows = table.rows(hashes[level][:, g])
            a, b = table.scale(rows, self.beta[h - 1, g, li])
            probs[level] = a * table.pair_counts(rows, y) + b * probs[PARENT[level]]
        return np.stack([probs[None]] + [probs[lv] for lv in LEVELS], axis=1)

    def dense(self, hashes: dict[str, np.ndarray], h: int, weights: np.ndarray | None = None) -> np.ndarray:
        """The mixture's distribution ``[N, G, K]`` at cells with these context hashes.

        ``weights [G, len(COMPONENTS)]`` replaces the fitted ones (a one-hot gives one component).
        Every level is a linear map of its counts and its parent, so each level's rows are scattered once.
        """
        G, K = self.unigram.shape
        w_all = self.weights[h - 1] if weights is None else weights
        N = len(next(iter(hashes.values())))
        out = np.zeros((N, G, K))
        for g in range(G):
            rows, ab = {}, {}
            for li, level in enumerate(LEVELS):
                table = self.tables[h - 1][g][level]
                rows[level] = table.rows(hashes[level][:, g])
                ab[level] = table.scale(rows[level], self.beta[h - 1, g, li])
            coef = {lv: np.zeros(N) for lv in LEVELS}
            coef_u = np.full(N, w_all[g, 0])
            for k, top in enumerate(LEVELS, start=1):
                m = np.full(N, w_all[g, k])
                level = top
                while level is not None:
                    coef[level] += m * ab[level][0]
                    m = m * ab[level][1]
                    level = PARENT[level]
                coef_u += m
            out_g = coef_u[:, None] * self.unigram[g][None]
            for level in LEVELS:
                self.tables[h - 1][g][level].scatter(out_g, rows[level], coef[level])
            out[:, g] = out_g
        return out

    def choices(self) -> dict:
        return {"levels": list(LEVELS), "components": list(COMPONENTS), "beta": self.beta.tolist(),
                "beta_grid": BETAS.tolist(), "weights": np.round(self.weights, 6).tolist(),
                "min_count": {lv: MIN_COUNT.get(lv, DEFAULT_MIN_COUNT) for lv in LEVELS},
                "table_bytes": self.nbytes}


class ValCells:
    """A seeded sample of val steps with their context hashes, prefix counts and targets."""

    def __init__(self, x, pos, remaining, sample, hashes):
        self.x, self.pos, self.remaining, self.sample, self.hashes = x, pos, remaining, sample, hashes
        self.sorted_keys: dict = {}  # (position, h) -> sorted keys for the cache's counts (cache.py)

    @classmethod
    def of(cls, val: Sequence[np.ndarray], G: int, rng: np.random.Generator) -> "ValCells":
        x, pos, remaining = concat(val, G)
        M = len(x)
        sample = np.sort(rng.choice(M, MAX_VAL_CELLS, replace=False)) if M > MAX_VAL_CELLS else np.arange(M)
        return cls(x, pos, remaining, sample, cell_hashes(x, pos, sample))

    def at(self, h: int, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices into the sample of the cells with a target h steps on, and those targets at position g."""
        i = np.flatnonzero(self.remaining[self.sample] >= h)
        return i, self.x[self.sample[i] + h, g]
