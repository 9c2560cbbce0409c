"""Baselines against known answers: Markov chains per token position with exact entropies."""
from __future__ import annotations

import numpy as np
import pytest

from pydreamer.baselines import Baselines

K = 32
# each position uses its own part of the codebook, as the VQ-VAE tokens do
SUPPORT = (np.arange(0, 5), np.arange(10, 17))


def transition_matrix(n: int, rng: np.random.Generator, stay: float) -> np.ndarray:
    """A random ergodic chain with a sticky diagonal, so copying is a real competitor."""
    P = rng.dirichlet(np.ones(n), size=n)
    return (1 - stay) * P + stay * np.eye(n)


def stationary(P: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    return pi / pi.sum()


def entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def conditional_entropy_bits(P: np.ndarray, h: int) -> float:
    """H(X_{t+h} | X_t) = sum_a pi(a) H(P^h[a, :]) for the chain started stationary."""
    Ph = np.linalg.matrix_power(P, h)
    return float(sum(pa * entropy_bits(row) for pa, row in zip(stationary(P), Ph)))


def sample_corpus(chains, n_utt: int, T: int, rng) -> list[np.ndarray]:
    """``n_utt`` utterances ``[T, G]``; position g follows ``chains[g]`` on ``SUPPORT[g]``, started stationary."""
    cols = []
    for P, support in zip(chains, SUPPORT):
        cum = P.cumsum(1)
        s = np.empty((n_utt, T), np.int64)
        s[:, 0] = rng.choice(len(P), size=n_utt, p=stationary(P))
        for t in range(1, T):
            s[:, t] = np.minimum((rng.random(n_utt)[:, None] > cum[s[:, t - 1]]).sum(1), len(P) - 1)
        cols.append(support[s])
    return [np.stack([c[u] for c in cols], axis=1) for u in range(n_utt)]


@pytest.fixture(scope="module")
def markov():
    rng = np.random.default_rng(0)
    chains = [transition_matrix(len(SUPPORT[0]), rng, 0.5), transition_matrix(len(SUPPORT[1]), rng, 0.3)]
    train = sample_corpus(chains, 40, 2500, rng)
    val = sample_corpus(chains, 8, 2500, rng)
    test = sample_corpus(chains, 40, 2500, rng)
    return chains, train, val, test, Baselines.fit(train, val, n_tokens=K, horizons=3)


def all_cells(model: Baselines, name: str, test: list[np.ndarray], h: int):
    scored = [model.score(name, u, np.arange(len(u)), h) for u in test]
    return np.concatenate([s[0] for s in scored]), np.concatenate([s[1] for s in scored])


@pytest.mark.parametrize("h", [1, 3])
def test_bigram_reaches_the_chains_conditional_entropy(markov, h):
    chains, _, _, test, model = markov
    bits, _ = all_cells(model, "bigram", test, h)
    for g, P in enumerate(chains):
        assert bits[:, g].mean() == pytest.approx(conditional_entropy_bits(P, h), abs=0.02)


def test_unigram_reaches_the_stationary_entropy(markov):
    chains, _, _, test, model = markov
    bits, _ = all_cells(model, "unigram", test, 1)
    for g, P in enumerate(chains):
        assert bits[:, g].mean() == pytest.approx(entropy_bits(stationary(P)), abs=0.02)


@pytest.mark.parametrize("h", [1, 2, 3])
def test_copy_last_accuracy_is_the_fraction_of_repeats(markov, h):
    *_, test, model = markov
    _, hit = all_cells(model, "copy_last", test, h)
    repeats = np.concatenate([u[h:] == u[:-h] for u in test])
    assert hit.shape == repeats.shape and hit.mean() == repeats.mean()
    # and its NLL is finite and honest: no better than the bigram, which knows the chain
    bits_copy, _ = all_cells(model, "copy_last", test, h)
    bits_bigram, _ = all_cells(model, "bigram", test, h)
    assert np.isfinite(bits_copy).all() and bits_copy.mean() > bits_bigram.mean()


def test_every_probability_positive_and_rows_sum_to_one(markov):
    *_, model = markov
    context = np.array([[0, 10], [4, 16], [31, 31], [20, 3]])  # seen, seen, never seen at all, other position's tokens
    for name in model.names:
        for h in (1, 3):
            p = model.probs(name, context, h)
            assert p.shape == (4, 2, K) and (p > 0).all()
            np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
            target = np.array([[31, 0], [0, 31], [1, 12], [4, 16]])  # unseen targets included
            bits = model.bits(name, context, target, h)
            assert np.isfinite(bits).all()
            np.testing.assert_allclose(bits, -np.log2(np.take_along_axis(p, target[..., None], -1)[..., 0]))
            if name != "copy_last":
                np.testing.assert_array_equal(model.predict(name, context, h), p.argmax(-1))
    # an unseen context falls back to the unigram
    np.testing.assert_allclose(model.probs("bigram", context[2:3], 1), model.probs("unigram", context[2:3], 1))


def test_val_picks_less_smoothing_when_data_are_plentiful(markov):
    chains, train, val, _, big = markov
    small = Baselines.fit([u[:40] for u in train[:2]], val, n_tokens=K, horizons=1)
    w_small = np.array(small.choices()["bigram"]["prior_weight"])
    w_big = np.array(big.choices()["bigram"]["prior_weight"])
    assert (w_big[0] < w_small[0]).all() and (w_big < 0.05).all()
    c = big.choices()
    assert set(c) == set(big.names) and np.array(c["copy_last"]["eps"]).shape == (3, 2)


def test_score_keeps_only_cells_inside_the_utterance_and_evaluate_averages_them(markov):
    *_, test, model = markov
    u = test[0][:10]
    bits, hit = model.score("bigram", u, np.array([0, 5, 7, 8, 9]), h=2)
    assert bits.shape == hit.shape == (3, 2)  # t = 0, 5, 7: t + 2 < 10
    res = model.evaluate([u, test[1][:4]], [np.arange(10), np.arange(4)], horizons=[1, 3])
    assert list(res) == list(model.names)
    np.testing.assert_array_equal(res["bigram"]["cells"], [9 + 3, 7 + 1])
    assert np.isfinite(res["unigram"]["bits"]).all() and (0 <= res["copy_last"]["accuracy"]).all()


def test_large_codebook_stays_sparse_and_fits_without_val_data():
    rng = np.random.default_rng(1)
    K_big, G, H = 1024, 4, 15
    offsets = np.array([0, 256, 512, 768])
    train = [offsets + rng.integers(0, 64, size=(300, G)) for _ in range(6)]
    model = Baselines.fit(train, [], n_tokens=K_big, horizons=H)
    assert max(c.nnz for row in model.pair_counts for c in row) <= 6 * 300
    assert (model.beta == model.beta.max()).all() and (model.eps == 0.5).all()  # most smoothing without val
    p = model.probs("bigram", train[0][:8], h=H)
    assert p.shape == (8, G, K_big) and (p > 0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0)
    with pytest.raises(ValueError):
        model.probs("bigram", train[0][:8], h=H + 1)
    with pytest.raises(ValueError):
        model.probs("bigram", np.full((1, G), K_big), h=1)


# -- the n-gram mixture and the within-utterance cache ------------------------------------

import json  # noqa: E402

from pydreamer.baselines import counting  # noqa: E402
from pydreamer.baselines.cache import pair_cache, prefix_counts, prefix_target_counts  # noqa: E402
from pydreamer.baselines.ngram import NgramModel, ValCells  # noqa: E402

NEW = ("ngram", "cache", "ngram_cache")


def periodic_corpus(period: int, n_utt: int, T: int, rng) -> list[np.ndarray]:
    """Each utterance cycles, at each of 2 positions, through its own order of ``period`` tokens from a random phase."""
    out = []
    for _ in range(n_utt):
        cols = [rng.permutation(period)[(np.arange(T) + rng.integers(period)) % period] + 8 * g for g in range(2)]
        out.append(np.stack(cols, 1))
    return out


@pytest.mark.parametrize("period", [3, 5])
def test_periodic_sequences_are_learnt_by_ngram_and_cache_not_by_the_bigram(period):
    rng = np.random.default_rng(period)
    train, val, test = (periodic_corpus(period, n, 200, rng) for n in (150, 10, 10))  # every order seen
    model = Baselines.fit(train, val, n_tokens=16, horizons=period)
    for h in (1, period):
        for name in NEW:
            bits, hit = all_cells(model, name, test, h)
            assert bits.mean() < 0.3 and hit.mean() > 0.9, (name, h, bits.mean(), hit.mean())
    bits, hit = all_cells(model, "bigram", test, 1)  # the next token depends on the utterance's order
    assert bits.mean() > 0.8 and hit.mean() < 0.75


def test_the_new_predictors_see_only_the_prefix(markov):
    """Changing steps after t changes no distribution of a cell at t (the scored target itself lies after t)."""
    *_, test, model = markov
    u = test[0][:300].copy()
    starts = np.arange(0, 290, 7)
    before = {h: model._utterance_dense(u, starts, h) for h in (1, 3)}
    for t in (0, 50, 200):
        changed = u.copy()
        changed[t + 1:] = np.random.default_rng(t).permutation(changed[t + 1:])
        keep = starts <= t
        for h, dense in before.items():
            after = model._utterance_dense(changed, starts, h)
            for name in NEW:
                np.testing.assert_array_equal(after[name][keep], dense[name][keep])
                assert not np.array_equal(after[name][~keep], dense[name][~keep])


def test_weights_sum_to_one_and_distributions_are_normalised(markov):
    *_, test, model = markov
    np.testing.assert_allclose(model.ngram.weights.sum(-1), 1.0)
    assert ((0 <= model.cache.mix) & (model.cache.mix <= 1)).all()
    u, t = test[1][:120], np.arange(0, 117)
    for h in (1, 3):
        dense = model._utterance_dense(u, t[t + h < len(u)], h)
        for name in NEW:
            p = dense[name]
            assert (p > 0).all()
            np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-10)
            bits, hit = model.score(name, u, t, h)
            y = u[t[t + h < len(u)] + h]
            np.testing.assert_allclose(bits, -np.log2(np.take_along_axis(p, y[..., None], -1)[..., 0]))
            np.testing.assert_array_equal(hit, p.argmax(-1) == y)
    c = model.choices()
    json.dumps(c, allow_nan=False)
    assert list(model.names) == ["unigram", "bigram", "copy_last", *NEW] and set(NEW) <= set(c)


