"""Heads on the RSSM features: the token decoder and scalar heads (reward, terminal, value)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .functions import guided_logits, mlp, sample_index


class TokenDecoder(nn.Module):
    """A categorical over the codebook for each of the G tokens of a step.

    `independent`: the G tokens are independent given the features, so the latent alone must
    carry how they go together. `autoregressive`: token g is also given tokens 0..g-1 of the same
    step (teacher-forced in training, drawn in imagination), so the latent need only carry what
    the step's first tokens leave open.
    """

    def __init__(self, feature_dim: int, n_tokens: int, tokens_per_step: int, hidden_dim: int = 256, layers: int = 2,
                 head: str = "independent"):
        super().__init__()
        if head not in ("independent", "autoregressive"):
            raise ValueError(f"token_head must be 'independent' or 'autoregressive', not {head!r}")
        self.n_tokens = n_tokens
        self.tokens_per_step = tokens_per_step
        self.autoregressive = head == "autoregressive"
        if not self.autoregressive:
            self.net = mlp(feature_dim, hidden_dim, n_tokens * tokens_per_step, layers=layers)
        else:
            self.net = mlp(feature_dim, hidden_dim, hidden_dim, layers=layers - 1)
            self.prefix = nn.Embedding(tokens_per_step * n_tokens, hidden_dim)  # token x at position g: g*K + x
            self.norm = nn.LayerNorm(hidden_dim)
            self.out = nn.Linear(hidden_dim, n_tokens)
            self.position = nn.Parameter(torch.zeros(tokens_per_step, hidden_dim))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """features [*B, F] (and, autoregressive, the step's tokens [*B, G]) -> logits [*B, G, K] (float32)."""
        if not self.autoregressive:
            return self.net(features).float().reshape(*features.shape[:-1], self.tokens_per_step, self.n_tokens)
        if tokens is None:
            raise ValueError("an autoregressive token head needs the step's tokens (use sample() to imagine them)")
        offsets = torch.arange(self.tokens_per_step, device=tokens.device) * self.n_tokens
        emb = self.prefix(tokens + offsets)  # [*B, G, H]
        before = emb.cumsum(-2) - emb  # tokens 0..g-1 of the step, summed
        return self._logits(self.net(features).unsqueeze(-2) + before + self.position)

    def _logits(self, context: torch.Tensor) -> torch.Tensor:
        """Autoregressive head: the codebook logits of a token from its context (trunk + earlier tokens + position)."""
        return self.out(F.elu(self.norm(context))).float()

    def sample(self, features: torch.Tensor, temperature: float = 1.0, guidance: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Imagine a step's tokens: (probs [*B, G, K] of each token given the draws before it, tokens [*B, G]).

        Averaged over imagined futures, these probabilities estimate each token's predictive
        distribution (for the autoregressive head, with the step's earlier tokens drawn, not known).
        Draws use torch's global generator (seed it for repeatable dreams). With `guidance`, features [2N, F] are
        N conditioned lanes then the same N unconditioned, and one draw per lane pair comes from the guided
        distribution (functions.guided_logits): probs and tokens [N, ...].
        """
        guide = (lambda x: x) if guidance is None else (lambda x: guided_logits(x, guidance))
        if not self.autoregressive:
            probs = torch.softmax(guide(self.forward(features)), -1)
            return probs, _draw(probs, temperature)
        trunk = self.net(features)
        context = torch.zeros_like(trunk)
        probs, tokens = [], []
        for g in range(self.tokens_per_step):
            p = torch.softmax(guide(self._logits(trunk + context + self.position[g])), -1)
            x = _draw(p, temperature)
            drawn = self.prefix(x + g * self.n_tokens)
            context = context + (drawn if guidance is None else torch.cat([drawn, drawn]))  # both lanes heard it
            probs.append(p)
            tokens.append(x)
        return torch.stack(probs, -2), torch.stack(tokens, -1)

    @staticmethod
    def nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Cross-entropy in nats per token: logits [*B, G, K], tokens [*B, G] -> [*B, G]."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="none").reshape(
            tokens.shape
        )


def _draw(probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One token per categorical of probs [*B, K] (at a temperature: <1 sharper, >1 flatter) -> [*B]."""
    if temperature != 1.0:
        probs = torch.softmax(torch.log(probs.clamp_min(1e-12)) / temperature, -1)
    return sample_index(probs)


class ScalarHead(nn.Module):
    """An MLP with one output per state: reward mean, terminal logit, or value."""

    def __init__(self, feature_dim: int, hidden_dim: int = 256, layers: int = 2):
        super().__init__()
        self.net = mlp(feature_dim, hidden_dim, 1, layers=layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).float().squeeze(-1)
