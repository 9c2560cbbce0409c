"""Acoustic metrics against signals with known answers: tones, white noise, silence."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from pydreamer.dreams.acoustics import (
    METRICS,
    N_FFT,
    STRUCTURE,
    clip_metrics,
    compare_real_generated,
    comparison_markdown,
    describe_clips,
    log_spectral_distance,
    rms,
    similarity_by_horizon,
    snr_db,
    spectral_convergence,
    write_comparison_csv,
)
from pydreamer.dreams.structure import envelope_period, keeps_period, speech_span, structure_metrics

SR = 16000
BIN_HZ = SR / N_FFT


def sine(f0: float, seconds: float = 2.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return amplitude * np.sin(2 * np.pi * f0 * t + 0.3)


def white_noise(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))


@pytest.mark.parametrize("f0", [440.0, 1000.0, 3000.0])
def test_sine_centroid_rolloff_and_zero_crossings(f0):
    m = clip_metrics(sine(f0), SR)
    assert m["spectral_centroid"] == pytest.approx(f0, abs=BIN_HZ)
    assert m["spectral_rolloff"] == pytest.approx(f0, abs=2 * BIN_HZ)
    assert m["zero_crossing_rate"] == pytest.approx(2 * f0 / SR, rel=0.02)
    assert m["spectral_entropy"] < 0.35  # a tone concentrates its power in a few bins
    assert abs(m["snr_db"]) < 0.5  # stationary: loudest and quietest frames alike


@pytest.mark.parametrize("amplitude", [0.01, 0.5, 1.0])
def test_rms_of_a_sine_is_its_amplitude_over_sqrt2(amplitude):
    assert rms(sine(440.0, amplitude=amplitude)) == pytest.approx(amplitude / np.sqrt(2), rel=2e-3)


def test_white_noise_is_flat_and_centred_at_a_quarter_of_sr():
    m = clip_metrics(white_noise(), SR)
    assert m["spectral_entropy"] > 0.9  # a periodogram of white noise: ~0.93 at n_fft = 1024
    assert m["spectral_centroid"] == pytest.approx(SR / 4, rel=0.03)
    assert m["zero_crossing_rate"] == pytest.approx(0.5, abs=0.02)


def test_snr_sees_pauses_above_a_noise_floor():
    y = white_noise(2.0) * 0.001
    y[SR // 2 : SR] += sine(440.0, 0.5)  # a tone over a -60 dB floor for a quarter of the clip
    assert 45 < snr_db(y) < 75


@pytest.mark.parametrize("clip", [np.zeros(SR), np.zeros(100), np.zeros(0), np.full(500, np.nan), sine(440, 0.01)])
def test_silence_and_short_clips_give_finite_numbers(clip):
    m = clip_metrics(clip, SR)
    assert set(m) == set(METRICS) and all(np.isfinite(v) for v in m.values())
    assert np.isfinite(log_spectral_distance(clip, clip)) and np.isfinite(spectral_convergence(clip, sine(440)))
    if not np.nan_to_num(clip).any():
        assert m["snr_db"] == 0.0 and m["rms"] == 0.0 and m["spectral_entropy"] == 0.0
        assert log_spectral_distance(clip, clip) == 0.0 and spectral_convergence(clip, clip) == 0.0


def test_similarity_is_zero_against_itself_and_positive_against_another():
    a, b = white_noise(seed=1), white_noise(seed=2)
    assert log_spectral_distance(a, a) == 0.0 and spectral_convergence(a, a) == 0.0
    assert log_spectral_distance(a, b) > 1.0 and spectral_convergence(a, b) > 0.5
    # over the overlap only: a longer generated clip is cut to the reference
    assert log_spectral_distance(a, np.r_[a, b]) == 0.0
    # a louder copy: 6.02 dB everywhere
    assert log_spectral_distance(a, 2 * a) == pytest.approx(20 * np.log10(2), abs=1e-6)
    assert spectral_convergence(a, 2 * a) == pytest.approx(1.0)


def test_similarity_by_horizon_finds_where_a_rollout_drifts():
    ref = white_noise(2.0, seed=3)
    gen = ref.copy()
    gen[SR:] = white_noise(1.0, seed=4)  # faithful for 1 s, then unrelated
    res = similarity_by_horizon(ref, gen, SR, window_s=0.5)
    np.testing.assert_allclose(res["end_s"], [0.5, 1.0, 1.5, 2.0])
    lsd = res["log_spectral_distance"]
    assert lsd[0] == 0.0 and lsd[1] < 1.0 and lsd[2] > 3.0 and lsd[3] > 3.0
    assert res["spectral_convergence"][0] == 0.0 and res["spectral_convergence"][3] > 0.5
    assert res["frames"].sum() == 1 + (2 * SR - N_FFT) // 256


def test_ks_table_tells_same_from_shifted_distributions(tmp_path):
    rng = np.random.default_rng(0)
    real = [{"rms": v, "snr_db": 10 + v} for v in rng.normal(1.0, 0.2, 300)]
    same = [{"rms": v, "snr_db": 10 + v} for v in rng.normal(1.0, 0.2, 300)]
    shifted = [{"rms": v, "snr_db": 10 + v} for v in rng.normal(1.5, 0.2, 300)]
    rows_same = compare_real_generated(real, same)
    rows_shift = compare_real_generated(real, shifted)
    assert [r.metric for r in rows_same] == ["snr_db", "rms"]  # METRICS order
    assert all(r.ks_pvalue > 0.05 for r in rows_same)
    assert all(r.ks_pvalue < 1e-10 and r.ks_statistic > 0.5 for r in rows_shift)
    rms_row = rows_shift[1]
    assert rms_row.relative_difference == pytest.approx(0.5, abs=0.05)
    assert rms_row.real_iqr == pytest.approx(2 * 0.6745 * 0.2, rel=0.15)
    md = comparison_markdown(rows_shift)
    assert md.count("\n") == 4 and md.startswith("| metric |") and "| rms |" in md
    path = write_comparison_csv(rows_shift, tmp_path / "sub" / "acoustics.csv")
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert [t["metric"] for t in table] == ["snr_db", "rms"]
    assert float(table[1]["ks_pvalue"]) == pytest.approx(rms_row.ks_pvalue)


def test_compare_clip_sets_end_to_end():
    real = describe_clips([sine(440 + 20 * i, 0.5) for i in range(6)], SR)
    gen = describe_clips([white_noise(0.5, seed=i) for i in range(6)], SR)
    rows = {r.metric: r for r in compare_real_generated(real, gen)}
    assert set(rows) == set(METRICS)
    assert rows["spectral_entropy"].ks_statistic == 1.0 and rows["spectral_centroid"].relative_difference > 5
    with pytest.raises(ValueError):
        compare_real_generated(real, [{"rms": np.nan}], metrics=["rms"])


# -- the structure of speech: known answers ---------------------------------------------

def voiced_tone(seconds: float, f0: float = 150.0) -> np.ndarray:
    """A harmonic tone (five partials) at pitch f0: a sung vowel."""
    t = np.arange(int(seconds * SR)) / SR
    return sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6))


def syllables(on_s: float = 0.3, off_s: float = 0.2, n: int = 8, floor: float = 1e-4) -> np.ndarray:
    """`n` tone bursts of `on_s` seconds with `off_s` pauses: a syllable every on_s + off_s seconds."""
    burst = np.concatenate([voiced_tone(on_s), np.zeros(int(off_s * SR))])
    return np.tile(burst, n) + floor * np.random.default_rng(0).standard_normal(len(burst) * n)


def test_structure_of_tone_bursts_is_their_known_rhythm_pitch_and_pauses():
    m = structure_metrics(syllables(), SR)
    assert m["voiced_fraction"] == pytest.approx(0.6, abs=0.12)  # 0.3 s voiced of every 0.5 s
    assert m["harmonicity"] > 0.85
    assert m["syllable_rate_hz"] == pytest.approx(2.0, abs=0.1)  # one burst every 0.5 s
    assert m["syllable_strength"] > 0.4
    assert m["speech_median_s"] == pytest.approx(0.3, abs=0.04)
    assert m["pause_median_s"] == pytest.approx(0.2, abs=0.04)
    assert envelope_period(syllables(), SR) == pytest.approx(0.5, abs=0.02)


def test_noise_has_no_pitch_no_harmonics_no_pauses_and_no_period():
    m = structure_metrics(white_noise(3.0), SR)
    assert m["voiced_fraction"] < 0.2
    assert m["harmonicity"] < 0.3
    assert m["pause_median_s"] == 0.0
    assert m["speech_median_s"] == pytest.approx(3.0, abs=0.05)
    assert np.isnan(envelope_period(white_noise(3.0), SR))


def test_a_steady_tone_is_voiced_and_harmonic_without_a_syllable_rhythm():
    m = structure_metrics(voiced_tone(3.0), SR)
    assert m["voiced_fraction"] > 0.95 and m["harmonicity"] > 0.95
    assert m["syllable_strength"] < 0.1  # no modulation: the 2-8 Hz band holds next to none of it


def test_silence_has_zero_structure_and_no_speech_span():
    m = structure_metrics(np.zeros(SR), SR)
    assert (m["voiced_fraction"], m["harmonicity"], m["pause_median_s"], m["speech_median_s"]) == (0, 0, 0, 0)
    assert np.isnan(m["syllable_rate_hz"])
    assert speech_span(np.zeros(SR), SR) == (0, 0)


def test_speech_span_cuts_leading_and_trailing_silence():
    y = np.concatenate([np.zeros(SR), voiced_tone(1.0), np.zeros(SR // 2)])
    start, end = speech_span(y, SR)
    assert start == pytest.approx(SR, abs=0.02 * SR)
    assert end == pytest.approx(2 * SR, abs=0.03 * SR)


@pytest.mark.parametrize("reference,generated,kept", [(0.5, 0.52, True), (0.5, 0.25, True), (0.5, 1.0, True),
                                                      (0.5, 0.7, False), (0.5, float("nan"), False)])
def test_keeps_period_allows_the_same_rhythm_counted_over_one_or_two_syllables(reference, generated, kept):
    assert keeps_period(reference, generated) is kept


def test_comparison_lists_structure_after_the_six_acoustic_metrics():
    real = [{**clip_metrics(syllables(n=4), SR), **structure_metrics(syllables(n=4), SR)} for _ in range(3)]
    rows = compare_real_generated(real, real)
    assert [r.metric for r in rows] == list(METRICS) + list(STRUCTURE)
    assert all(r.relative_difference == 0 for r in rows if np.isfinite(r.real_median))


def test_completions_that_repeat_the_prompts_syllables_keep_its_period_and_noise_does_not():
    from types import SimpleNamespace

    from pydreamer.dreams.report import rhythm_of_completions, structure_verdict

    def completion(name, true_wave, dream_waves):
        dreams = [SimpleNamespace(wave=np.concatenate([true_wave[:SR], w])) for w in dream_waves]
        return SimpleNamespace(clip=SimpleNamespace(name=name), true_wave=true_wave, dreams=dreams, prompt_samples=SR)

    rhythmic = syllables(0.3, 0.2, 10)  # a period of 0.5 s
    slower = syllables(0.5, 0.3, 8)  # 0.8 s
    good = completion("a", rhythmic, [syllables(0.3, 0.2, 8), syllables(0.3, 0.2, 8)])
    bad = completion("b", slower, [white_noise(4.0, seed=1), white_noise(4.0, seed=2)])
    r = rhythm_of_completions([good, bad], SR, kind_of=lambda name: "syllables")
    assert r["rhythmic"] == 2 and r["per_prompt"][0]["true_period_s"] == pytest.approx(0.5, abs=0.02)
    assert r["per_prompt"][0]["kept"] == 1.0 and r["per_prompt"][1]["kept"] == 0.0
    assert r["per_prompt"][1]["chance"] == 0.0  # the other prompt's dreams are at 0.5 s, not 0.8 (or 0.4, 1.6)
    assert r["kept"] == 0.5 and r["by_kind"]["syllables"]["rhythmic"] == 2

    rows = compare_real_generated([{"rms": 1.0, "harmonicity": 0.8}] * 3, [{"rms": 0.5, "harmonicity": 0.4}] * 3)
    assert structure_verdict(rows) == "Within +-20% of the real medians (RMS aside): 0 of 1; not: harmonicity -50%.\n"


def test_one_short_continuation_does_not_cut_every_prompts_horizon():
    from pydreamer.dreams.report import horizon_summary

    def prompt(lsd):
        kinds = {k: {"end_s": np.arange(1, len(lsd) + 1) * 0.5, "lsd": np.array(lsd), "sc": np.zeros(len(lsd))}
                 for k in ("own", "swapped")}
        return kinds

    s = horizon_summary([prompt([10, 11, 12, 13]), prompt([20, 21, 22, 23]), prompt([30])])
    assert s["own"]["end_s"] == [0.5, 1.0, 1.5, 2.0]  # nominal ends: the same metric keys in every run
    assert s["own"]["lsd"] == [20.0, 16.0, 17.0, 18.0] and s["own"]["prompts"] == [3, 2, 2, 2]


def test_clips_too_short_for_a_syllable_rate_leave_out_that_row_not_the_table():
    """A bug: dreams of 0.5 s (no syllable rate: NaN) made the whole acoustic table raise."""
    short = [{**clip_metrics(voiced_tone(0.3), SR), **structure_metrics(voiced_tone(0.3), SR)} for _ in range(2)]
    rows = compare_real_generated(short, short)
    assert "syllable_rate_hz" not in [r.metric for r in rows] and "harmonicity" in [r.metric for r in rows]
    with pytest.raises(ValueError, match="syllable_rate_hz"):
        compare_real_generated(short, short, metrics=["syllable_rate_hz"])
