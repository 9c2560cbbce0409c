"""From imagined tokens to something a person can hear: dreams, completions and mixtures as log-mels and waves.

The z-score of a dream's log-mel is undone with a level it has no way to know by itself: the
prompt's own statistics for a completion (so it continues at the prompt's loudness), the corpus'
average (`tokens/meta.json`: mel_mean, mel_std) for a dream from nothing or from a warm-up.
A completion is decoded together with its prompt's tokens (the VQ-VAE decoder sees the context
across the boundary), then the prompt's frames are replaced by the real prompt, so a listener
hears the real prompt and the model's continuation in one wave.

With `end`, a dream ends where the world model says its utterance does (`dream_lengths`): the frames after
are silence as the features write it (`top_db` below the clip's peak), so it is heard and measured (on its
speech) as an utterance that stopped.

A world model of log-mel steps (`observes: mel`) dreams the steps themselves: `MelStepCodec` stands in for the
tokenizer, a step being its frames z-scored with the corpus' statistics (as the env gives them), so no VQ-VAE
is in its chain, and its "round trip" is the real log-mel unchanged.

Wall-clock time is kept apart for generation (imagination + VQ-VAE decode) and the vocoder, and
the seconds of audio dreamt, so the real-time factor means the cost of hearing a dream.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

from pydreamer.dreams.imagination import dream_lengths, dream_tokens, mix_tokens
from pydreamer.models import Dreamer
from tokenizer.codec import EncodedClip, TokenCodec
from tokenizer.layout import DataLayout
from tokenizer.shards import iter_utterances


@dataclass
class Dream:
    """One dreamt clip: its tokens, log-mel (dB) and wave; `prompt_s` seconds of it are the real prompt."""

    name: str
    tokens: np.ndarray  # [n_steps, G] imagined (the prompt's tokens not included)
    db: np.ndarray  # [frames, n_mels], prompt frames first when there is one
    wave: np.ndarray
    prompt_s: float = 0.0
    end_s: float | None = None  # seconds dreamt before the world model ended it (None: it ran to the end)


@dataclass
class Completion:
    clip: EncodedClip
    dreams: list[Dream]
    true_wave: np.ndarray | None  # the real prompt + true continuation, through the same vocoder
    true_db: np.ndarray
    sample_rate: int
    roundtrip_wave: np.ndarray | None = None  # the same through the tokenizer first (perfect tokens)

    @property
    def prompt_samples(self) -> int:
        return int(round(self.dreams[0].prompt_s * self.sample_rate))


@dataclass
class Timer:
    generation_s: float = 0.0
    vocoder_s: float = 0.0
    audio_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def realtime_factor(self) -> float:
        return (self.generation_s + self.vocoder_s) / max(self.audio_s, 1e-9)


class MelStepCodec(TokenCodec):
    """The tokenizer's settings and vocoder for a world model of log-mel steps: steps [T, frames x n_mels] are
    log-mel frames z-scored with the corpus' (mean, std), nothing quantized."""

    corpus: tuple[float, float]

    @classmethod
    def of(cls, codec: TokenCodec, corpus_mean: float, corpus_std: float) -> "MelStepCodec":
        """The same settings and vocoder (a copy sharing them, not loaded again), reading steps instead of tokens."""
        new = copy.copy(codec)
        new.__class__ = cls
        new.corpus = (float(corpus_mean), float(corpus_std))
        return new

    def encode_db(self, db: np.ndarray) -> tuple[np.ndarray, float, float]:
        from pydreamer.log_mel import true_steps

        mean, std = self.corpus
        n = -(-len(db) // self.frames_per_step)
        return (true_steps(db, n, self.frames_per_step) - mean) / std, mean, std

    def decode(self, steps: np.ndarray) -> np.ndarray:
        steps = np.asarray(steps, np.float32)
        return steps.reshape(*steps.shape[:-2], -1, self.settings.n_mels)

    def roundtrip(self, db: np.ndarray) -> np.ndarray:
        return np.asarray(db, np.float32)


class AudioDreamer:
    """A world model and the tokenizer it learned from, with the dream settings of one command."""

    def __init__(self, model: Dreamer, codec: TokenCodec, seconds: float, temperature: float, seed: int,
                 corpus_mean: float, corpus_std: float, end: bool = False):
        self.model, self.codec, self.end = model, codec, bool(end)
        self.seconds, self.temperature, self.seed = float(seconds), float(temperature), int(seed)
        self.corpus = (float(corpus_mean), float(corpus_std))
        self.sr = codec.settings.sample_rate
        self.timer = Timer()

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.sr))

    def _imagine(self, fn, *args, **kwargs) -> np.ndarray:
        t0 = time.perf_counter()
        out = fn(self.model, *args, **kwargs)
        self.timer.generation_s += time.perf_counter() - t0
        return out

    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        z = self.codec.decode(tokens)
        self.timer.generation_s += time.perf_counter() - t0
        return z

    def _lengths(self, prompt: np.ndarray | None, tokens: np.ndarray, seed: int) -> np.ndarray:
        """Steps of each dream before it ends (all of them unless `end`)."""
        return self._imagine(dream_lengths, prompt, tokens, seed) if self.end else np.full(len(tokens), tokens.shape[1])

    def _silence_after(self, db: np.ndarray, start: int, length: int, steps: int) -> tuple[np.ndarray, float | None]:
        """`db` with the frames after the end of a dream of `steps` steps (beginning at frame `start`, ended after
        `length`) silent (the features' floor, `top_db` below the clip's peak), and the seconds dreamt before the
        end (None: it did not end)."""
        if length >= steps:
            return db, None
        cut = start + length * self.codec.frames_per_step
        db = db.copy()
        db[cut:] = db.max() - self.codec.settings.top_db
        return db, length * self.codec.frames_per_step / self.codec.settings.frames_per_second

    def hear(self, db: np.ndarray, samples: int, count: bool = True) -> np.ndarray:
        """A log-mel through the vocoder, timed (and its audio counted as dreamt when `count`)."""
        t0 = time.perf_counter()
        wave = self.codec.to_wave(db, samples)
        if count:
            self.timer.vocoder_s += time.perf_counter() - t0
            self.timer.audio_s += samples / self.sr
        return wave

    def unconditional(self, n: int) -> list[Dream]:
        """`n` dreams of `seconds` from the initial state, at the corpus' average level."""
        steps = self.codec.steps_for(self.seconds)
        tokens = self._imagine(dream_tokens, None, steps, n, self.temperature, self.seed)
        lengths = self._lengths(None, tokens, self.seed)
        z = self._decode(tokens)
        out = []
        for i in range(n):
            db, end_s = self._silence_after(self.codec.to_db(z[i], *self.corpus), 0, lengths[i], steps)
            out.append(Dream(f"dream-{i:02d}", tokens[i], db, self.hear(db, self.samples), end_s=end_s))
        return out

    def warm(self, clips: list[EncodedClip]) -> list[Dream]:
        """One dream of `seconds` after each clip's warm-up prompt (filtered, not heard), at the corpus' level."""
        out = []
        steps = self.codec.steps_for(self.seconds)
        for i, clip in enumerate(clips):
            tokens = self._imagine(dream_tokens, clip.tokens, steps, 1, self.temperature, self.seed + i)
            length = self._lengths(clip.tokens, tokens, self.seed + i)[0]
            z = self._decode(np.concatenate([clip.tokens, tokens[0]]))[len(clip.prompt_db):]
            db, end_s = self._silence_after(self.codec.to_db(z, *self.corpus), 0, length, steps)
            out.append(Dream(f"{clip.name}-warm", tokens[0], db, self.hear(db, self.samples), end_s=end_s))
        return out

    def complete(self, clip: EncodedClip, samples: int, seed_offset: int = 0) -> Completion:
        """`samples` continuations of `seconds` after a prompt, at the prompt's own level."""
        steps = self.codec.steps_for(self.seconds)
        tokens = self._imagine(dream_tokens, clip.tokens, steps, samples, self.temperature, self.seed + seed_offset)
        lengths = self._lengths(clip.tokens, tokens, self.seed + seed_offset)
        P = len(clip.prompt_db)
        prompt_s = P / self.codec.settings.frames_per_second
        total = int(round(prompt_s * self.sr)) + self.samples
        dreams = []
        for k in range(samples):
            z = self._decode(np.concatenate([clip.tokens, tokens[k]]))[P:]
            db, end_s = self._silence_after(np.concatenate([clip.prompt_db, self.codec.to_db(z, clip.mean, clip.std)]),
                                            P, lengths[k], steps)
            dreams.append(Dream(f"{clip.name}-dream-{k:02d}", tokens[k], db, self.hear(db, total), prompt_s, end_s))
        true_db = np.concatenate([clip.prompt_db, clip.continuation_db[:steps * self.codec.frames_per_step]])
        true_wave = roundtrip_wave = None
        if len(clip.continuation_db):
            n = min(total, int(round(len(true_db) / self.codec.settings.frames_per_second * self.sr)))
            true_wave = self.hear(true_db, n, count=False)
            roundtrip_wave = self.hear(self.codec.roundtrip(true_db), n, count=False)
        return Completion(clip, dreams, true_wave, true_db, self.sr, roundtrip_wave)

    def swapped(self, own: Completion, other: Completion) -> list[np.ndarray]:
        """`other`'s imagined tokens heard after `own`'s prompt at `own`'s level: a completion that did not
        see this prompt, with everything but the model's tokens the same (the baseline of the LSD target)."""
        clip = own.clip
        waves = []
        for d in other.dreams:
            z = self.codec.decode(np.concatenate([other.clip.tokens, d.tokens]))[len(other.clip.prompt_db):]
            db = np.concatenate([clip.prompt_db, self.codec.to_db(z, clip.mean, clip.std)])
            if d.end_s is not None:  # it ends where it ended after its own prompt
                db, _ = self._silence_after(db, len(clip.prompt_db), round(d.end_s * self.codec.steps_per_second),
                                           len(d.tokens))
            waves.append(self.hear(db, own.prompt_samples + self.samples, count=False)[own.prompt_samples:])
        return waves

    def interpolate(self, a: EncodedClip, b: EncodedClip, alphas: list[float], seconds: float) -> list[Dream]:
        """A dream of `seconds` from each mixture of the two prompts' states, at the mixed level."""
        steps = self.codec.steps_for(seconds)
        samples = int(round(seconds * self.sr))
        tokens = self._imagine(mix_tokens, a.tokens, b.tokens, list(alphas), steps, self.temperature, self.seed)
        z = self._decode(tokens)
        out = []
        for i, al in enumerate(alphas):
            mean, std = (1 - al) * a.mean + al * b.mean, (1 - al) * a.std + al * b.std
            db = self.codec.to_db(z[i], mean, std)
            out.append(Dream(f"mix-{al:.2f}", tokens[i], db, self.hear(db, samples)))
        return out

    def real(self, dbs: list[np.ndarray], roundtrip: bool = False) -> list[np.ndarray]:
        """Real log-mels cut to `seconds`, through the same vocoder as the dreams (not counted as dreamt);
        with `roundtrip`, through the tokenizer first (encoded and decoded: the best any token model can sound)."""
        fps = self.codec.settings.frames_per_second
        out = []
        for db in dbs:
            db = db[:int(round(self.seconds * fps))]
            db = self.codec.roundtrip(db) if roundtrip else db
            out.append(self.hear(db, min(self.samples, int(round(len(db) / fps * self.sr))), count=False))
        return out


