"""Samples of the generator, and how far they are from real speech, on the world model's own yardstick.

The real clips are the ones a world model's dreams are measured against: the dream command's seeded draw of
test-split utterances (`split_utterances`, with its count, minimum length and seed), cut to the length of a
sample. They are heard as they are (their waveforms, made again as prepare made them), not through a vocoder:
no vocoder is in the WaveGAN's chain. The measures are the dreams' (`acoustic_tables`: the acoustic metrics and
the structure of speech, each clip's leading and trailing silence cut; DNSMOS with `dream_perceptual`), logged
under the keys of the dreams from nothing (`dream/unconditional/...`, `dream/real/...`), so
`python -m pydreamer.compare` lines a WaveGAN run up beside world-model runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from pydreamer.dreams.acoustics import MetricComparison
from pydreamer.dreams.report import acoustic_tables, dream_metrics, perceptual_scores
from tokenizer.layout import DataLayout
from wavegan.config import window_samples
from wavegan.data import corpus_conf, load_waves, split_sources
from wavegan.models import WaveGAN

GROUP = "unconditional"  # the dreams-from-nothing group: the metric keys a WaveGAN's samples are logged under


def real_clip_ids(conf: Mapping[str, Any], layout: DataLayout) -> list[str]:
    """The test utterances `python -m pydreamer.dream` measures a run's dreams against (its default options)."""
    from pydreamer.dreams.audio import split_utterances
    from pydreamer.dreams.command import build_parser
    from pydreamer.dreams.report import WINDOW_S

    n = int(conf["dream_real_clips"])
    need = max(n, int(conf["dream_warm"]), int(conf["dream_test_prompts"]))
    fps = conf["sample_rate"] / conf["hop_length"]
    min_frames = int(round((build_parser().get_default("prompt_seconds") + WINDOW_S) * fps)) + conf["time_downsample"]
    return [name for name, _ in split_utterances(layout, "test", need, min_frames, int(conf["seed"]))[:n]]


def real_clips(conf: Mapping[str, Any], layout: DataLayout) -> tuple[list[str], list[np.ndarray]]:
    """(ids, waves cut to one sample's length) of the real clips; empty when the data_dir has no test split."""
    ids = real_clip_ids(conf, layout)
    if not ids:
        return [], []
    waves = load_waves(corpus_conf(conf, layout), split_sources(conf, layout, "test", ids), "the real test clips")
    n = window_samples(conf)
    return waves.ids, [waves.wave(i)[:n].copy() for i in range(len(waves.ids))]


def fixed_latents(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The same `n` latent vectors at every checkpoint, so the curve follows the same samples as they train."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(int(seed) + 7919))


@dataclass
class Scored:
    """One checkpoint's samples and their measures."""

    step: int
    waves: list[np.ndarray]
    tables: dict[str, list[MetricComparison]] = field(default_factory=dict)
    silent: dict[str, float] = field(default_factory=dict)
    perceptual: dict = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    generation_s: float = 0.0

    @property
    def rows(self) -> list[MetricComparison]:
        return self.tables.get(GROUP, [])


def generate(model: WaveGAN, z: torch.Tensor, device: torch.device) -> tuple[list[np.ndarray], float]:
    """(one float32 wave per latent, seconds it took)."""
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generator(z.to(device)).squeeze(1).float().cpu().numpy()
    return list(out), time.perf_counter() - started


def score(model: WaveGAN, z: torch.Tensor, real: list[np.ndarray], sr: int, step: int, device: torch.device,
          perceptual: bool = False) -> Scored:
    """Samples of the latents `z`, measured against the real clips: tables, silent fractions, `dream/*` metrics."""
    waves, seconds = generate(model, z, device)
    s = Scored(step, waves, generation_s=seconds)
    groups = {GROUP: waves}
    s.tables, _, s.silent = acoustic_tables(real, groups, sr)  # no real clips: the silent fraction alone
    if perceptual:
        s.perceptual = perceptual_scores(real, groups, sr)
    audio_s = len(waves) * model.dims["samples"] / sr
    s.metrics = dream_metrics(s.tables, {}, seconds / max(audio_s, 1e-9), s.silent, None, s.perceptual)
    return s
