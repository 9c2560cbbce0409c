"""A masked parallel decoder over blocks of future steps (SoundStorm / MaskGIT), on the causal Transformer's context.

The past is summarised causally by the Transformer world model's own trunk (`transformer.py`: the same token
encoder, sliding-window attention, carried window): its feature after step t is the context of the block of the
next K = `maskgit_block` steps x G tokens. A bidirectional Transformer (`MaskedBlock`) reads that context and the
block with some tokens replaced by a mask id, and gives every position a distribution over the codebook.

- Training: for `maskgit_starts` random steps t of each chunk, the block t..t+K-1 with a random share of its
  tokens masked, the share drawn from MaskGIT's cosine schedule (cos(pi/2 u), u uniform), cross-entropy on the
  masked tokens. Steps past the chunk or the episode are unknown: always masked, never scored. The trunk keeps
  its own next-step head and loss (the Transformer's), which shapes the context feature; the reward head stays.
- Forecasts (`evaluate`): the distribution of the token at t + h for h <= K is the block model's, with the whole
  block masked: an exact marginal given steps 0..t, no draw. For h > K the first blocks are decoded (sampled,
  `samples` futures) and read back as context, and the next block is again read fully masked; the mean over
  futures is the forecast.
- Dreams and completions: block by block. Each block starts fully masked; each of `maskgit_iterations`
  iterations draws every masked token (at `temperature`) and keeps the most confident ones, so that the share
  still masked follows the cosine schedule down to none (`unmasking_schedule`); the block is then read back
  through the trunk as context for the next. So `dream` and `mix` work as for the Transformer.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conditioning import Vocabulary
from .base import EvalSums, logit_bits_and_hits
from .functions import LN2, sample_index
from .transformer import TransformerOutput, TransformerState, TransformerWorldModel


def unmasking_schedule(n_tokens: int, iterations: int) -> list[int]:
    """How many of a block's `n_tokens` tokens are still masked after each decoding iteration: MaskGIT's cosine
    schedule, at least one token unmasked per iteration, none masked after the last (so it may end early)."""
    if n_tokens < 1 or iterations < 1:
        raise ValueError(f"need at least one token and one iteration; got {n_tokens}, {iterations}")
    left, out = n_tokens, []
    for i in range(1, iterations + 1):
        left = 0 if i == iterations else min(left - 1, int(math.floor(n_tokens * math.cos(math.pi / 2 * i / iterations))))
        left = max(left, 0)
        out.append(left)
        if left == 0:
            break
    return out


class MaskedBlock(nn.Module):
    """Bidirectional attention over one block of K steps x G tokens (some masked), given a context feature."""

    def __init__(self, n_tokens: int, tokens_per_step: int, block_steps: int, context_dim: int, dim: int,
                 heads: int, layers: int, dropout: float):
        super().__init__()
        self.n_tokens, self.G, self.K = n_tokens, tokens_per_step, block_steps
        self.mask_id = n_tokens  # one more embedding than the codebook: "not known yet"
        self.embed = nn.Embedding(n_tokens + 1, dim)
        self.position = nn.Parameter(torch.randn(block_steps * tokens_per_step, dim) * 0.02)
        self.context = nn.Linear(context_dim, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.head = nn.Linear(dim, n_tokens)

    def forward(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """context [N, context_dim], tokens [N, K, G] (mask_id where masked) -> logits [N, K, G, n_tokens] (float32).
        The context is a prefix position and is also added to every position."""
        N = tokens.shape[0]
        c = self.context(context).unsqueeze(1)
        x = self.embed(tokens.reshape(N, -1)) + self.position + c
        x = self.layers(torch.cat([c, x], 1))[:, 1:]
        return self.head(x).float().reshape(N, self.K, self.G, self.n_tokens)

    def masked_logits(self, context: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """The whole block masked: each position's forecast from the context alone [N, K, G, n_tokens]."""
        full = torch.full((min(chunk, context.shape[0]), self.K, self.G), self.mask_id, dtype=torch.long,
                          device=context.device)
        return torch.cat([self(c, full[: c.shape[0]]) for c in context.split(chunk)]) if context.shape[0] else \
            torch.zeros(0, self.K, self.G, self.n_tokens, device=context.device)

    def decode(self, context: torch.Tensor, iterations: int, temperature: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One block [N, K, G] per context by iterative parallel refinement (see the module's docstring)."""
        N, L = context.shape[0], self.K * self.G
        tokens = torch.full((N, L), self.mask_id, dtype=torch.long, device=context.device)
        masked = torch.ones(N, L, dtype=torch.bool, device=context.device)
        for left in unmasking_schedule(L, iterations):
            probs = torch.softmax(self(context, tokens.reshape(N, self.K, self.G)).reshape(N, L, -1) / temperature, -1)
            draw = sample_index(probs, generator)
            confidence = probs.gather(-1, draw.unsqueeze(-1)).squeeze(-1)
            tokens = torch.where(masked, draw, tokens)
            # Of the tokens masked before this iteration, the `left` least confident are masked again.
            confidence = torch.where(masked, confidence, torch.full_like(confidence, math.inf))
            masked = torch.zeros_like(masked)
            if left:
                masked.scatter_(1, confidence.topk(left, 1, largest=False).indices, True)
                tokens = torch.where(masked, torch.full_like(tokens, self.mask_id), tokens)
        return tokens.reshape(N, self.K, self.G)


class MaskGITWorldModel(TransformerWorldModel):
    kind = "maskgit"
    guides = False  # its block decoder reads the condition too: guiding it is not built
    # At the default horizons (h <= maskgit_block) forecasts draw nothing; past the block, each future decodes
    # blocks. Not measured with bench/samples.py: the RSSM's count, since h > K is not the default.
    fair_samples = 8
    arch_keys = TransformerWorldModel.arch_keys + ("maskgit_block", "maskgit_layers", "maskgit_iterations")

    def __init__(self, conf: Mapping[str, Any], n_tokens: int, tokens_per_step: int, action_dim: int,
                 conditions: Vocabulary = ()):
        super().__init__(conf, n_tokens, tokens_per_step, action_dim, conditions)
        self.block_steps = int(conf["maskgit_block"])
        self.iterations = int(conf["maskgit_iterations"])
        self.starts = int(conf["maskgit_starts"])
        if self.block_steps < 1 or self.iterations < 1:
            raise ValueError(f"maskgit_block and maskgit_iterations must be at least 1, not {self.block_steps}, "
                             f"{self.iterations}")
        self.block = MaskedBlock(self.n_tokens, self.tokens_per_step, self.block_steps, self.dim, self.dim,
                                 self.heads, int(conf["maskgit_layers"]), conf["transformer_dropout"])
        # a conditioned model's block decoder reads the condition too (the trunk's heads read it with the action)
        self.condition_in = nn.Linear(self.conditioning.dim, self.dim) if self.conditioning is not None else None

    def _conditioned(self, context: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """The block decoder's context [N, dim] with the condition's embedding added: of each block's own steps
        (`embedding` [N, condition_dim], training), else the fixed condition (none, or what `conditioned` set)."""
        if self.condition_in is None:
            return context
        if embedding is None:
            embedding = self.conditioning.embed(self.conditioning.fixed).expand(context.shape[0], -1)
        return context + self.condition_in(embedding.to(context.dtype))

    # ---- training ------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor], state: TransformerState) -> TransformerOutput:
        """The trunk's next-step loss plus the masked-token cross-entropy of blocks from random steps (nats per
        step: the mean over masked tokens x G)."""
        batch = self.conditioned_batch(batch)  # with label dropout: the trunk's heads and the blocks see the same
        pred = self.predict(batch, state)
        loss, metrics = self.next_step_loss(pred, batch)
        tokens, reset = batch["tokens"], batch["reset"].bool()
        T, B, G = tokens.shape
        K, device = self.block_steps, tokens.device
        t, b = (pred.has_context | pred.first_step).nonzero(as_tuple=True)
        if self.starts > 0 and t.numel() > self.starts:
            pick = torch.randperm(t.numel(), device=device)[: self.starts]
            t, b = t[pick], b[pick]
        steps = t.unsqueeze(1) + torch.arange(K, device=device)  # [S, K]
        episode = reset.long().cumsum(0)
        inside = steps.clamp(max=T - 1)
        known = (steps < T) & (episode[inside, b.unsqueeze(1)] == episode[t, b].unsqueeze(1))
        target = tokens[inside, b.unsqueeze(1)]  # [S, K, G]
        known = known.unsqueeze(-1).expand_as(target)
        share = torch.cos(math.pi / 2 * torch.rand(t.numel(), 1, 1, device=device))
        masked = (torch.rand(target.shape, device=device) < share) | ~known
        masked[:, 0, 0] |= ~(masked & known).flatten(1).any(1)  # at least one token to learn from per block
        context = self._conditioned(pred.feature[t, b], batch["action"][t, b, self.action_dim:])
        logits = self.block(context, torch.where(masked, torch.full_like(target, self.block.mask_id), target))
        nll = F.cross_entropy(logits.reshape(-1, self.n_tokens), target.reshape(-1), reduction="none").view_as(target)
        scored = (masked & known).float()
        loss_block = (nll * scored).sum() / scored.sum().clamp(min=1)
        loss = loss + G * loss_block
        metrics.update(loss_model=loss.detach(), loss_block=loss_block.detach() / LN2)
        return TransformerOutput(loss, pred.last_state, metrics)

    @torch.no_grad()
    def eval_sums(self, batch: Mapping[str, torch.Tensor], mask: torch.Tensor, samples: int) -> EvalSums:
        """nll_h1 of each step from the block after the steps before it, fully masked (what `evaluate` scores);
        `nll_h1_next_step_head` is the trunk's own next-step head on the same steps."""
        pred = self.predict(batch, self.initial_state(mask.shape[1], mask.device))
        m = mask & pred.has_context
        tokens = batch["tokens"][m]
        bits, hits = logit_bits_and_hits(self.block.masked_logits(self._conditioned(pred.feature[m]))[:, 0], tokens)
        head_bits, _ = logit_bits_and_hits(pred.token_logits[m], tokens)
        n = int(m.sum()) * tokens.shape[-1]
        nll = (float(bits.sum()), n)
        return EvalSums({"nll_h1": nll, "acc_h1": (float(hits.float().sum()), n), "loss_tokens": nll,
                         "nll_h1_next_step_head": (float(head_bits.sum()), n)}, None)

    # ---- forecasts and dreams ------------------------------------------------------------
    def _extend(self, window: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A context window (tokens [N, C, G], step, valid [N, C]) moved on by a block [N, K, G] of new steps."""
        tokens, step, valid = window
        C, K = tokens.shape[1], block.shape[1]
        after = torch.where(valid[:, -1], step[:, -1] + 1, torch.zeros_like(step[:, -1]))
        new_step = after.unsqueeze(1) + torch.arange(K, device=block.device)
        return (torch.cat([tokens, block], 1)[:, -C:], torch.cat([step, new_step], 1)[:, -C:],
                torch.cat([valid, torch.ones_like(new_step, dtype=torch.bool)], 1)[:, -C:])

    @torch.no_grad()
    def forecast(self, tokens: torch.Tensor, horizon: int, samples: int, starts: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, temperature: float = 1.0,
                 max_windows: int = 1024) -> torch.Tensor:
        """Predictive distributions [N, horizon, G, K] of steps t+1..t+horizon after each start t (see the module's
        docstring: exact for h <= maskgit_block, the mean over `samples` decoded futures past it)."""
        self.check_tokens(tokens)
        if horizon < 1 or samples < 1 or temperature <= 0:
            raise ValueError(f"need horizon >= 1, samples >= 1, temperature > 0; got {horizon}, {samples}, {temperature}")
        T, G = tokens.shape
        if starts is None:
            starts = torch.arange(max(T - 1, 0), device=tokens.device)
        starts = starts.to(device=tokens.device, dtype=torch.long).reshape(-1)
        if starts.numel() and (starts.min() < 0 or starts.max() >= T):
            raise ValueError(f"forecast starts must lie in [0, {T}) for an utterance of {T} steps")
        K = self.block_steps
        out = torch.zeros(starts.numel(), horizon, G, self.n_tokens, device=tokens.device)
        per_chunk = max(1, max_windows // (1 if horizon <= K else samples))
        for a in range(0, starts.numel(), per_chunk):
            ends = starts[a:a + per_chunk]
            n = ends.numel()
            window = self._window(tokens, ends)
            context = self._conditioned(self._prefill(*window)[0])
            out[a:a + n, : min(horizon, K)] = torch.softmax(self.block.masked_logits(context), -1)[:, :horizon]
            if horizon <= K:
                continue
            window = tuple(x.repeat_interleave(samples, 0) for x in window)
            context = context.repeat_interleave(samples, 0)
            for first in range(K, horizon, K):
                window = self._extend(window, self.block.decode(context, self.iterations, temperature, generator))
                context = self._conditioned(self._prefill(*window)[0])
                probs = torch.softmax(self.block.masked_logits(context), -1)[:, : horizon - first]
                out[a:a + n, first:first + probs.shape[1]] = probs.reshape(n, samples, *probs.shape[1:]).mean(1)
        return out

    @torch.no_grad()
    def imagine(self, prompt: torch.Tensor, n_steps: int, samples: int, temperature: float = 1.0, seed: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Dreams [samples, n_steps, G] after a prompt [P, G] (P = 0: from the trunk's empty-context feature), one
        decoded block at a time; the draws come from `generator`, or else from one seeded with `seed`."""
        prompt, generator = self._imagine_setup(prompt, n_steps, samples, temperature, seed, generator)
        device = self.start.device
        C, G = self.context_steps, self.tokens_per_step
        if prompt.shape[0] == 0:
            window = (torch.zeros(samples, C, G, dtype=torch.long, device=device),
                      torch.zeros(samples, C, dtype=torch.long, device=device),
                      torch.zeros(samples, C, dtype=torch.bool, device=device))
            context = self._conditioned(self.transformer.norm(self.start).expand(samples, -1))
        else:
            end = torch.full((1,), prompt.shape[0] - 1, dtype=torch.long, device=device)
            window = tuple(x.expand(samples, *x.shape[1:]) for x in self._window(prompt, end))
            context = self._conditioned(self._prefill(*window)[0])
        blocks = []
        for done in range(0, n_steps, self.block_steps):
            blocks.append(self.block.decode(context, self.iterations, temperature, generator))
            if done + self.block_steps < n_steps:
                window = self._extend(window, blocks[-1])
                context = self._conditioned(self._prefill(*window)[0])
        if not blocks:
            return torch.zeros(samples, 0, G, dtype=torch.long, device=device)
        return torch.cat(blocks, 1)[:, :n_steps]
