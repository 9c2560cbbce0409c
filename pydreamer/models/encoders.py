"""Token encoder: the G VQ-VAE tokens of one step -> one embedding for the RSSM."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from .functions import mlp


class TokenEncoder(nn.Module):
    """An embedding per token, a Conv1D across the G tokens of the step, then an MLP.

    The convolution runs across the G codebook positions of one step, not across time:
    the RSSM stays the only memory over time, so an embedding never sees a later step
    (which would leak the future into the posterior and flatter the horizon-1 scores).
    """

    def __init__(
        self,
        n_tokens: int,
        tokens_per_step: int,
        token_embed_dim: int,
        conv_channels: int,
        hidden_dim: int,
        embed_dim: int,
    ):
        super().__init__()
        self.n_tokens = n_tokens
        self.tokens_per_step = tokens_per_step
        self.embedding = nn.Embedding(n_tokens, token_embed_dim)
        self.conv = nn.Sequential(
            nn.Conv1d(token_embed_dim, conv_channels, kernel_size=3, padding=1),
            nn.ELU(),
        )
        self.mlp = mlp(tokens_per_step * conv_channels, hidden_dim, embed_dim, layers=1)
        self.out_dim = embed_dim

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], n_tokens: int, tokens_per_step: int) -> "TokenEncoder":
        """The encoder both world models use, sized by the config (so their inputs are the same)."""
        return cls(n_tokens, tokens_per_step, token_embed_dim=conf["token_embed_dim"],
                   conv_channels=conf["token_embed_dim"] * 2, hidden_dim=conf["hidden_dim"],
                   embed_dim=conf["embed_dim"])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens int64 [*B, G] -> embedding [*B, embed_dim]."""
        if tokens.shape[-1] != self.tokens_per_step:
            raise ValueError(f"expected {self.tokens_per_step} tokens per step, got shape {tuple(tokens.shape)}")
        batch_shape = tokens.shape[:-1]
        x = self.embedding(tokens.reshape(-1, self.tokens_per_step))  # [N, G, E]
        x = self.conv(x.transpose(1, 2))  # [N, C, G]
        x = self.mlp(x.flatten(1))
        return x.reshape(*batch_shape, -1)
