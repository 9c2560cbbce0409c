"""The built-in speech corpus: a cheap deterministic plan, and audio that is a pure function of it."""
from __future__ import annotations

import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest

from runtime.config import load_config
from tokenizer import synth
from tokenizer.synth import KINDS, SynthUtterance, plan_synth_corpus, synth_voices, synthesize


@pytest.fixture(scope="module")
def tiny_conf():
    return load_config(["defaults", "audio", "tiny"])


@pytest.fixture(scope="module")
def tiny_plan(tiny_conf):
    return plan_synth_corpus(tiny_conf)


@pytest.fixture(scope="module")
def tiny_audio(tiny_conf, tiny_plan):
    return [synthesize(u, tiny_conf.sample_rate, tiny_conf.synth_noise_db) for u in tiny_plan]


def _conf(**changes):
    conf = load_config(["defaults"])
    conf.update(changes)
    return conf


def _utterance(voice: str = "en+m1", text: str = "seven eight nine ten", seed: int = 1) -> SynthUtterance:
    return SynthUtterance(f"synth-test-{voice}", voice, voice.split("+")[0], "counting", text, 170, 50, seed)


def test_plan_is_deterministic_and_follows_the_seed():
    conf = _conf(synth_minutes=3.0)
    assert plan_synth_corpus(conf) == plan_synth_corpus(dict(conf))
    other = plan_synth_corpus(_conf(synth_minutes=3.0, seed=1))
    assert [u.text for u in other] != [u.text for u in plan_synth_corpus(conf)]


def test_plan_size_scales_with_minutes_and_short_is_a_prefix_of_long():
    short = plan_synth_corpus(_conf(synth_minutes=4.0))
    long = plan_synth_corpus(_conf(synth_minutes=12.0))
    for plan, minutes in ((short, 4.0), (long, 12.0)):
        estimate = sum(u.estimated_seconds for u in plan) / 60
        assert abs(estimate - minutes) < 0.05 * minutes
    assert 2.5 < len(long) / len(short) < 3.5
    assert long[:len(short)] == short


def test_tiny_plan_covers_every_voice_three_languages_and_all_kinds(tiny_conf, tiny_plan):
    voices = synth_voices(tiny_conf.synth_languages, tiny_conf.synth_voices_per_language)
    assert len(voices) == len(tiny_conf.synth_languages) * tiny_conf.synth_voices_per_language
    assert {u.speaker for u in tiny_plan} == set(voices)
    assert len({u.language for u in tiny_plan}) >= 3
    assert {u.kind for u in tiny_plan} == set(KINDS)
    ids = [u.utterance_id for u in tiny_plan]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_.+-]+", i) for i in ids)
    for u in tiny_plan:
        assert u.speaker.startswith(u.language + "+")
        assert synth.RATE_RANGE[0] <= u.rate <= synth.RATE_RANGE[1]
        assert 0 <= u.pitch <= 100


@pytest.mark.parametrize("voices_per_language", [1, 2, 3, 5, 6])
def test_every_voice_speaks_every_kind_in_a_longer_plan(voices_per_language):
    conf = _conf(synth_minutes=10.0, synth_voices_per_language=voices_per_language)
    plan = plan_synth_corpus(conf)
    voices = synth_voices(conf.synth_languages, conf.synth_voices_per_language)
    assert {(u.speaker, u.kind) for u in plan} == {(v, k) for v in voices for k in KINDS}
    assert {u.language for u in plan} == {"en", "es", "pt", "de"}


def test_voices_are_shipped_variants_and_bad_requests_are_errors():
    variants = set(synth.espeak_variants())
    voices = synth_voices(["en", "de"], 5)
    assert len(voices) == 10 and len(set(voices)) == 10
    assert all(v.split("+")[1] in variants for v in synth_voices(["en"], len(synth.VARIANTS)))
    with pytest.raises(ValueError, match="between 1 and"):
        synth_voices(["en"], len(synth.VARIANTS) + 1)
    with pytest.raises(ValueError, match="klingon"):
        synth_voices(["en", "klingon"], 2)


def test_every_language_has_a_usable_lexicon():
    for language, lex in synth.LEXICONS.items():
        assert len(lex.numbers) == 21 and len(lex.tens) == 8, language
        for words in (lex.subjects, lex.verbs, lex.objects, lex.endings):
            assert len(words) >= 10 and len(set(words)) == len(words), language


def test_waveform_is_float32_mono_finite_normalized_and_never_digital_silence(tiny_conf, tiny_plan, tiny_audio):
    for u, x in zip(tiny_plan, tiny_audio):
        assert x.dtype == np.float32 and x.ndim == 1, u.utterance_id
        assert np.all(np.isfinite(x))
        assert 0.6 < x.shape[0] / tiny_conf.sample_rate < 8.0
        assert abs(20 * np.log10(np.abs(x).max()) - synth.PEAK_DBFS) < 0.5
        assert np.count_nonzero(x[:160]) == 160 and x[:160].std() > 0  # noise floor, not zeros


