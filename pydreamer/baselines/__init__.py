"""Per-position predictors of future tokens fitted on train, smoothed on val: the floor a world model must beat.

A cell is (utterance, start t, horizon h): predict ``x[t+h, g]`` having seen steps ``0..t``.

* ``unigram``, ``bigram`` (h-step), ``copy_last``: simple.py.
* ``ngram``: a mixture of hashed, pruned, Dirichlet-smoothed n-grams over the last 1..5 steps at
  the position and the last 1..2 steps at every position, weights by EM on val: ngram.py and
  counting.py (hashing, pruning).
* ``cache``: counts of the utterance's own prefix smoothed toward the bigram; ``ngram_cache``:
  the two mixed by EM on val: cache.py.

``score`` of the three new names builds the ``[N, G, K]`` distributions of one utterance's cells
once per (utterance, starts, h) and keeps them for the next name, as the evaluation asks for the
names one after another on the same cells.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pydreamer.baselines.cache import CacheModel, pair_cache, prefix_counts
from pydreamer.baselines.ngram import NgramModel, ValCells, cell_hashes
from pydreamer.baselines.simple import SIMPLE_NAMES, SimpleBaselines, _as_tokens

log = logging.getLogger(__name__)

NEW_NAMES: tuple[str, ...] = ("ngram", "cache", "ngram_cache")
NAMES: tuple[str, ...] = SIMPLE_NAMES + NEW_NAMES
VAL_SEED = 0


class Baselines(SimpleBaselines):
    """The simple baselines plus the n-gram mixture, the within-utterance cache and their mixture."""

    names: tuple[str, ...] = NAMES

    def __init__(self, *args, ngram: NgramModel | None = None, cache: CacheModel | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ngram, self.cache = ngram, cache
        self.val_nll: dict[str, np.ndarray] = {}
        self._memo: tuple | None = None

    @classmethod
    def fit(cls, train: Sequence[np.ndarray], val: Sequence[np.ndarray], n_tokens: int, horizons: int) -> "Baselines":
        """The simple baselines, then the n-gram counts on train and every new choice on val."""
        model = super().fit(train, val, n_tokens, horizons)
        G = model.n_positions
        train = [_as_tokens(u, n_tokens, G) for u in train]
        val = [_as_tokens(u, n_tokens, G) for u in val]
        model.ngram = NgramModel.count(train, model.unigram, horizons)
        model.cache = CacheModel(horizons, G)
        cells = ValCells.of(val, G, np.random.default_rng(VAL_SEED))
        model.val_nll = model.cache.fit_val(model.ngram, cells)
        log.info("baselines: n-gram tables %.1f MB; val bits per token at h=1 %s", model.ngram.nbytes / 1e6,
                 {k: np.round(v[0], 3).tolist() for k, v in model.val_nll.items()})
        return model

    # -- the new predictors on cells -----------------------------------------------------

    def _new_dense(self, x: np.ndarray, pos: np.ndarray, t: np.ndarray, counts: np.ndarray, pairs: tuple,
                   h: int) -> dict:
        return self.cache.dense(self.ngram, cell_hashes(x, pos, t), counts, pos[t] + 1, pairs, h)

    def _context_dense(self, name: str, context_last: np.ndarray, h: int) -> np.ndarray:
        """A ``[N, G]`` context read as N utterances of one step each (all an API of one step can say)."""
        x = self._check(name, context_last, h)
        N = len(x)
        counts = np.zeros((N, self.n_positions, self.n_tokens), np.int32)
        counts[np.arange(N)[:, None], np.arange(self.n_positions)[None], x] = 1
        no_pairs = (np.zeros(counts.shape), np.zeros((N, self.n_positions)))
        return self._new_dense(x, np.zeros(N, np.int64), np.arange(N), counts, no_pairs, h)[name]

    def _utterance_dense(self, x: np.ndarray, t: np.ndarray, h: int) -> dict:
        """The new predictors' distributions at cells t of one utterance, kept for the next name."""
        key = (h, x.shape, hash(x.tobytes()), hash(t.tobytes()))
        if self._memo is None or self._memo[0] != key:
            pos = np.arange(len(x), dtype=np.int64)
            counts, pairs = prefix_counts(x, t, self.n_tokens), pair_cache(x, t, h, self.n_tokens)
            self._memo = (key, self._new_dense(x, pos, t, counts, pairs, h))
        return self._memo[1]

    def probs(self, name: str, context_last: np.ndarray, h: int) -> np.ndarray:
        """``[N, G, K]`` given step t's tokens; the new names see them as a one-step utterance."""
        if name in NEW_NAMES:
            return self._context_dense(name, context_last, h)
        return super().probs(name, context_last, h)

    def predict(self, name: str, context_last: np.ndarray, h: int) -> np.ndarray:
        if name in NEW_NAMES:
            return self._context_dense(name, context_last, h).argmax(-1)
        return super().predict(name, context_last, h)

    def bits(self, name: str, context_last: np.ndarray, target: np.ndarray, h: int) -> np.ndarray:
        if name in NEW_NAMES:
            y = _as_tokens(target, self.n_tokens, self.n_positions)
            p = self._context_dense(name, context_last, h)
            return -np.log2(np.take_along_axis(p, y[..., None], -1)[..., 0])
        return super().bits(name, context_last, target, h)

    def score(self, name: str, tokens: np.ndarray, starts: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Bits and hits ``[N, G]`` at the cells (t, h) of one utterance; the new names see steps 0..t."""
        if name not in NEW_NAMES:
            return super().score(name, tokens, starts, h)
        x = self._check(name, tokens, h)
        t = np.asarray(starts, np.int64).ravel()
        t = t[(t >= 0) & (t + h < len(x))]
        if len(t) == 0:
            return np.zeros((0, self.n_positions)), np.zeros((0, self.n_positions), bool)
        p = self._utterance_dense(x, t, h)[name]
        y = x[t + h]
        bits = -np.log2(np.take_along_axis(p, y[..., None], -1)[..., 0])
        return bits, p.argmax(-1) == y

    def choices(self) -> dict:
        """The simple baselines' smoothing, then the new ones' (JSON-ready; ``None`` is an infinite gamma)."""
        out = super().choices()
        cache = self.cache.choices()
        out["ngram"] = self.ngram.choices()
        out["cache"] = {k: cache[k] for k in ("gamma", "gamma_grid", "delta", "delta_grid")}
        val_bits = {k: [[None if np.isnan(b) else round(float(b), 4) for b in row] for row in v]
                    for k, v in self.val_nll.items()}  # [H][G] on the val sample; None without val cells
        out["ngram_cache"] = {"ngram_weight": cache["ngram_weight"], "val_bits": val_bits}
        return out
