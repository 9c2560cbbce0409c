"""Raw waveform windows of a prepared corpus' train split: what the WaveGAN learns from.

A prepared `data_dir` keeps log-mels, not waves. Its shards name every utterance of a split and where it came
from (`source`: a file path, or `synth:<id>` for the built-in corpus); the wave is made again the way
`tokenizer prepare` made it (tokenizer/prepare.py `process_utterance`: `synthesize` + `to_mono_16k`, or
`load_audio`), with the settings the corpus was prepared with (`settings/prepare.json`), so the windows are the
very audio whose log-mels the world models learn from. An utterance that cannot be had again (a file moved
since) is skipped and counted, never fatal; none at all is one clear error.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from tokenizer.audio_io import UnusableAudio, load_audio, to_mono_16k
from tokenizer.corpora import CorpusError, UtteranceSource, list_corpus
from tokenizer.layout import DataLayout
from tokenizer.shards import iter_utterances

log = logging.getLogger("wavegan")
SYNTH_PREFIX = "synth:"  # the `source` prepare writes for a synthesized utterance (tokenizer/prepare.py `_where`)


class DataError(ValueError):
    """The data_dir cannot give any waveform: one line, exit 2."""


def corpus_conf(conf: Mapping[str, Any], layout: DataLayout) -> dict[str, Any]:
    """`conf` with the settings the corpus was prepared with (`settings/prepare.json`) over it: the recipes and
    rates that made its log-mels, whatever this command's config says."""
    merged = dict(conf)
    try:
        merged.update(json.loads(layout.settings("prepare").read_text()))
    except (OSError, ValueError):
        pass  # an older data_dir without the record: the config is all there is
    return merged


def split_sources(conf: Mapping[str, Any], layout: DataLayout, split: str,
                  only: Iterable[str] | None = None) -> list[UtteranceSource]:
    """The prepared utterances of `split` (all, or those named in `only`, in that order) as sources to decode."""
    if not layout.manifest.is_file() or not layout.mels(split).is_dir():
        raise DataError(f"data_dir {layout.root} has no prepared corpus ({layout.manifest.name}, mels/{split}/): "
                        f"run python -m tokenizer prepare --data_dir {layout.root} first")
    named = {str(u["utterance_id"]): (str(u["speaker"]), str(u["source"])) for u in iter_utterances(layout.mels(split))}
    ids = list(named) if only is None else [i for i in only if i in named]
    recipes = {}
    if any(named[i][1].startswith(SYNTH_PREFIX) for i in ids):
        try:
            recipes = {r.utterance_id: r for r in list_corpus(corpus_conf(conf, layout))[0]}
        except CorpusError as e:
            raise DataError(f"data_dir {layout.root}: the built-in corpus cannot be planned again ({e})") from None
    return [recipes.get(i) or UtteranceSource(i, named[i][0], "" if named[i][1].startswith(SYNTH_PREFIX)
                                              else named[i][1]) for i in ids]


def utterance_wave(rec: UtteranceSource, conf: Mapping[str, Any]) -> np.ndarray:
    """The mono float32 wave of one utterance at `sample_rate`, as prepare made it; UnusableAudio if it cannot be."""
    if rec.synth is not None:
        from tokenizer.synth import synthesize

        raw = synthesize(rec.synth, conf["sample_rate"], conf["synth_noise_db"])
        wave, _ = to_mono_16k(raw.reshape(-1, 1), conf["sample_rate"], conf["sample_rate"], conf["silence_db"],
                              conf["n_fft"])
        return wave
    if not rec.path:
        raise UnusableAudio("a synthesized utterance the corpus' settings no longer plan")
    wave, _ = load_audio(rec.path, conf["sample_rate"], conf["max_seconds"], conf["long_files"], conf["silence_db"],
                         min_samples=conf["n_fft"])
    return wave


@dataclass
class Waveforms:
    """Utterances end to end in one array (`offsets[i]:offsets[i+1]` is utterance i) and the ones skipped."""

    samples: np.ndarray
    offsets: np.ndarray
    ids: list[str]
    sample_rate: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def wave(self, i: int) -> np.ndarray:
        return self.samples[self.offsets[i]:self.offsets[i + 1]]


def load_waves(conf: Mapping[str, Any], sources: list[UtteranceSource], what: str = "train") -> Waveforms:
    """Every source's wave (the unusable ones skipped with their reason), with a progress line every 10 s."""
    conf = dict(conf)
    parts, ids, skipped = [], [], []
    started = last = time.time()
    for n, rec in enumerate(sources, 1):
        try:
            parts.append(np.clip(utterance_wave(rec, conf), -1.0, 1.0).astype(np.float32))
            ids.append(rec.utterance_id)
        except (UnusableAudio, OSError, RuntimeError, ValueError) as e:
            skipped.append((rec.utterance_id, str(e)))
        if time.time() - last > 10 or n == len(sources):
            last = time.time()
            rate = n / max(last - started, 1e-9)
            log.info("waves of %s: %d of %d utterances (%.1f/s, ETA %.0f s)", what, n, len(sources), rate,
                     (len(sources) - n) / max(rate, 1e-9))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return Waveforms(samples, offsets, ids, int(conf["sample_rate"]), skipped)


def train_waves(conf: Mapping[str, Any], layout: DataLayout) -> Waveforms:
    """The waves of the prepared train split; DataError when none can be had."""
    merged = corpus_conf(conf, layout)
    sources = split_sources(conf, layout, "train")
    waves = load_waves(merged, sources)
    if not waves.ids:
        why = f"; e.g. {waves.skipped[0][0]}: {waves.skipped[0][1]}" if waves.skipped else ""
        raise DataError(f"data_dir {layout.root}: none of the {len(sources)} train utterances could be read again{why}")
    return waves


class WindowSampler:
    """Batches of `length`-sample windows, every start position of the corpus equally likely; an utterance
    shorter than a window is one window, zero-padded at its end."""

    def __init__(self, waves: Waveforms, length: int, seed: int):
        self.waves, self.length = waves, int(length)
        lengths = np.diff(waves.offsets)
        self.starts = np.maximum(lengths - self.length + 1, 1)  # window starts per utterance
        self.cumulative = np.cumsum(self.starts)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int, step: int) -> None:
        """Draws that depend on the seed and the step only: a resumed run draws the same as at that step."""
        self.rng = np.random.default_rng([int(seed), int(step)])

    def batch(self, n: int) -> np.ndarray:
        """[n, length] float32 windows."""
        draws = self.rng.integers(0, self.cumulative[-1], size=n)
        utts = np.searchsorted(self.cumulative, draws, side="right")
        out = np.zeros((n, self.length), np.float32)
        for row, (u, d) in enumerate(zip(utts, draws)):
            start = self.waves.offsets[u] + d - (self.cumulative[u] - self.starts[u])
            piece = self.waves.samples[start:min(start + self.length, self.waves.offsets[u + 1])]
            out[row, :len(piece)] = piece
        return out
