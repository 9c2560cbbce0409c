"""Heads on the RSSM features: the token decoder and scalar heads (reward, terminal, value)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functions import mlp


class TokenDecoder(nn.Module):
    """A categorical over the codebook for each of the G tokens of a step."""

    def __init__(self, feature_dim: int, n_tokens: int, tokens_per_step: int, hidden_dim: int = 256, layers: int = 2):
        super().__init__()
        self.n_tokens = n_tokens
        self.tokens_per_step = tokens_per_step
        self.net = mlp(feature_dim, hidden_dim, n_tokens * tokens_per_step, layers=layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [*B, F] -> logits [*B, G, K] (float32)."""
        return self.net(features).float().reshape(*features.shape[:-1], self.tokens_per_step, self.n_tokens)

    @staticmethod
    def nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Cross-entropy in nats per token: logits [*B, G, K], tokens [*B, G] -> [*B, G]."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="none").reshape(
            tokens.shape
        )


class ScalarHead(nn.Module):
    """An MLP with one output per state: reward mean, terminal logit, or value."""

    def __init__(self, feature_dim: int, hidden_dim: int = 256, layers: int = 2):
        super().__init__()
        self.net = mlp(feature_dim, hidden_dim, 1, layers=layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).float().squeeze(-1)
