"""The learner's periodic eval/* metrics: whole episodes of the `episodes_eval` store, each step forecast one
step ahead by the world model (its `eval_sums`), and the critic's value against the true discounted returns.
(`python -m pydreamer.evaluate` scores a split per horizon; this is the cheap running check and model selection.)
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pydreamer.data import episode_batch
from pydreamer.episodes import EpisodeError, EpisodeSpec, list_episodes, load_episode
from pydreamer.models import Dreamer

log = logging.getLogger("pydreamer.learner")


def load_eval_episodes(folder: Path | str, n: int, n_tokens: int | None = None,
                       skipped: list[str] | None = None, spec: EpisodeSpec | None = None) -> list[dict]:
    """The first `n` usable episodes of the eval store (sorted names, so the set stays fixed as it grows), each
    checked against `spec` (or token ids below `n_tokens`) as the replay reader checks them; the unusable ones
    are named ("path: reason") in `skipped`."""
    out = []
    for path in list_episodes(folder):
        if len(out) >= n:
            break
        try:
            ep = load_episode(path, n_tokens=n_tokens, spec=spec)
        except EpisodeError as e:
            log.warning("eval: skipping %s", e)
            if skipped is not None:
                skipped.append(str(e))
            continue
        if len(ep["reward"]) >= 2:
            out.append(ep)
    return out


def discounted_returns(reward: np.ndarray, terminal: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo return of each row: sum_k gamma^(k-1) reward[t+k] up to the episode's end."""
    out = np.zeros(len(reward), np.float64)
    acc = 0.0
    for t in range(len(reward) - 1, -1, -1):
        out[t] = acc
        acc = float(reward[t]) + gamma * acc * (1.0 - float(terminal[t]))
    return out


def entropy_bits(tokens: np.ndarray, n_tokens: int) -> float:
    """Entropy (bits per token) of the tokens' own frequencies."""
    counts = np.bincount(tokens.reshape(-1).astype(np.int64), minlength=n_tokens).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def unigram_pos_bits(tokens: np.ndarray, n_tokens: int) -> float:
    """Mean over token positions g of the entropy of position g's own frequencies."""
    tokens = tokens.reshape(len(tokens), -1)
    return float(np.mean([entropy_bits(tokens[:, g], n_tokens) for g in range(tokens.shape[1])]))


@torch.no_grad()
def evaluate_episodes(model: Dreamer, episodes: list[dict], conf: Mapping[str, Any], device: torch.device,
                      amp: bool = False, batch_episodes: int = 16) -> dict[str, float]:
    """eval/* of the world model (see its `eval_sums`: nll_h1, acc_h1, loss_tokens and its own) and, when it
    trains an actor-critic, of its critic: value_error = mean |critic value - discounted Monte-Carlo return of
    the true rewards|. unigram_pos_nll: the entropy of the episodes' own per-position token frequencies (a
    'learned nothing' that knows the position)."""
    if not episodes:
        return {}
    model.eval()
    gamma, max_steps = conf["gamma"], conf["eval_max_steps"]
    sums: dict[str, list[float]] = {}
    values, returns, all_tokens = [], [], []
    steps = 0
    for start in range(0, len(episodes), batch_episodes):
        group = episodes[start:start + batch_episodes]
        arrays, mask = episode_batch(group, max_steps)
        T, B, G = arrays["tokens"].shape
        mc = np.zeros((T, B), np.float64)
        for b, e in enumerate(group):
            n = int(mask[:, b].sum())
            mc[:n, b] = discounted_returns(e["reward"], e["terminal"], gamma)[:n]
            all_tokens.append(e["tokens"][:n])
        batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        m = torch.from_numpy(mask).to(device)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            # unconditioned, as `evaluate` scores
            scored = model.wm.eval_sums(model.wm.conditioned_batch(batch, labels=False), m, model.eval_samples)
            value = model.ac.critic(scored.features).float() if model.ac is not None else None
        for name, (total, count) in scored.sums.items():
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += total
            acc[1] += count
        steps += int(m.sum())
        if value is not None:
            values.append(value[m].cpu().numpy())
            returns.append(mc[mask])
    model.train()
    metrics = {name: total / max(1, count) for name, (total, count) in sums.items()}
    metrics.update({"unigram_pos_nll": unigram_pos_bits(np.concatenate(all_tokens), model.dims["n_tokens"]),
                    "episodes": float(len(episodes)), "steps": float(steps)})
    if values:
        v, r = np.concatenate(values), np.concatenate(returns)
        metrics.update({"value_error": float(np.abs(v - r).mean()), "return_mc": float(r.mean()),
                        "value_mean": float(v.mean())})
        if v.std() > 0 and r.std() > 0:
            metrics["value_corr"] = float(np.corrcoef(v, r)[0, 1])
    return metrics
