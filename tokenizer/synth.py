"""The built-in speech corpus: multi-voice, multi-language speech synthesized with eSpeak NG.

It exists so that the whole pipeline runs with no download: counting runs, repeating
syllable patterns and short sentences built from small word lists, spoken by several
voices (speaker = voice, e.g. "en+f3": a language plus an eSpeak variant) at varied rate
and pitch. Every variant speaks every language; the variant is the voice's timbre
(`timbre_of`), and the split keeps each timbre in one split.

Two stages, so the planning is cheap and the synthesis parallel:
- `plan_synth_corpus(conf)` draws every utterance (text, voice, rate, pitch, seed) from
  `conf.seed` alone and estimates durations from the text, without synthesizing;
- `synthesize(utt)` renders one planned utterance; worker processes may call it freely.

Determinism: eSpeak NG keeps state in static variables that survive `espeak_Terminate`
(its pitch flutter, for one), so the same text sounds slightly different the second time
in one process. `synthesize` therefore loads a fresh copy of the library for every
utterance and unloads it afterwards (a few milliseconds), which makes the audio a pure
function of the utterance: byte-identical across calls, processes and worker schedules.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenizer.lexicons import LEXICONS, Lexicon

KINDS = ("counting", "syllables", "sentence")

# eSpeak variants (voices/!v) that change the speaker, not the synthesizer, each its own
# timbre (formant set): mostly alternating male and female so that a small
# `voices_per_language` still mixes both. Variants that are a copy of another one's formants
# are left out (m8 of m7, f5 of f2, quincy of robert, aunty of f4, ...): the split deals out
# timbres, and two names for one timbre would let it into train and test at once.
VARIANTS = ("m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "Annie", "m6", "steph", "m7", "shelby",
            "robert", "paul", "Michael", "travis", "victor")

RATE_RANGE = (130, 210)    # words per minute given to eSpeak (its default is 175)
PITCH_RANGE = (25, 75)     # eSpeak pitch 0..100 (its default is 50)
PEAK_DBFS = -3.0


@dataclass(frozen=True)
class SynthUtterance:
    """One planned utterance: everything `synthesize` needs, and nothing that depends on order."""

    utterance_id: str   # unique, stable, filesystem-safe, e.g. "synth-00042-en+f3"
    speaker: str        # the voice, e.g. "en+f3"
    language: str       # "en"
    kind: str           # "counting" | "syllables" | "sentence"
    text: str
    rate: int           # words per minute given to espeak
    pitch: int          # 0..100
    seed: int           # per-utterance seed (noise, and eSpeak's own random numbers)

    @property
    def estimated_seconds(self) -> float:
        return estimate_seconds(self.text, self.language, self.rate)


# ---- planning (no synthesis) ---------------------------------------------------------------

_VOWEL_GROUPS = re.compile(r"[aeiouyäöüáéíóúâêôãõàèìòùç]+", re.IGNORECASE)


# Fitted on 600 synthesized utterances: about 10% off per utterance, unbiased over a corpus.
_LEAD_SECONDS = 0.155      # silence eSpeak puts around an utterance
_WORD_SECONDS = 0.027      # per word, at 175 wpm
_COMMA_SECONDS = 0.28      # pause per comma, at 175 wpm


def estimate_seconds(text: str, language: str, rate: int) -> float:
    """Rough duration of `text` spoken at `rate` wpm: vowel groups stand in for syllables."""
    words = text.split()
    syllables = sum(max(1, len(_VOWEL_GROUPS.findall(w))) for w in words)
    spoken = (syllables * LEXICONS[language].seconds_per_syllable + len(words) * _WORD_SECONDS
              + text.count(",") * _COMMA_SECONDS)
    return _LEAD_SECONDS + spoken * 175.0 / rate


def _check_languages(languages: list[str]) -> list[str]:
    unknown = [lang for lang in languages if lang not in LEXICONS]
    if unknown or not languages:
        raise ValueError(f"synth languages {list(languages)}: need one or more of {sorted(LEXICONS)}"
                         + (f"; unknown: {unknown}" if unknown else ""))
    return list(dict.fromkeys(languages))


def synth_voices(languages: list[str], voices_per_language: int) -> list[str]:
    """The speakers of the corpus, "<language>+<variant>", grouped by language."""
    languages = _check_languages(list(languages))
    if not 1 <= voices_per_language <= len(VARIANTS):
        raise ValueError(f"synth_voices_per_language={voices_per_language}: "
                         f"must be between 1 and {len(VARIANTS)} (the eSpeak variants used: {', '.join(VARIANTS)})")
    return [f"{lang}+{variant}" for lang in languages for variant in VARIANTS[:voices_per_language]]


def timbre_of(voice: str) -> str:
    """The timbre of a voice "<language>+<variant>": its variant, whatever the language.

    The split groups voices by this, so no timbre of a test voice is heard in train.
    """
    return voice.partition("+")[2] or voice


def _counting_text(lex: Lexicon, rng: np.random.Generator) -> str:
    """A run of consecutive numbers, up or down, now and then in tens."""
    if rng.random() < 0.2:
        n = int(rng.integers(3, len(lex.tens) + 1))
        start = int(rng.integers(0, len(lex.tens) - n + 1))
        words = list(lex.tens[start:start + n])
    else:
        n = int(rng.integers(4, 11))
        start = int(rng.integers(0, len(lex.numbers) - n + 1))
        words = list(lex.numbers[start:start + n])
    if rng.random() < 0.25:
        words.reverse()
    return (", " if rng.random() < 0.3 else " ").join(words)


def _syllables_text(lex: Lexicon, rng: np.random.Generator) -> str:
    """A pattern of two or three different syllables, repeated: "ba ta ba ta ba ta"."""
    size = int(rng.integers(2, 4))
    pattern: list[str] = []
    while len(pattern) < size:
        syllable = lex.consonants[rng.integers(len(lex.consonants))] + lex.vowels[rng.integers(len(lex.vowels))]
        if syllable not in pattern:
            pattern.append(syllable)
    repeats = int(rng.integers(4, 8)) if size == 2 else int(rng.integers(3, 5))
    return " ".join(pattern * repeats)


def _sentence_text(lex: Lexicon, rng: np.random.Generator) -> str:
    parts = [lex.subjects[rng.integers(len(lex.subjects))],
             lex.verbs[rng.integers(len(lex.verbs))],
             lex.objects[rng.integers(len(lex.objects))]]
    if rng.random() < 0.6:
        parts.append(lex.endings[rng.integers(len(lex.endings))])
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


_TEXT_MAKERS = {"counting": _counting_text, "syllables": _syllables_text, "sentence": _sentence_text}


def _conf_value(conf: Any, key: str) -> Any:
    return conf[key] if isinstance(conf, Mapping) else getattr(conf, key)


def plan_synth_corpus(conf: Any) -> list[SynthUtterance]:
    """Deterministic from conf.seed, conf.synth_minutes, conf.synth_languages,
    conf.synth_voices_per_language. Cheap (no synthesis): estimates each utterance's
    duration from its text and rate and stops near conf.synth_minutes. Every voice gets
    utterances (round-robin), so speaker-disjoint splits work.

    Utterances are drawn one after another from one generator, so a shorter corpus is a
    prefix of a longer one with the same seed. Voices take turns, and each voice moves on
    to the next kind every round, so every voice speaks every kind once the corpus has
    three rounds. At least one full round is planned, whatever synth_minutes says.
    """
    voices = synth_voices(list(_conf_value(conf, "synth_languages")), int(_conf_value(conf, "synth_voices_per_language")))
    target = float(_conf_value(conf, "synth_minutes")) * 60.0
    rng = np.random.default_rng([int(_conf_value(conf, "seed")), 0x5EC4])
    plan: list[SynthUtterance] = []
    total = 0.0
    i = 0
    while True:
        voice = voices[i % len(voices)]
        language = voice.split("+", 1)[0]
        kind = KINDS[(i % len(voices) + i // len(voices)) % len(KINDS)]
        text = _TEXT_MAKERS[kind](LEXICONS[language], rng)
        rate = int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1))
        pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
        seed = int(rng.integers(0, 2**31 - 1))
        seconds = estimate_seconds(text, language, rate)
        # Stop at the utterance that brings the total closest to the target.
        if i >= len(voices) and total + seconds / 2 > target:
            break
        plan.append(SynthUtterance(f"synth-{i:05d}-{voice}", voice, language, kind, text, rate, pitch, seed))
        total += seconds
        i += 1
    return plan


# ---- eSpeak NG through ctypes ---------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()       # one synthesis at a time per process: eSpeak is global state
_chunks: list[bytes] = []      # samples handed over by the callback during one synthesis
_private_copy: dict[int, str] = {}  # pid -> our own copy of the library, made only when needed


def _on_samples(wav, n_samples, events) -> int:
    if n_samples > 0 and wav:
        _chunks.append(ctypes.string_at(wav, 2 * n_samples))
    return 0  # 0 = go on


_callback = _SynthCallback(_on_samples)  # module-level, so it is never garbage-collected


def espeak_paths() -> tuple[str, str]:
    """(library, data folder) as shipped by the espeakng-loader package."""
    try:
        import espeakng_loader
    except ImportError as e:
        raise RuntimeError("the built-in corpus needs the package espeakng-loader (pip install espeakng-loader)") from e
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def espeak_variants() -> list[str]:
    """The voice variants eSpeak NG ships (files in espeak-ng-data/voices/!v)."""
    return sorted(p.name for p in (Path(espeak_paths()[1]) / "voices" / "!v").iterdir())


def _dlclose(handle: int) -> None:
    import _ctypes
    (getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary"))(handle)


def _fresh_library_path(library: str) -> str:
    """A path whose dlopen gives a freshly initialised library.

    Normally the shipped file itself: we unload it after every utterance. If something
    else in this process holds it loaded, unloading would not reset it, so we load a
    private copy instead.
    """
    noload = getattr(os, "RTLD_NOLOAD", None)
    if noload is None:
        return library
    try:
        held = ctypes.CDLL(library, mode=noload | os.RTLD_LAZY)
    except OSError:
        return library  # not loaded: dlopen will load it afresh
    _dlclose(held._handle)
    pid = os.getpid()
    if pid not in _private_copy:
        folder = tempfile.mkdtemp(prefix="espeak-ng-")
        atexit.register(shutil.rmtree, folder, True)
        _private_copy[pid] = shutil.copy(library, folder)
    return _private_copy[pid]


def _check_voice(voice: str, data: str) -> None:
    """eSpeak silently ignores an unknown variant, so we look for its file ourselves."""
    variant = voice.partition("+")[2]
    if variant and not (Path(data) / "voices" / "!v" / variant).is_file():
        raise RuntimeError(f"eSpeak NG voice {voice!r}: no variant {variant!r} in {data}/voices/!v")


def espeak_pcm(text: str, voice: str, rate: int = 175, pitch: int = 50, seed: int = 0) -> tuple[np.ndarray, int]:
    """Speak `text` with a freshly loaded eSpeak NG: (int16 samples, sample rate)."""
    library, data = espeak_paths()
    _check_voice(voice, data)
    with _lock:
        path = _fresh_library_path(library)
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise RuntimeError(f"cannot load the eSpeak NG library {path}: {e}") from e
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_Initialize.restype = ctypes.c_int
            sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INITIALIZE_DONT_EXIT)
            if sample_rate <= 0:
                raise RuntimeError(f"eSpeak NG library {path} could not initialise with data {data} (status {sample_rate})")
            try:
                lib.espeak_SetSynthCallback(_callback)
                status = lib.espeak_SetVoiceByName(voice.encode())
                if status != 0:
                    raise RuntimeError(f"eSpeak NG voice {voice!r} not found (library {path}, data {data}, status {status})")
                lib.espeak_SetParameter(_RATE, int(rate), 0)
                lib.espeak_SetParameter(_PITCH, int(pitch), 0)
                if hasattr(lib, "espeak_ng_SetRandSeed"):
                    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
                    lib.espeak_ng_SetRandSeed(int(seed))
                encoded = text.encode("utf-8") + b"\0"
                lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                             ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
                _chunks.clear()
                status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                if status != 0:
                    raise RuntimeError(f"eSpeak NG could not speak {text!r} with {voice!r} (library {path}, status {status})")
                pcm = np.frombuffer(b"".join(_chunks), dtype=np.int16).copy()
            finally:
                _chunks.clear()
                lib.espeak_Terminate()
        finally:
            _dlclose(lib._handle)
    return pcm, sample_rate


def _resample(x: np.ndarray, orig_sr: int, sample_rate: int) -> np.ndarray:
    if orig_sr == sample_rate:
        return x
    import soxr
    return soxr.resample(x, orig_sr, sample_rate, quality="HQ").astype(np.float32, copy=False)


def synthesize(utt: SynthUtterance, sample_rate: int = 16000, noise_db: float = -60.0) -> np.ndarray:
    """Render one planned utterance: float32 mono at `sample_rate`, a pure function of `utt`.

    eSpeak's 22050 Hz output is resampled (soxr), peak-normalized to -3 dBFS, and given
    Gaussian background noise at `noise_db` dBFS from `np.random.default_rng(utt.seed)`,
    so that silence is never digital zero (log-mel features and VAD expect a floor).
    """
    pcm, espeak_sr = espeak_pcm(utt.text, utt.speaker, utt.rate, utt.pitch, utt.seed)
    x = _resample(pcm.astype(np.float32) / 32768.0, espeak_sr, sample_rate)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 0.0:
        raise RuntimeError(f"eSpeak NG produced no sound for {utt.utterance_id} ({utt.text!r})")
    x = x * np.float32(10.0 ** (PEAK_DBFS / 20.0) / peak)
    noise = np.random.default_rng(utt.seed).standard_normal(x.shape[0]).astype(np.float32)
    return (x + noise * np.float32(10.0 ** (noise_db / 20.0))).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    """Synthesize part of a planned corpus and print its size and real-time factor."""
    import argparse
    import time

    from runtime.config import load_config

    parser = argparse.ArgumentParser(prog="python -m tokenizer.synth", description=main.__doc__)
    parser.add_argument("--configs", nargs="+", default=["defaults"])
    parser.add_argument("--limit", type=int, default=100, help="synthesize at most this many utterances (0 = all)")
    args = parser.parse_args(argv)
    conf = load_config(args.configs)
    plan = plan_synth_corpus(conf)
    voices = sorted({u.speaker for u in plan})
    estimate = sum(u.estimated_seconds for u in plan)
    print(f"plan: {len(plan)} utterances, {len(voices)} voices, estimated {estimate / 60:.1f} min")
    chosen = plan if args.limit <= 0 else plan[:args.limit]
    start = time.perf_counter()
    seconds = sum(len(synthesize(u, conf.sample_rate, conf.synth_noise_db)) for u in chosen) / conf.sample_rate
    wall = time.perf_counter() - start
    estimated = sum(u.estimated_seconds for u in chosen)
    print(f"synthesized {len(chosen)} utterances: {seconds:.1f} s of audio (estimated {estimated:.1f} s) "
          f"in {wall:.2f} s wall, real-time factor {seconds / wall:.0f}x")


if __name__ == "__main__":
    main()
