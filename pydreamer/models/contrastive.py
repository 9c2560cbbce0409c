"""InfoNCE between the world model's latent features and the encoder's embedding of a step (Dreaming V2 style).

With `wm_objective: contrastive` this replaces token reconstruction as what trains the latent: a
step's features must pick out the embedding of that same step among the embeddings of every other
step and sequence of the batch (the negatives), so the latent keeps what tells steps apart without
spending capacity on predicting every token. Both sides go through a learned linear projection
onto the unit sphere; the logits are cosine similarities divided by a learned temperature.
Steps whose tokens equal the positive's (silence, held sounds) are not counted as its negatives:
their embeddings are identical, so pushing them apart could only add noise.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def info_nce(query: torch.Tensor, keys: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor | float,
             not_negative: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row InfoNCE loss (nats) and top-1 hit: query [N, D], keys [M, D] (both unit norm), target [N] indices
    into keys (the positive of each row; every other key is a negative unless `not_negative` [N, M] says so)
    -> (loss [N], hit [N] bool)."""
    logits = query.float() @ keys.float().T / temperature
    if not_negative is not None:
        positive = F.one_hot(target, keys.shape[0]).bool()
        logits = logits.masked_fill(not_negative & ~positive, float("-inf"))
    return F.cross_entropy(logits, target, reduction="none"), logits.argmax(-1) == target


def same_tokens(tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, M] bool: key step m has the same tokens as row n's positive (tokens [M, G] of the key steps)."""
    return (tokens[target].unsqueeze(1) == tokens.unsqueeze(0)).all(-1)


class ContrastiveHead(nn.Module):
    """The projections of features and embeddings, and the learned temperature of their InfoNCE."""

    MIN_TEMPERATURE = 0.01  # below this the logits' scale explodes (CLIP clamps its scale at 100)

    def __init__(self, feature_dim: int, embed_dim: int, dim: int, temperature: float):
        super().__init__()
        self.query = nn.Linear(feature_dim, dim)
        self.key = nn.Linear(embed_dim, dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp_min(self.MIN_TEMPERATURE)

    def keys(self, embed: torch.Tensor) -> torch.Tensor:
        """Embeddings [*B, E] -> unit keys [N, D], flattened in the order of `embed`'s leading dims."""
        return F.normalize(self.key(embed.reshape(-1, embed.shape[-1])).float(), dim=-1)

    def loss(self, features: torch.Tensor, keys: torch.Tensor, target: torch.Tensor,
             key_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [N] nats, hit [N]) of features [N, F] against `keys` [M, D], the positive of row i at target[i];
        with `key_tokens` [M, G], keys of steps with the positive's very tokens are no negatives."""
        query = F.normalize(self.query(features).float(), dim=-1)
        exclude = same_tokens(key_tokens, target) if key_tokens is not None else None
        return info_nce(query, keys, target, self.temperature, exclude)
