"""Evaluation of a world model on held-out episodes: the learner's periodic `eval/*` metrics.

Episodes are scored whole (cut to `eval_max_steps`), each filtered from a zero state, in
batches made by data.py. Token forecasts are compared with baselines that know the token
position (each of the G positions of a step uses its own small set of codes, so a pooled
unigram flatters any model).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pydreamer.data import episode_batch
from pydreamer.episodes import EpisodeError, list_episodes, load_episode
from pydreamer.models import Dreamer
from pydreamer.models.functions import LN2, categorical_kl
from pydreamer.models.rssm import RSSM

log = logging.getLogger("pydreamer.evaluate")


def load_eval_episodes(folder: Path | str, n: int) -> list[dict]:
    """The first `n` readable episodes of the eval store (sorted names, so the set stays fixed as it grows)."""
    out = []
    for path in list_episodes(folder):
        if len(out) >= n:
            break
        try:
            ep = load_episode(path)
        except EpisodeError as e:
            log.warning("eval: skipping %s", e)
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
    """eval/* metrics of the RSSM world model and its critic on whole episodes.

    loss_tokens: posterior reconstruction (bits per token). nll_h1: each step's tokens forecast
    one step ahead, as the step's negative ELBO (reconstruction + KL(posterior || prior), an
    upper bound on -log p(tokens_t | steps < t)) per token; nll_h1_sampled and acc_h1: the
    same forecast from `eval_samples` prior draws decoded and averaged (reset rows, which have
    no past, are left out of all three); value_error: mean |critic value - discounted
    Monte-Carlo return of the true rewards|. unigram_pos_nll: the entropy of the episodes'
    own per-position token frequencies (a 'learned nothing' that knows the position).
    """
    if not episodes:
        return {}
    model.eval()
    gamma, max_steps = float(conf["gamma"]), int(conf["eval_max_steps"])
    sums = dict.fromkeys(("rec_bits", "h1_bits", "h1_sampled_bits", "h1_hits", "kl", "rew_sq"), 0.0)
    counts = dict.fromkeys(("rec", "h1", "steps"), 0)
    values, returns, all_tokens = [], [], []
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
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            out = model.wm(batch, model.initial_state(B, device))
            probs = model.wm.horizon1_probs(out.states, out.prior_logits, model.eval_samples)
            feats = RSSM.features(out.states)
            value = model.ac.critic(feats).float()
            reward_pred = model.wm.reward_head(feats).float()
        m = torch.from_numpy(mask).to(device)
        logp = torch.log_softmax(out.token_logits.float(), -1).gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1)
        sums["rec_bits"] += float((-logp / LN2).sum(-1)[m].sum())
        counts["rec"] += int(m.sum()) * G
        m1 = m.clone()
        m1[0] = False
        p = probs.float().gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1).clamp_min(1e-12)
        sums["h1_sampled_bits"] += float((-torch.log2(p)).sum(-1)[m1].sum())
        sums["h1_hits"] += float((probs.argmax(-1) == batch["tokens"]).float().sum(-1)[m1].sum())
        counts["h1"] += int(m1.sum()) * G
        kl = categorical_kl(out.post_logits, out.prior_logits)
        sums["kl"] += float(kl[m].sum())
        # The step's negative ELBO bounds -log p(tokens_t | steps < t) from above: the forecast's NLL.
        sums["h1_bits"] += float(((-logp).sum(-1) + kl)[m1].sum() / LN2)
        sums["rew_sq"] += float((reward_pred - batch["reward"]).pow(2)[m].sum())
        counts["steps"] += int(m.sum())
        values.append(value[m].cpu().numpy())
        returns.append(mc[mask])
    model.train()
    v, r = np.concatenate(values), np.concatenate(returns)
    tokens = np.concatenate(all_tokens)
    metrics = {
        "loss_tokens": sums["rec_bits"] / max(1, counts["rec"]),
        "nll_h1": sums["h1_bits"] / max(1, counts["h1"]),
        "nll_h1_sampled": sums["h1_sampled_bits"] / max(1, counts["h1"]),
        "acc_h1": sums["h1_hits"] / max(1, counts["h1"]),
        "kl": sums["kl"] / max(1, counts["steps"]),
        "loss_reward": 0.5 * sums["rew_sq"] / max(1, counts["steps"]),
        "value_error": float(np.abs(v - r).mean()),
        "return_mc": float(r.mean()),
        "value_mean": float(v.mean()),
        "unigram_pos_nll": unigram_pos_bits(tokens, model.dims["n_tokens"]),
        "episodes": float(len(episodes)),
        "steps": float(counts["steps"]),
    }
    if v.std() > 0 and r.std() > 0:
        metrics["value_corr"] = float(np.corrcoef(v, r)[0, 1])
    return metrics
