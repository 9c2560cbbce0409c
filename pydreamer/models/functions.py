"""Small building blocks shared by the world model and the actor-critic."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

LN2 = math.log(2.0)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, layer_norm: bool = True) -> nn.Sequential:
    """`layers` hidden layers of Linear + LayerNorm + ELU, then a linear output."""
    parts: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        parts += [nn.Linear(dim, hidden_dim), nn.LayerNorm(hidden_dim) if layer_norm else nn.Identity(), nn.ELU()]
        dim = hidden_dim
    parts.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*parts)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """DreamerV3's squashing: sign(x) log(1 + |x|), near x around 0, logarithmic in the tails."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of symlog."""
    return torch.sign(x) * torch.expm1(x.abs())


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """A state (a NamedTuple of tensors, whatever the world model) with `fn` applied to each of its tensors."""
    return type(state)(*(fn(x) for x in state))


def sample_one_hot(logits: torch.Tensor, straight_through: bool = True) -> torch.Tensor:
    """Sample a one-hot from categorical logits (last axis).

    With straight-through gradients the sample carries the gradient of the probabilities,
    which is how the RSSM and the actor pass gradients through discrete choices.
    Drawn with the Gumbel-max trick (argmax of logits plus Gumbel noise): the same distribution as
    torch.multinomial, but elementwise work and one argmax, with no host round trip, so it is cheap
    inside the RSSM's step loops on a GPU and traceable by torch.compile.
    """
    logits = logits.float()
    probs = torch.softmax(logits, -1)
    uniform = torch.rand_like(logits).clamp_(min=torch.finfo(logits.dtype).tiny, max=1.0 - 1e-7)
    index = (logits - torch.log(-torch.log(uniform))).argmax(-1)
    sample = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    if straight_through:
        sample = sample + probs - probs.detach()
    return sample


def guided_logits(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: logits [2N, ..., K] of N conditioned lanes then the same N unconditioned ->
    log-probabilities [N, ..., K] moved from the unconditioned ones `scale` times their distance to the conditioned
    (1: the conditioned model as trained; 0: unconditioned; above 1: more of the condition than training gave)."""
    cond, uncond = torch.log_softmax(logits.float(), -1).chunk(2, 0)
    return uncond + scale * (cond - uncond)


def sample_index(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per categorical of probs [*B, K] (last axis; need not sum to 1) -> int64 [*B].

    Inverse-CDF sampling: one uniform per row against the cumulative sum. The same distribution as
    torch.multinomial, which draws K exponentials per row: over a 1024-token codebook this is what
    made imagining cost most of a Transformer forecast."""
    cdf = probs.float().cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of categoricals over the last axis, summed over the second-to-last (the stochastic groups)."""
    logp = torch.log_softmax(logits_p.float(), -1)
    logq = torch.log_softmax(logits_q.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).sum(-1)


def lambda_returns(
    reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor, lambda_: float
) -> torch.Tensor:
    """TD(lambda) returns of an imagined trajectory (time-major).

    reward[i], discount[i]: of the transition into state i+1, shape [H, N];
    value: [H+1, N] for states 0..H. Returns [H, N] for states 0..H-1, bootstrapped on value[H].
    """
    horizon = reward.shape[0]
    out = []
    last = value[horizon]
    for i in reversed(range(horizon)):
        last = reward[i] + discount[i] * ((1.0 - lambda_) * value[i + 1] + lambda_ * last)
        out.append(last)
    return torch.stack(out[::-1])


class LayerNormGRUCell(nn.Module):
    """GRU cell with layer norm on the gates (as in DreamerV2): keeps the recurrent state well scaled."""

    def __init__(self, input_size: int, hidden_size: int, update_bias: float = -1.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.update_bias = update_bias
        self.linear = nn.Linear(input_size + hidden_size, 3 * hidden_size, bias=False)
        self.norm = nn.LayerNorm(3 * hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1.0 - update) * h
