"""What the dreams can be measured on, and the measuring: which real clips and how long a test prompt (a corpus of
short clips gets shorter prompts and windows, `fit_to_clips`), the acoustic tables and completion distances
(`measure`), and why a measure is missing (`not_measured`), said in acoustics.md and summary.json."""
from __future__ import annotations

import argparse

import numpy as np

from pydreamer.dreams.report import (SHORTEST_WINDOW_S, WINDOW_S, acoustic_tables, completion_distances,
                                     dream_metrics, horizon_summary, perceptual_scores, rhythm_of_completions)
from pydreamer.dreams.results import DreamResults


def fit_to_clips(lengths: list[int], prompt_seconds: float, fps: float, step_frames: int, split: str = "test"
                 ) -> tuple[float, int, str]:
    """(seconds of a test prompt, the fewest frames of a real clip, a note or ''). As asked where 2 or more of the
    split's utterances (`lengths`, frames) hold the prompt and a first 0.5 s window after it; on a corpus of short
    clips (spoken digits, single words) the prompt is at most half the median utterance (whole steps) and a clip
    must hold it and a first 0.1 s window, so its clips are still measured and completed."""
    long = int(round((prompt_seconds + WINDOW_S) * fps)) + step_frames
    if not lengths or sum(n >= long for n in lengths) >= 2:
        return prompt_seconds, long, ""
    median = float(np.median(lengths))
    steps = max(1, min(int(median / 2), int(round(prompt_seconds * fps))) // step_frames)
    prompt_s = steps * step_frames / fps
    short = steps * step_frames + int(round(SHORTEST_WINDOW_S * fps)) + step_frames
    return prompt_s, short, (f"short clips: {sum(n >= long for n in lengths)} of the {split} split's {len(lengths)} "
                             f"utterances last {long / fps:.2f} s (median {median / fps:.2f} s): test prompts of "
                             f"{prompt_s:.2f} s instead of {prompt_seconds:g} s, real clips of {short / fps:.2f} s or "
                             f"more, completion distances from the {SHORTEST_WINDOW_S:g} s window on")


def not_measured(r: DreamResults, args: argparse.Namespace, pool_size: int, min_seconds: float) -> dict[str, str]:
    """Why a measure is missing from acoustics.md and the `dream/*` metrics: {measure: reason}."""
    out = {}
    if not r.tables:
        if args.real_clips == 0:
            out["acoustic table"] = "--real_clips 0"
        elif not pool_size:
            out["acoustic table"] = f"no {args.split}-split log-mels"
        elif "real" not in r.silent:
            out["acoustic table"] = f"none of the {args.split} split's {pool_size} utterances lasts {min_seconds:.2f} s"
        elif r.silent["real"] == 1.0:
            out["acoustic table"] = "every real clip is silent"
        else:
            out["acoustic table"] = "no dreams to set beside the real clips"
    if not r.horizons:
        out["completion distances"] = (
            f"they need 2 or more {args.split}-split prompts with a true continuation, had {r.n_tested}"
            + (" (with --prompt, test utterances are not completed)" if args.prompt else
               "" if r.n_tested or not r.completions else " (every prompt's utterance ends within it)"))
    if not r.mix:
        out["interpolation"] = "it needs two prompts (--prompt A --prompt2 B, or two test utterances)"
    return out


def measure(r: DreamResults, dreamer, real_dbs: list, n_user: int, kind_of=None) -> None:
    """The acoustic and structure tables (real clips vs each group of dreams, on their speech), the completion
    distances by horizon, and whether completions keep their prompt's rhythm."""
    sr = r.sample_rate
    real_waves = dreamer.real(real_dbs)
    groups = {"tokenizer": dreamer.real(real_dbs, roundtrip=True),
              "unconditional": [d.wave for d in r.uncond], "warm": [d.wave for d in r.warm],
              "completion": [d.wave[c.prompt_samples:] for c in r.completions for d in c.dreams]}
    r.tables, r.per_clip, r.silent = acoustic_tables(real_waves, groups, sr) if real_waves else ({}, {}, {})
    tested = [c for c in r.completions[n_user:] if c.true_wave is not None]  # the test prompts
    r.rhythm = rhythm_of_completions(tested, sr, kind_of) if len(tested) >= 2 else {}
    per_prompt = []
    for i, c in enumerate(tested if len(tested) >= 2 else []):
        other = tested[(i + 1) % len(tested)]  # the prompts are a seeded draw: the next one is a random other
        true_cont = c.true_wave[c.prompt_samples:]

        def distances(conts: list, true_cont=true_cont) -> dict:
            return completion_distances(true_cont, conts, sr, limit_s=r.args.seconds)

        per_prompt.append({
            "own": distances([d.wave[c.prompt_samples:] for d in c.dreams]),
            "swapped": distances(dreamer.swapped(c, other)),
            "other": distances([d.wave[other.prompt_samples:] for d in other.dreams]),
            "real_other": distances([other.true_wave[other.prompt_samples:]]),
            "tokenizer": distances([c.roundtrip_wave[c.prompt_samples:]]),
        })
    r.n_tested, r.horizons = len(tested), horizon_summary(per_prompt)
    if getattr(r.args, "perceptual", False):
        r.perceptual = perceptual_scores(real_waves, groups, sr)
    r.metrics = dream_metrics(r.tables, r.horizons, r.timer.realtime_factor, r.silent, r.rhythm, r.perceptual)