@pytest.mark.parametrize("h", [1, 3])
def test_ngram_cache_is_never_much_worse_than_the_better_of_the_two(markov, h):
    *_, test, model = markov
    res = {name: all_cells(model, name, test[:10], h)[0].mean() for name in ("bigram", *NEW)}
    assert res["ngram_cache"] <= min(res["ngram"], res["cache"]) + 0.01, res
    assert res["ngram"] <= res["bigram"] + 0.01, res  # a first-order chain: longer contexts cannot help, must not hurt


def test_val_counts_agree_with_the_scoring_counts_and_a_loop():
    rng = np.random.default_rng(3)
    K, h = 6, 2
    utts = [rng.integers(0, K, size=(T, 2)) for T in (9, 1, 14)]
    cells = ValCells.of(utts, 2, rng)
    i, y = cells.at(h, 1)
    counts = prefix_target_counts(cells, i, y, 1, K)
    pairs = prefix_target_counts(cells, i, y, 1, K, h=h, lag=h)
    step = cells.sample[i]
    for n, j in enumerate(step):
        u = utts[int(np.cumsum(cells.pos == 0)[j] - 1)]
        t = cells.pos[j]
        assert counts[n] == (u[: t + 1, 1] == y[n]).sum()
        assert pairs[n] == sum(u[s, 1] == u[t, 1] and u[s + h, 1] == y[n] for s in range(t - h + 1))
        c_dense = prefix_counts(u, np.array([t]), K)[0, 1]
        b_dense, n_dense = pair_cache(u, np.array([t]), h, K)
        assert c_dense[y[n]] == counts[n] and b_dense[0, 1, y[n]] == pairs[n]
        assert n_dense[0, 1] == sum(u[s, 1] == u[t, 1] for s in range(t - h + 1))


def test_sorted_and_dense_pair_counting_agree(markov, monkeypatch):
    _, train, *_ = markov
    unigram = np.full((2, K), 1.0 / K)
    dense = NgramModel.count(train[:3], unigram, 2)
    monkeypatch.setattr(counting, "DENSE_CODES", 0)
    sorted_ = NgramModel.count(train[:3], unigram, 2)
    for row_a, row_b in zip(dense.tables, sorted_.tables):
        for cell_a, cell_b in zip(row_a, row_b):
            for level, a in cell_a.items():
                b = cell_b[level]
                for field in ("ctx", "total", "spare", "keys", "counts", "indptr"):
                    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            assert (cell_a["p1"].spare == 0).all() and (cell_a["p3"].counts >= 2).all()
