"""Imagined token steps of any world model: the tokens of a dream, as numpy arrays for the audio side.

Three ways in, the same for every world model so their dreams can be heard side by side (each model
owns how: `WorldModel.imagine` and `.mix`):

* `dream_tokens(model, None, ...)`: from nothing (the RSSM from its initial state; the Transformer
  from its learned empty-context feature);
* `dream_tokens(model, prompt, ...)`: a completion, after reading the prompt's steps;
* `mix_tokens(model, a, b, alphas, ...)`: dreams from mixtures of two prompts (the RSSM mixes their
  latent states; the Transformer, which has none, splices their contexts).

`temperature` divides the logits of every draw. A dream is a pure function of (model, prompt, seed):
the same seed gives the same tokens. `dream_lengths` says where each dream ends, as the world model
hears it: an utterance stops, and a dream that never does runs on as speech no real clip is.
"""
from __future__ import annotations

import numpy as np
import torch

from pydreamer.models import Dreamer
from pydreamer.models.base import seeded


@torch.no_grad()
def dream_tokens(model: Dreamer, prompt: np.ndarray | None, n_steps: int, samples: int,
                 temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """`samples` imagined continuations [samples, n_steps, G] of `prompt` [P, G] (None or P = 0: from nothing); of a
    world model of log-mel steps, [samples, n_steps, D] steps after a prompt [P, D]."""
    model.eval()
    return model.wm.imagine(model.wm.as_observation(prompt), n_steps, samples, temperature, seed).cpu().numpy()


@torch.no_grad()
def mix_tokens(model: Dreamer, a: np.ndarray, b: np.ndarray, alphas: list[float], n_steps: int,
               temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """One dream [len(alphas), n_steps, G] from each mixture (1 - alpha) A + alpha B of two prompts."""
    model.eval()
    wm = model.wm
    return wm.mix(wm.as_observation(a), wm.as_observation(b), list(alphas), n_steps, temperature, seed).cpu().numpy()


@torch.no_grad()
def dream_lengths(model: Dreamer, prompt: np.ndarray | None, dreams: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per dream [samples, n_steps, G], how many of its steps come before it ends: each step, read as heard after
    the prompt, ends the utterance with the model's end probability (a seeded draw, the first hit ends it);
    n_steps where none did or the model has no end-of-utterance head."""
    model.eval()
    wm = model.wm
    n, steps = dreams.shape[:2]
    P = 0 if prompt is None else len(prompt)
    out = np.full(n, steps, np.int64)
    rng = np.random.default_rng(seed)
    with seeded(int(seed)):
        for i in range(n):
            heard = dreams[i] if P == 0 else np.concatenate([prompt, dreams[i]])
            p = wm.end_probabilities(wm.as_observation(heard))
            if p is None:
                return out
            ended = np.flatnonzero(rng.random(steps) < p[P:].float().cpu().numpy())
            out[i] = ended[0] + 1 if len(ended) else steps
    return out
