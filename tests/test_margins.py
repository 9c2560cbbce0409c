"""The margin to the best baseline: which baseline is best, the margin's value, its interval, voiced cells."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pydreamer.forecast import CellSums, evaluate_split
from pydreamer.margins import best_baselines, curves, margin


def _sums(model_bits: np.ndarray, base_bits: dict[str, np.ndarray], cells: np.ndarray) -> CellSums:
    """Per-utterance totals [U, H] given per-token mean bits of each predictor."""
    names = ["model", *base_bits]
    bits = np.stack([model_bits * cells] + [b * cells for b in base_bits.values()])
    hits = np.zeros_like(bits)
    return CellSums(names, bits, hits, cells, bits / 2, hits, cells / 2)


def test_the_best_baseline_is_chosen_per_horizon_and_the_margin_is_its_nll_minus_the_models():
    cells = np.full((4, 2), 10.0)
    sums = _sums(np.full((4, 2), 3.0), {"bigram": np.array([[4.0, 5.0]] * 4), "cache": np.array([[4.5, 4.2]] * 4)},
                 cells)
    table = curves(sums)
    assert best_baselines(table) == ["bigram", "cache"]
    m = margin(sums, best_baselines(table))
    assert m["margin"] == pytest.approx([1.0, 1.2])
    # every utterance has the same margin: the interval has no width
    assert m["lo"] == pytest.approx([1.0, 1.2]) and m["hi"] == pytest.approx([1.0, 1.2])


def test_the_interval_covers_the_spread_over_utterances_and_narrows_with_more_of_them():
    rng = np.random.default_rng(0)

    def interval(U):
        per_utt = rng.normal(0.2, 0.5, (U, 1))  # margin per utterance: mean 0.2 bits, sd 0.5
        sums = _sums(np.zeros((U, 1)), {"bigram": per_utt}, np.full((U, 1), 50.0))
        m = margin(sums, ["bigram"], seed=1)
        return m["lo"][0], m["margin"][0], m["hi"][0]

    lo, mid, hi = interval(20)
    assert lo < mid < hi and lo < 0.2 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 0.5 / np.sqrt(20), rel=0.35)  # about the normal interval
    lo2, _, hi2 = interval(500)
    assert hi2 - lo2 < (hi - lo) / 3


class _Perfect:
    """Predicts every future token with certainty from the utterance itself (a stand-in world model)."""

    def __init__(self, K):
        self.K, self.wm = K, self

    def eval(self):
        return self

    def forecast(self, tokens, horizon, samples, starts, generator=None):
        T, G = tokens.shape
        t = (starts[:, None] + torch.arange(1, horizon + 1)[None]).clamp(max=T - 1)
        return torch.nn.functional.one_hot(tokens[t], self.K).double() * (1 - 1e-9) + 1e-9 / self.K


class _Unigram:
    names = ("unigram",)

    def score(self, name, tokens, starts, h):
        t = starts[starts + h < len(tokens)]
        return np.full((len(t), tokens.shape[1]), 3.0), np.zeros((len(t), tokens.shape[1]), bool)


def test_voiced_cells_are_those_whose_target_step_is_voiced():
    tokens = np.arange(12).reshape(6, 2) % 8
    voice = np.array([0, 0, 1, 1, 0.4, 0.6])  # steps 2, 3 and 5 voiced (at least half their frames)
    sums = evaluate_split(_Perfect(8), [tokens], _Unigram(), 2, 1, 0, 0, torch.device("cpu"), voices=[voice])
    # h = 1: starts 0..4 -> targets 1..5, of which 2, 3, 5 are voiced; G = 2 tokens per cell
    assert sums.cells[0].tolist() == [10, 8] and sums.voiced_cells[0].tolist() == [6, 6]
    table = curves(sums, voiced=True)
    assert table["unigram"]["nll"] == pytest.approx([3.0, 3.0]) and table["model"]["nll"][0] < 1e-6
    assert table["model"]["acc"] == pytest.approx([1.0, 1.0])
    no_voice = evaluate_split(_Perfect(8), [tokens], _Unigram(), 2, 1, 0, 0, torch.device("cpu"))
    assert no_voice.voiced_cells.sum() == 0 and np.isnan(curves(no_voice, voiced=True)["model"]["nll"]).all()