Pool = list  # [(utterance id, z-scored log-mel, mean, std)] of a split, as its shards hold them


def split_pool(layout: DataLayout, split: str) -> Pool:
    """Every utterance of a split as (id, z-scored log-mel, mean, std); empty when `data_dir` has no log-mels of
    the split (a run copied without its data)."""
    folder = layout.mels(split)
    if not folder.is_dir():
        return []
    return [(str(u["utterance_id"]), u["mel"], float(u["mean"]), float(u["std"])) for u in iter_utterances(folder)]


def draw_utterances(pool: Pool, n: int, min_frames: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Up to `n` (utterance id, log-mel in dB) of `pool`, a seeded draw among those of `min_frames` or more,
    in corpus order."""
    pool = [u for u in pool if len(u[1]) >= min_frames]
    pick = sorted(np.random.default_rng(seed).permutation(len(pool))[:max(n, 0)])
    return [(pool[i][0], pool[i][1].astype(np.float32) * pool[i][3] + pool[i][2]) for i in pick]


def split_utterances(layout: DataLayout, split: str, n: int, min_frames: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Up to `n` (utterance id, log-mel in dB) of a split, a seeded draw among those of `min_frames` or more,
    in corpus order. Empty when `data_dir` has no log-mels of the split (a run copied without its data)."""
    return draw_utterances(split_pool(layout, split), n, min_frames, seed) if n > 0 else []
