"""Attention plumbing of the Transformer world model: its masks, position labels, and one encoder layer run
against cached keys and values (how imagining one more step costs one position, not a whole window)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class KVCache(NamedTuple):
    """What imagining one more step needs of the steps before it: each layer's keys and values of the
    last span - 1 steps (all a new step attends to), with their validity and the newest step's index."""

    keys: list[torch.Tensor]  # per layer [N, heads, span - 1, dim / heads], oldest first
    values: list[torch.Tensor]  # the same
    valid: torch.Tensor  # bool [N, span - 1]
    step: torch.Tensor  # int64 [N]: the newest step's index in its episode


def attend(layer: nn.TransformerEncoderLayer, heads: int, x: torch.Tensor, allowed: torch.Tensor,
           past: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pre-norm encoder layer as nn.TransformerEncoderLayer computes it, with the keys and values
    of earlier steps (`past`) put before the new ones. x [N, L, dim]; allowed bool [N, L, S + L]
    (True = may attend). Returns the layer's output and the keys and values of all S + L steps."""
    attn = layer.self_attn
    N, L, _ = x.shape
    split = lambda t: t.reshape(N, L, heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = map(split, F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1),
                                       dropout_p=attn.dropout if layer.training else 0.0)
    x = x + layer.dropout1(attn.out_proj(a.transpose(1, 2).reshape(N, L, -1)))
    x = x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x))))))
    return x, k, v


def repeat(cache: KVCache, n: int) -> KVCache:
    """Each window's cache n times over (n sampled continuations of each)."""
    return KVCache([k.repeat_interleave(n, 0) for k in cache.keys], [v.repeat_interleave(n, 0) for v in cache.values],
                   cache.valid.repeat_interleave(n, 0), cache.step.repeat_interleave(n, 0))


def blocked(episode: torch.Tensor, valid: torch.Tensor, span: int) -> torch.Tensor:
    """Attention mask [N, L, L], True = may not attend: a step sees the last `span` steps of its
    own episode (itself included), never a later step, an empty slot or another episode.

    Stacked layers widen what a step depends on by span - 1 steps per layer, and only that whole
    cone decides its output; keeping layers * (span - 1) < context_steps puts the cone inside the
    carried window + chunk in training and inside each forecast window, so both compute the same.
    Every position sees itself, so no row is empty (an empty row would give NaN that spreads
    through the values); empty slots are never seen by other positions, so this changes nothing.
    """
    L = episode.shape[1]
    i = torch.arange(L, device=episode.device)
    back = i.unsqueeze(1) - i.unsqueeze(0)  # query - key
    band = (back >= 0) & (back < span)
    allowed = band & (episode.unsqueeze(2) == episode.unsqueeze(1)) & valid.unsqueeze(1)
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=episode.device)
    return ~allowed


def ring_sinusoids(context_steps: int, dim: int) -> torch.Tensor:
    """Initial position embeddings: sinusoids whose periods divide context_steps, so the ring of
    labels (step index mod context_steps) has no seam and offsets between steps are easy to read."""
    pos = torch.arange(context_steps, dtype=torch.float32).unsqueeze(1)
    freq = 1.0 + torch.arange(dim // 2, dtype=torch.float32).remainder(max(1, context_steps // 2))
    angle = 2 * math.pi * pos * freq / context_steps
    out = torch.zeros(context_steps, dim)
    out[:, 0:2 * (dim // 2):2] = torch.sin(angle)
    out[:, 1:2 * (dim // 2):2] = torch.cos(angle)
    return out * 0.5
