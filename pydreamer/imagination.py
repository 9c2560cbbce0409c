"""Imagined token steps of either world model: the tokens of a dream.

Three ways in, the same for the RSSM and the Transformer so their dreams can be heard side by side:

* `dream_tokens(model, None, ...)`: from nothing. The RSSM starts from its initial (zero) state and
  takes its first step with no action, as at an episode's start; the Transformer from its learned
  empty-context feature. Every step after is drawn from the prior with the null action.
* `dream_tokens(model, prompt, ...)`: a completion. The RSSM filters the prompt's steps through the
  posterior (as `forecast.rssm_filter`) and imagines on from the last state; the Transformer reads
  the prompt as its context.
* `mix_tokens(model, a, b, alphas, ...)`: dreams from a mixture of two prompts' states. The RSSM
  mixes the two posterior states linearly (deterministic part and the one-hot stochastic part, a
  relaxed state the networks read like any other); the Transformer has no latent state but its
  context, so its mixture is a context of A's last steps followed by B's, B's share growing with alpha.

`temperature` divides the logits of every draw (the RSSM's prior and token draws, the Transformer's
token draws). A dream is a pure function of (model, prompt, seed): the same seed gives the same tokens.
"""
from __future__ import annotations

import numpy as np
import torch

from pydreamer.forecast import rssm_filter, seeded
from pydreamer.models import Dreamer
from pydreamer.models.rssm import RSSM, State


def _check(n_steps: int, samples: int, temperature: float) -> None:
    if n_steps < 0 or samples < 1 or not temperature > 0:
        raise ValueError(f"need n_steps >= 0, samples >= 1, temperature > 0; got {n_steps}, {samples}, {temperature}")


def _rssm_rollout(model: Dreamer, state: State, n_steps: int, temperature: float, first: bool) -> torch.Tensor:
    """Imagine `n_steps` from `state` [N, ...]: tokens [N, n_steps, G]. `first`: the first step starts an
    episode (no action led to it)."""
    wm = model.wm
    N, A = state.deter.shape[0], model.dims["action_dim"]
    null = torch.zeros(N, A, device=state.deter.device)
    null[:, 0] = 1.0
    out = []
    for i in range(n_steps):
        action = torch.zeros_like(null) if (first and i == 0) else null
        state, _ = wm.rssm.imagine_step(state, action, temperature)
        out.append(wm.decoder.sample(RSSM.features(state), temperature)[1])  # the global generator: seeded
    G = model.dims["tokens_per_step"]
    return torch.stack(out, 1) if out else torch.zeros(N, 0, G, dtype=torch.long, device=state.deter.device)


def _device(model: Dreamer) -> torch.device:
    return next(model.parameters()).device


def _tokens(x: np.ndarray | None, G: int, device: torch.device) -> torch.Tensor:
    if x is None:
        return torch.zeros(0, G, dtype=torch.long, device=device)
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.long, device=device).reshape(-1, G)


@torch.no_grad()
def dream_tokens(model: Dreamer, prompt: np.ndarray | None, n_steps: int, samples: int,
                 temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """`samples` imagined continuations [samples, n_steps, G] of `prompt` [P, G] (None or P = 0: from nothing)."""
    _check(n_steps, samples, temperature)
    model.eval()
    device, G = _device(model), model.dims["tokens_per_step"]
    prompt_t = _tokens(prompt, G, device)
    if model.kind == "transformer":
        gen = torch.Generator(device=device).manual_seed(int(seed))
        return model.wm.imagine(prompt_t, n_steps, samples, gen, temperature).cpu().numpy()
    with seeded(torch.Generator().manual_seed(int(seed))):
        if len(prompt_t) == 0:
            state = model.wm.initial_state(samples, device)
        else:
            last = rssm_filter(model, prompt_t)
            state = State(*(x[-1].expand(samples, -1).contiguous() for x in last))
        return _rssm_rollout(model, state, n_steps, temperature, first=len(prompt_t) == 0).cpu().numpy()


def splice(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """The Transformer's mixture of two prompts [*, G]: A's last (1 - alpha) share, then B's last alpha share,
    of the shorter prompt's length."""
    n = min(len(a), len(b))
    nb = int(round(alpha * n))
    return np.concatenate([a[len(a) - (n - nb):], b[len(b) - nb:]], 0) if n else a[:0]


@torch.no_grad()
def mix_tokens(model: Dreamer, a: np.ndarray, b: np.ndarray, alphas: list[float], n_steps: int,
               temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """One dream [len(alphas), n_steps, G] from each mixture (1 - alpha) A + alpha B of two prompts' states."""
    _check(n_steps, 1, temperature)
    model.eval()
    device, G = _device(model), model.dims["tokens_per_step"]
    if model.kind == "transformer":
        return np.concatenate([dream_tokens(model, splice(a, b, al), n_steps, 1, temperature, seed) for al in alphas])
    with seeded(torch.Generator().manual_seed(int(seed))):
        sa, sb = (State(*(x[-1] for x in rssm_filter(model, _tokens(p, G, device)))) for p in (a, b))
        w = torch.tensor(alphas, dtype=sa.deter.dtype, device=device).unsqueeze(1)
        state = State((1 - w) * sa.deter + w * sb.deter, (1 - w) * sa.stoch + w * sb.stoch)
        return _rssm_rollout(model, state, n_steps, temperature, first=False).cpu().numpy()
