"""Perceptual metrics on signals made here: a voiced harmonic tone (vibrato, two syllables a
second) and the same with white noise at known SNRs; silence, too-short clips, missing packages."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from pydreamer.dreams import perceptual
from pydreamer.dreams.perceptual import copy_synthesis, dnsmos, dnsmos_summary

SR = 16000


def voice(seconds: float = 2.0, sr: int = SR) -> np.ndarray:
    """150 Hz +- 20 Hz vibrato at 5 Hz, 39 harmonics falling as 1/k, an envelope of two
    syllables a second that never quite closes (speech rarely does)."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(150 + 20 * np.sin(2 * np.pi * 5 * t)) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 40) if 150 * k < sr / 2 - 500)
    x = x * (0.1 + 0.9 * np.sin(2 * np.pi * t) ** 2)
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


def noisy(x: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(x))
    noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return voice()


# metric, identical must reach, a mild and a harsh SNR (dB), the least drop between each step
INTRUSIVE = [
    ("pesq_wb", 4.5, 30, 10, 0.5),
    ("stoi", 0.99, 10, 0, 0.05),
    ("estoi", 0.99, 20, 5, 0.1),
    ("visqol", 4.7, 20, 5, 0.3),
]


@pytest.mark.parametrize("metric,best,mild,harsh,margin", INTRUSIVE)
def test_identical_is_best_and_more_noise_is_worse(clean, metric, best, mild, harsh, margin):
    fn = getattr(perceptual, metric)
    degraded = (clean, noisy(clean, mild), noisy(clean, harsh))
    same, mild_score, harsh_score = (fn(clean, deg, SR) for deg in degraded)
    assert same >= best
    assert mild_score < same - margin
    assert harsh_score < mild_score - margin


def test_other_rates_are_resampled_and_pairs_cut_to_the_shorter():
    x = voice(sr=22050)
    scores = copy_synthesis([x], [np.concatenate([x, np.zeros(5000, np.float32)])], 22050)
    assert scores["n"] == 1 and scores["pesq_wb"] > 4.5 and scores["stoi"] > 0.99 and scores["visqol"] > 4.7


def test_dnsmos_in_range_and_noise_lowers_background_score():
    x = voice(2.3)  # speechmos doubles a clip until it fills its 9.01 s window: 2.3 s takes one, 2 s seven
    clean_scores, noisy_scores = dnsmos(x, SR), dnsmos(noisy(x, 0), SR)
    for scores in (clean_scores, noisy_scores):
        assert set(scores) == {"sig", "bak", "ovrl"}
        assert all(math.isfinite(v) and 1.0 <= v <= 5.0 for v in scores.values())
    assert noisy_scores["bak"] < clean_scores["bak"] - 1.0


def test_silent_short_and_empty_clips_are_skipped_not_fatal(clean):
    silence, short = np.zeros(SR, np.float32), clean[: SR // 5]  # 0.2 s: below every minimum
    alone = copy_synthesis([clean], [noisy(clean, 10)], SR)
    mixed = copy_synthesis([silence, clean, short], [silence, noisy(clean, 10), short], SR)
    assert mixed["n"] == 3 and {k: mixed[k] for k in perceptual.INTRUSIVE} == pytest.approx(
        {k: alone[k] for k in perceptual.INTRUSIVE}, abs=0.01  # ESTOI adds a little random noise
    )
    nothing = copy_synthesis([silence, short], [silence, short], SR)
    assert nothing["n"] == 2 and all(math.isnan(nothing[k]) for k in perceptual.INTRUSIVE)
    with pytest.raises(ValueError):
        perceptual.stoi(short, short, SR)
    # speechmos itself would loop forever on an empty clip and score silence as speech
    dn = dnsmos_summary([silence, short, np.zeros(0, np.float32)], SR)
    assert set(dn) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"} and all(math.isnan(v) for v in dn.values())


@pytest.mark.parametrize(
    "hidden,metrics,pip",
    [
        ("pesq", ["pesq_wb"], "pesq"),
        ("pystoi", ["stoi", "estoi"], "pystoi"),
        ("visqol", ["visqol"], "visqol-python"),
        ("onnxruntime", ["dnsmos"], "onnxruntime"),
        ("requests", ["dnsmos"], "requests"),  # speechmos imports it and never uses it
    ],
)
def test_a_missing_package_is_a_one_line_note(monkeypatch, clean, hidden, metrics, pip):
    monkeypatch.setitem(sys.modules, hidden, None)  # `import hidden` now raises ImportError
    if "dnsmos" in metrics:  # imported already by other tests: import it afresh, to meet the hidden one
        monkeypatch.delitem(sys.modules, "speechmos.dnsmos", raising=False)
    can = perceptual.available()
    for metric in metrics:
        assert can[metric] == f"{metric}: {hidden} is not installed (pip install {pip})"
    assert perceptual.notes() == [can[m] for m in metrics]
    if "dnsmos" in metrics:
        assert dnsmos_summary([clean], SR) == {}
    else:
        scores = copy_synthesis([clean], [clean], SR)
        assert set(scores) == {"n", *perceptual.INTRUSIVE} - set(metrics)
        assert all(math.isfinite(v) for v in scores.values())


def test_visqol_leaves_torchs_thread_count_as_it_was(clean):
    """numba and torch share an OpenMP pool: a ViSQOL score once moved torch to every core (30x slower dreams)."""
    import torch

    if perceptual.available()["visqol"]:
        pytest.skip(perceptual.available()["visqol"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        perceptual.visqol(clean, noisy(clean, 20), SR)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