def test_same_utterance_gives_byte_identical_audio_in_this_and_other_processes():
    utts = [_utterance("en+f3"), _utterance("de+m2", "eins zwei drei vier"), _utterance("en+f3")]
    here = [synthesize(u).tobytes() for u in utts]
    assert here[0] == here[2]
    again = [synthesize(u).tobytes() for u in reversed(utts)][::-1]
    assert again == here
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        elsewhere = [x.tobytes() for x in pool.map(synthesize, utts, chunksize=1)]
    assert elsewhere == here


def test_noise_follows_the_seed_and_voices_differ():
    a = synthesize(_utterance("en+m1", seed=1))
    b = synthesize(_utterance("en+m1", seed=2))
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.abs(a - b).max() < 0.02  # the same speech, different noise
    c = synthesize(_utterance("en+f1"))
    assert a.shape != c.shape or np.abs(a - c).max() > 0.1


def test_tiny_corpus_is_about_half_a_minute(tiny_conf, tiny_plan, tiny_audio):
    seconds = sum(x.shape[0] for x in tiny_audio) / tiny_conf.sample_rate
    assert 20.0 < seconds < 60.0
    estimate = sum(u.estimated_seconds for u in tiny_plan)
    assert abs(seconds - estimate) < 0.25 * seconds


def test_missing_voice_or_library_is_a_clear_error(monkeypatch):
    with pytest.raises(RuntimeError, match="nosuchvariant"):
        synthesize(_utterance("en+nosuchvariant"))
    with pytest.raises(RuntimeError, match="'xx\\+m1' not found"):
        synthesize(_utterance("xx+m1"))
    _, data = synth.espeak_paths()
    monkeypatch.setattr(synth, "espeak_paths", lambda: ("/nonexistent/libespeak-ng.so", data))
    with pytest.raises(RuntimeError, match="/nonexistent/libespeak-ng.so"):
        synthesize(_utterance())


def test_rate_and_pitch_change_the_speech():
    base = _utterance()
    slow = synthesize(base)
    fast = synthesize(SynthUtterance(**{**base.__dict__, "rate": 230}))
    high = synthesize(SynthUtterance(**{**base.__dict__, "pitch": 90}))
    assert fast.shape[0] < 0.85 * slow.shape[0]
    assert high.shape != slow.shape or np.abs(high - slow).max() > 0.1


def test_audio_stays_deterministic_when_the_library_is_loaded_elsewhere_in_the_process():
    import ctypes

    library, _ = synth.espeak_paths()
    held = ctypes.CDLL(library)  # as another user of eSpeak in this process would
    try:
        first = synthesize(_utterance("es+f2", "ocho nueve diez once")).tobytes()
        assert synthesize(_utterance("es+f2", "ocho nueve diez once")).tobytes() == first
    finally:
        synth._dlclose(held._handle)


def test_timbre_is_the_variant_whatever_the_language():
    assert synth.timbre_of("en+f1") == synth.timbre_of("de+f1") == "f1"
    assert synth.timbre_of("pt+Annie") == "Annie" and synth.timbre_of("m3") == "m3"
    voices = synth_voices(["en", "es", "pt", "de"], len(synth.VARIANTS))
    assert {synth.timbre_of(v) for v in voices} == set(synth.VARIANTS)
    assert len(set(synth.VARIANTS)) == len(synth.VARIANTS)


def _vocal_tract(variant: str) -> tuple:
    """Formants 1-3 (frequency, height, width) as the variant file sets them."""
    lines = (Path(synth.espeak_paths()[1]) / "voices" / "!v" / variant).read_text(errors="replace").splitlines()
    settings = {}
    for line in lines:
        f = line.split("//")[0].split()
        if len(f) >= 5 and f[0] == "formant" and f[1] in ("1", "2", "3"):
            settings[f[1]] = tuple(f[2:5])
    return tuple(settings.get(k) for k in ("1", "2", "3"))


def test_no_two_variants_are_one_timbre_under_two_names():
    """A variant copied from another (f5 from f2, aunty from f4) would put one timbre in train and test."""
    tracts = {v: _vocal_tract(v) for v in synth.VARIANTS}
    assert len(set(tracts.values())) == len(tracts), tracts
    assert _vocal_tract("f5") == tracts["f2"]  # the check sees such a copy


def test_small_corpus_holds_out_at_least_three_timbres_and_100_utterances():
    """The plan and split of `small` (no synthesis): the timbres of test are never in train."""
    from tokenizer.split import assign_splits

    conf = load_config(["defaults", "audio", "small"])
    plan = plan_synth_corpus(conf)
    split, mode = assign_splits([(u.utterance_id, u.speaker) for u in plan], conf.split_fractions, conf.seed,
                                conf.min_split_speakers, synth.timbre_of, "timbre")
    assert mode == "timbre"
    timbres = {s: {synth.timbre_of(u.speaker) for u in plan if split[u.utterance_id] == s} for s in ("train", "val", "test")}
    assert len(timbres["test"]) >= 3 and sum(s == "test" for s in split.values()) >= 100
    assert not timbres["test"] & timbres["train"] and not timbres["val"] & timbres["train"]
