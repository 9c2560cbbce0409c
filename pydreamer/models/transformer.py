"""A causal Transformer world model over the same VQ-VAE tokens as the RSSM: a strong baseline.

It exists to tell how much of the RSSM's forecast skill comes from its latent dynamics and how
much any good sequence model gets from the tokens: it reads each step through the very same
`TokenEncoder` as the RSSM and predicts the next step's G tokens (independent categoricals
given the context, like the RSSM's token decoder) and its reward, so `loss_tokens`,
`acc_tokens` and `loss_reward` line up with the RSSM's. A step's forecast depends on the last
`context_steps` steps of its own episode (itself included) and nothing else: each layer attends
a band of (context_steps - 1) // layers + 1 steps back (sliding-window attention, so the stack
sees context_steps steps, or a few fewer when context_steps - 1 is not a multiple of the
layers), never across a `reset`, all inside PyTorch's own attention with a mask. The state
carried from one training chunk to the next (truncated BPTT) is not a hidden vector but the last
`context_steps - 1` steps' token ids, a validity mask and their step indices, which the next
chunk reads again; learned position embeddings label a step by its index in its episode modulo
`context_steps` (a ring, never repeated inside one band). So training (one pass over carried
window + chunk), `forecast` and `imagine` (one pass per window) compute the same function of the
same steps, wherever the chunks were cut. A learned start feature stands for the empty context:
an episode's first step is forecast (and trained) from nothing, which lets `imagine` dream from
no prompt; the `loss_tokens`/`acc_tokens` metrics leave first steps out, as the RSSM's
evaluation does, while the loss includes them.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import torch
import torch.nn as nn

from .attention import KVCache, attend, blocked, repeat, ring_sinusoids
from .conditioning import Vocabulary
from .base import EvalSums, WorldModel, logit_bits_and_hits
from .decoders import ScalarHead, TokenDecoder
from .encoders import TokenEncoder
from .functions import LN2, guided_logits, mlp, sample_index


class TransformerState(NamedTuple):
    """What one chunk hands to the next: the last `context_steps - 1` steps (no gradient)."""

    tokens: torch.Tensor  # int64 [W, B, G]: token ids, oldest first
    valid: torch.Tensor  # bool [W, B]: False = empty slot or a step of an earlier episode
    step: torch.Tensor  # int64 [W, B]: each step's index in its episode (its position label mod context_steps)


class TransformerOutput(NamedTuple):
    loss: torch.Tensor  # scalar: what the world-model optimizer minimizes
    last_state: TransformerState  # carried to the next chunk of the same lanes
    metrics: dict[str, torch.Tensor]


class TransformerPrediction(NamedTuple):
    token_logits: torch.Tensor  # [T, B, G, K]: each step forecast from the steps before it (float32)
    reward: torch.Tensor  # [T, B]: each step's reward forecast the same way
    has_context: torch.Tensor  # bool [T, B]: forecast from at least one earlier step of its episode
    first_step: torch.Tensor  # bool [T, B]: an episode's first step, forecast from the empty context
    last_state: TransformerState
    feature: torch.Tensor  # [T, B, dim]: what forecasts each step (the feature of the steps before it, or the start)


class TransformerWorldModel(WorldModel):
    kind = "transformer"
    guides = True  # its heads, the only part that reads the condition (_dreamt_logits)
    fair_samples = 128  # its sampled futures converge slowly: 64 -> 128 moved the NLL by 0.012 bits, 128 -> 256 by 0.005
    arch_keys = ("token_embed_dim", "hidden_dim", "embed_dim", "context_steps", "transformer_dim", "transformer_heads",
                 "transformer_layers", "transformer_dropout")

    def __init__(self, conf: Mapping[str, Any], n_tokens: int, tokens_per_step: int, action_dim: int,
                 conditions: Vocabulary = ()):
        super().__init__(conf, n_tokens, tokens_per_step, action_dim, conditions)
        self.context_steps = conf["context_steps"]
        self.reward_weight = conf["reward_weight"]
        dim, heads = conf["transformer_dim"], conf["transformer_heads"]
        if self.context_steps < 1:
            raise ValueError(f"context_steps must be at least 1, not {self.context_steps}")
        if dim % heads:
            raise ValueError(f"transformer_dim ({dim}) must be a multiple of transformer_heads ({heads})")
        self.dim, self.heads = dim, heads
        layers = conf["transformer_layers"]
        # Each layer attends `span` steps back (itself included), so the stack's receptive field,
        # layers * (span - 1) + 1 steps, stays within context_steps: see attention.blocked.
        self.span = (self.context_steps - 1) // max(1, layers) + 1
        hidden = conf["hidden_dim"]
        self.encoder = TokenEncoder.from_conf(conf, n_tokens, tokens_per_step)  # the RSSM's, same sizes
        self.embed_in = nn.Linear(self.encoder.out_dim, dim)
        self.position = nn.Embedding(self.context_steps, dim)
        with torch.no_grad():
            self.position.weight.copy_(ring_sinusoids(self.context_steps, dim))
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            dropout=conf["transformer_dropout"],
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        # The output feature of an empty context: how an episode's first step is forecast.
        self.start = nn.Parameter(torch.randn(dim) * 0.02)
        # Heads read a step's feature plus the action that leads to the next step.
        self.token_head = mlp(dim + self.action_input_dim, hidden, self.n_tokens * self.tokens_per_step, layers=2)
        self.reward_head = ScalarHead(dim + self.action_input_dim, hidden)

    # ---- state ---------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> TransformerState:
        W = self.context_steps - 1
        return TransformerState(
            torch.zeros(W, batch_size, self.tokens_per_step, dtype=torch.long, device=device),
            torch.zeros(W, batch_size, dtype=torch.bool, device=device),
            torch.zeros(W, batch_size, dtype=torch.long, device=device),
        )

    def state_batch_size(self, state: TransformerState) -> int:
        return state.tokens.shape[1]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- the network ---------------------------------------------------------------------

    def _features(self, tokens: torch.Tensor, step: torch.Tensor, valid: torch.Tensor,
                  episode: torch.Tensor) -> torch.Tensor:
        """Batch-first windows -> one feature per step, from that step's visible context.

        tokens [N, L, G], step/valid/episode [N, L] -> [N, L, dim].
        """
        x = self.embed_in(self.encoder(tokens)) + self.position(step % self.context_steps)
        mask = blocked(episode, valid, self.span).repeat_interleave(self.heads, 0)
        return self.transformer(x, mask=mask)

    def _heads(self, features: torch.Tensor, next_action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([features, next_action.to(features.dtype)], -1)
        logits = self.token_head(x).float().reshape(*x.shape[:-1], self.tokens_per_step, self.n_tokens)
        return logits, self.reward_head(x)

    # ---- training ------------------------------------------------------------------------
    def predict(self, batch: Mapping[str, torch.Tensor], state: TransformerState) -> TransformerPrediction:
        """Forecast every step of a time-major chunk from the steps before it (carried window included)."""
        batch = self.conditioned_batch(batch)
        tokens = batch["tokens"]
        self.check_tokens(tokens)
        reset = batch["reset"].bool()
        T, B = reset.shape
        W = state.tokens.shape[0]
        device = tokens.device
        # Where each chunk step sits in its episode: after the latest reset, or after the carried steps.
        t = torch.arange(T, device=device).unsqueeze(1)
        last_reset = torch.where(reset, t, torch.full_like(t, -1)).cummax(0).values
        if W:
            after_carried = torch.where(state.valid[-1], state.step[-1] + 1, torch.zeros_like(state.step[-1]))
        else:
            after_carried = torch.zeros(B, dtype=torch.long, device=device)
        step = torch.where(last_reset >= 0, t - last_reset, after_carried + t)
        # The carried window and the chunk as one sequence; carried steps belong to episode 0.
        seq_tokens = torch.cat([state.tokens, tokens], 0)
        seq_step = torch.cat([state.step, step], 0)
        seq_valid = torch.cat([state.valid, torch.ones(T, B, dtype=torch.bool, device=device)], 0)
        seq_episode = torch.cat([torch.zeros(W, B, dtype=torch.long, device=device), reset.long().cumsum(0)], 0)
        feats = self._features(
            seq_tokens.transpose(0, 1), seq_step.t(), seq_valid.t(), seq_episode.t()
        ).transpose(0, 1)  # [W+T, B, dim]
        # Chunk step t is forecast by the feature of the sequence position just before it.
        if W:
            before = feats[W - 1:W + T - 1]
            before_valid = seq_valid[W - 1:W + T - 1]
        else:  # no carried window: the chunk's first step has nothing before it
            before = torch.cat([feats[:1] * 0, feats[:T - 1]], 0)
            before_valid = torch.cat([torch.zeros(1, B, dtype=torch.bool, device=device),
                                      torch.ones(T - 1, B, dtype=torch.bool, device=device)], 0)
        has_context = before_valid & ~reset  # a non-reset step shares the episode of the step before it
        start = self.transformer.norm(self.start).to(before.dtype).expand_as(before)
        feature = torch.where(reset.unsqueeze(-1), start, before)
        logits, reward = self._heads(feature, batch["action"])
        keep = seq_valid[-W:] & (seq_episode[-W:] == seq_episode[-1:]) if W else seq_valid[:0]
        last = TransformerState(seq_tokens[seq_tokens.shape[0] - W:].detach(), keep,
                                seq_step[seq_step.shape[0] - W:].detach())
        return TransformerPrediction(logits, reward, has_context, reset, last, feature)

    def forward(self, batch: Mapping[str, torch.Tensor], state: TransformerState) -> TransformerOutput:
        """Next-step loss of one chunk: token cross-entropy (summed over G) + reward_weight * 0.5 MSE.

        Scored steps: those with context in their episode and every episode's first step (from the
        learned start feature). A step continuing an episode whose earlier steps were never seen
        (a lane's first chunk starting mid-episode) is not scored.
        """
        pred = self.predict(batch, state)
        loss, metrics = self.next_step_loss(pred, batch)
        return TransformerOutput(loss, pred.last_state, metrics)

    def next_step_loss(self, pred: TransformerPrediction,
                       batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of `forward` and its metrics, from a chunk's prediction."""
        tokens = batch["tokens"]
        scored = pred.has_context | pred.first_step
        n_scored = scored.sum().clamp(min=1)
        nll = TokenDecoder.nll(pred.token_logits, tokens)  # [T, B, G] nats
        loss_tokens = (nll.sum(-1) * scored).sum() / n_scored
        loss_reward = 0.5 * ((pred.reward - batch["reward"].float()).pow(2) * scored).sum() / n_scored
        loss = loss_tokens + self.reward_weight * loss_reward
        with torch.no_grad():
            ctx = pred.has_context
            n_ctx = (ctx.sum() * self.tokens_per_step).clamp(min=1)
            hits = (pred.token_logits.argmax(-1) == tokens).float().sum(-1)
            metrics = {
                "loss_model": loss.detach(),
                "loss_tokens": (nll.sum(-1) * ctx).sum() / n_ctx / LN2,  # bits per token, first steps left out
                "acc_tokens": (hits * ctx).sum() / n_ctx,
                "loss_reward": loss_reward.detach(),
            }
        return loss, metrics

    # ---- forecasts and dreams ------------------------------------------------------------
    def _window(self, tokens: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The last context_steps steps up to each end (inclusive) of one utterance: tokens, step, valid."""
        steps = ends.unsqueeze(1) - (self.context_steps - 1) + torch.arange(self.context_steps, device=ends.device)
        valid = steps >= 0
        steps = steps.clamp(min=0)
        return tokens[steps], steps, valid

    def _prefill(self, tokens: torch.Tensor, step: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Windows [N, C, G] of one utterance each (last slot valid) -> the feature that forecasts the step
        after each window [N, dim], and the cache to imagine on from there (`_step`)."""
        x = self.embed_in(self.encoder(tokens)) + self.position(step % self.context_steps)
        allowed = ~blocked(torch.zeros_like(step), valid, self.span)
        x, cache = self._layers(x, allowed, valid, step[:, -1], None)
        return self.transformer.norm(x[:, -1]), cache

    def _step(self, cache: KVCache, new: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Append one step's tokens [N, G] after the cached ones: the feature that forecasts the step after
        it [N, dim], and the cache moved on by one. Equals `_prefill` of the window ending at the new step
        (a step's forecast depends on the last context_steps steps only), at 1/context_steps of the cost."""
        step = cache.step + 1
        x = self.embed_in(self.encoder(new.unsqueeze(1))) + self.position(step % self.context_steps).unsqueeze(1)
        valid = torch.cat([cache.valid, torch.ones_like(cache.valid[:, :1])], 1)
        x, cache = self._layers(x, valid.unsqueeze(1), valid, step, cache)
        return self.transformer.norm(x[:, 0]), cache

    def _layers(self, x: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor, step: torch.Tensor,
                past: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """The layers over new steps x [N, L, dim] after the `past` ones; the cache of the last span - 1
        steps of all (`valid` [N, S + L]: theirs; `step` [N]: the newest one's index)."""
        keep = self.span - 1
        keys, values = [], []
        for i, layer in enumerate(self.transformer.layers):
            x, k, v = attend(layer, self.heads, x, allowed, None if past is None else (past.keys[i], past.values[i]))
            keys.append(k[:, :, k.shape[2] - keep:])
            values.append(v[:, :, v.shape[2] - keep:])
        return x, KVCache(keys, values, valid[:, valid.shape[1] - keep:], step)

    def _next_logits(self, feature: torch.Tensor, first: bool = False) -> torch.Tensor:
        """The forecast [N, G, K] of the step an imagined step leads to (the null action between them; `first`: the
        episode's first step, no action before it)."""
        return self._heads(feature, self.null_action(feature.shape[0], feature.device, first=first))[0]

    def _dreamt_logits(self, feature: torch.Tensor, first: bool = False) -> torch.Tensor:
        """What a dream draws its next step from [N, G, K]: the heads' forecast, guided where asked (base.guide).
        The trunk reads no condition, so a guided step is the heads told the condition and told none on one feature."""
        n = feature.shape[0]
        lanes = self.guided_lanes(n)
        if lanes is None:
            return self._next_logits(feature, first)
        both = self._heads(torch.cat([feature, feature]), self.null_action(2 * n, feature.device, first, lanes))[0]
        return guided_logits(both, self.conditioning.guidance)

    def _sample(self, logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
        return sample_index(torch.softmax(logits.float() / temperature, -1), generator)

    @torch.no_grad()
    def forecast(
        self,
        tokens: torch.Tensor,
        horizon: int,
        samples: int,
        starts: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        max_windows: int = 1024,
    ) -> torch.Tensor:
        """Predictive token distributions of steps t+1..t+horizon given steps 0..t of one utterance.

        tokens int64 [T, G] (the utterance from its first step); starts: the steps t (default all of
        0..T-2). Returns [N, horizon, G, K]: h=1 is the model's own next-step distribution; h>1 the
        mean over `samples` imagined rollouts, each sampling its steps (at `temperature`) and reading
        them back as context. Cells with t+h >= T are returned too (the caller masks them).
        """
        self.check_tokens(tokens)
        if horizon < 1 or samples < 1 or temperature <= 0:
            raise ValueError(
                f"need horizon >= 1, samples >= 1, temperature > 0; got {horizon}, {samples}, {temperature}"
            )
        T, G = tokens.shape
        device = tokens.device
        if starts is None:
            starts = torch.arange(max(T - 1, 0), device=device)
        starts = starts.to(device=device, dtype=torch.long).reshape(-1)
        if starts.numel() and (starts.min() < 0 or starts.max() >= T):
            raise ValueError(f"forecast starts must lie in [0, {T}) for an utterance of {T} steps")
        out = torch.zeros(starts.numel(), horizon, G, self.n_tokens, device=device)
        per_chunk = max(1, max_windows // samples)
        for a in range(0, starts.numel(), per_chunk):
            ends = starts[a:a + per_chunk]
            n = ends.numel()
            feature, cache = self._prefill(*self._window(tokens, ends))
            logits = self._next_logits(feature)
            out[a:a + n, 0] = torch.softmax(logits, -1)
            if horizon == 1:
                continue
            cache = repeat(cache, samples)
            logits = logits.repeat_interleave(samples, 0)
            for h in range(1, horizon):
                feature, cache = self._step(cache, self._sample(logits, temperature, generator))
                logits = self._next_logits(feature)
                out[a:a + n, h] = torch.softmax(logits, -1).reshape(n, samples, G, -1).mean(1)
        return out

    @torch.no_grad()
    def _imagine_setup(self, prompt: torch.Tensor, n_steps: int, samples: int, temperature: float, seed: int,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Generator]:
        """A dream's checked prompt on the model's device, and its draws' generator (`generator`, else seeded)."""
        self.check_tokens(prompt)
        self.check_imagine(n_steps, samples, temperature)
        device = self.start.device
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        return prompt.to(device=device, dtype=torch.long), generator

    def imagine(self, prompt: torch.Tensor, n_steps: int, samples: int, temperature: float = 1.0, seed: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Dreams: `samples` sampled continuations [samples, n_steps, G] of a prompt [P, G] (an utterance's
        first P steps; P = 0 dreams an utterance from its first step, from the learned empty-context feature).
        The draws come from `generator`, or else from one seeded with `seed`."""
        prompt, generator = self._imagine_setup(prompt, n_steps, samples, temperature, seed, generator)
        device = self.start.device
        G = self.tokens_per_step
        out = torch.zeros(samples, n_steps, G, dtype=torch.long, device=device)
        if n_steps == 0:
            return out
        if prompt.shape[0] == 0:  # the first step from the empty context
            feature = self.transformer.norm(self.start).expand(samples, -1)
            first = self._sample(self._dreamt_logits(feature, first=True), temperature, generator)
            out[:, 0] = first
            C = self.context_steps
            feature, cache = self._prefill(
                torch.cat([torch.zeros(samples, C - 1, G, dtype=torch.long, device=device), first.unsqueeze(1)], 1),
                torch.zeros(samples, C, dtype=torch.long, device=device),
                torch.arange(C, device=device).expand(samples, C) == C - 1,
            )
            done = 1
        else:
            end = torch.full((1,), prompt.shape[0] - 1, dtype=torch.long, device=device)
            feature, cache = self._prefill(*self._window(prompt, end))  # once, then one per sample
            feature, cache, done = feature.expand(samples, -1), repeat(cache, samples), 0
        for i in range(done, n_steps):
            new = self._sample(self._dreamt_logits(feature), temperature, generator)
            out[:, i] = new
            if i + 1 < n_steps:
                feature, cache = self._step(cache, new)
        return out

    @torch.no_grad()
    def mix(self, a: torch.Tensor, b: torch.Tensor, alphas: list[float], n_steps: int, temperature: float = 1.0,
            seed: int = 0) -> torch.Tensor:
        """No latent state but its context: a mixture is a context of A's last steps followed by B's, B's
        share growing with alpha (`splice`)."""
        return torch.cat([self.imagine(splice(a, b, al), n_steps, 1, temperature, seed) for al in alphas])

    @torch.no_grad()
    def step_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The feature that forecasts the step after each step (the last layer's, normed) [T, dim]."""
        self.check_tokens(tokens)
        ends = torch.arange(tokens.shape[0], device=tokens.device)
        return self._prefill(*self._window(tokens, ends))[0]

    @torch.no_grad()
    def eval_sums(self, batch: Mapping[str, torch.Tensor], mask: torch.Tensor, samples: int) -> EvalSums:
        """Its next-step forecast is exact (no latent to sample): nll_h1 is the cross-entropy of each step given
        the steps before it, first steps left out as for every model; loss_tokens is the same number."""
        pred = self.predict(batch, self.initial_state(mask.shape[1], mask.device))
        m = mask & pred.has_context
        bits, hits = logit_bits_and_hits(pred.token_logits, batch["tokens"])
        n = int(m.sum()) * batch["tokens"].shape[-1]
        nll = (float(bits.sum(-1)[m].sum()), n)
        return EvalSums({"nll_h1": nll, "acc_h1": (float(hits.float().sum(-1)[m].sum()), n), "loss_tokens": nll}, None)


def splice(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """A's last (1 - alpha) share, then B's last alpha share, of the shorter prompt's length [*, G]."""
    n = min(len(a), len(b))
    nb = int(round(alpha * n))
    return torch.cat([a[len(a) - (n - nb):], b[len(b) - nb:]], 0) if n else a[:0]
