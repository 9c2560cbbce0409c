"""The causal Transformer world model: learning, causality, resets, carried state, forecasts, dreams."""
from __future__ import annotations

import pytest
import torch

from pydreamer.models.transformer import TransformerState, TransformerWorldModel
from runtime.config import load_config

torch.set_num_threads(1)

K, G = 16, 2


def tiny_model(seed: int = 0, **overrides) -> TransformerWorldModel:
    conf = load_config(["defaults", "audio", "tiny", "transformer"])
    conf.update(transformer_dim=32, transformer_heads=2, transformer_layers=2, transformer_dropout=0.0,
                context_steps=8, hidden_dim=32, embed_dim=32, token_embed_dim=8)
    conf.update(overrides)
    torch.manual_seed(seed)
    return TransformerWorldModel(conf, n_tokens=K, tokens_per_step=G, action_dim=1)


def make_batch(tokens: torch.Tensor, reset: torch.Tensor | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A time-major batch in the replay loader's format around tokens [T, B, G] (null action)."""
    T, B, _ = tokens.shape
    if reset is None:
        reset = torch.zeros(T, B, dtype=torch.bool)
        reset[0] = True
    action = torch.zeros(T, B, 1)
    action[..., 0] = 1.0
    g = torch.Generator().manual_seed(seed)
    return {"tokens": tokens.long(), "action": action, "reward": torch.rand(T, B, generator=g),
            "terminal": torch.zeros(T, B), "reset": reset.bool()}


def random_tokens(T: int, B: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(K, (T, B, G), generator=torch.Generator().manual_seed(seed))


class PatternLanes:
    """A tiny replay store: lanes walk episodes of 6..20 steps in chunks, as the replay reader does.

    Each episode starts at a random token and counts up by one per step (token g is offset by g),
    so every step but an episode's first is determined by the step before it; the reward is the
    parity of the step's first token.
    """

    def __init__(self, B: int, T: int, seed: int = 0):
        self.B, self.T = B, T
        self.g = torch.Generator().manual_seed(seed)
        self.left = [0] * B
        self.cur = [0] * B

    def __next__(self) -> dict[str, torch.Tensor]:
        tokens = torch.zeros(self.T, self.B, G, dtype=torch.long)
        reset = torch.zeros(self.T, self.B, dtype=torch.bool)
        for b in range(self.B):
            for t in range(self.T):
                if self.left[b] == 0:
                    self.left[b] = int(torch.randint(6, 21, (1,), generator=self.g))
                    self.cur[b] = int(torch.randint(K, (1,), generator=self.g))
                    reset[t, b] = True
                else:
                    self.cur[b] = (self.cur[b] + 1) % K
                tokens[t, b] = (self.cur[b] + torch.arange(G)) % K
                self.left[b] -= 1
        batch = make_batch(tokens, reset)
        batch["reward"] = (tokens[..., 0] % 2).float()
        return batch


def test_training_learns_repeating_patterns():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lanes = PatternLanes(B=4, T=12)
    state = model.initial_state(4)
    losses, accs = [], []
    for _ in range(200):
        out = model(next(lanes), state)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        state = out.last_state
        losses.append(float(out.loss.detach()))
        accs.append(float(out.metrics["acc_tokens"]))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.4 * first, (first, last)
    assert sum(accs[-10:]) / 10 > 0.95
    assert set(out.metrics) == {"loss_model", "loss_tokens", "acc_tokens", "loss_reward"}
    # Dreams continue the pattern of their prompt.
    model.eval()
    prompt = (torch.tensor([[5], [6], [7]]) + torch.arange(G)) % K
    dream = model.imagine(prompt, 4, samples=3, temperature=0.5, generator=torch.Generator().manual_seed(0))
    expected = (torch.arange(8, 12).unsqueeze(1) + torch.arange(G)) % K
    assert (dream == expected).float().mean() > 0.9


def test_forecast_is_causal():
    model = tiny_model().eval()
    tokens = random_tokens(14, 1)[:, 0]
    changed = tokens.clone()
    changed[6:] = (changed[6:] + 3) % K
    for t in (2, 5):
        a = model.forecast(tokens, 3, 4, starts=torch.tensor([t]), generator=torch.Generator().manual_seed(1))
        b = model.forecast(changed, 3, 4, starts=torch.tensor([t]), generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
    a = model.forecast(tokens, 1, 1, starts=torch.tensor([6]))
    b = model.forecast(changed, 1, 1, starts=torch.tensor([6]))
    assert not torch.allclose(a, b)  # step 6 itself is part of its own context
    # Steps more than context_steps (8) back are out of sight too.
    far = tokens.clone()
    far[:5] = (far[:5] + 7) % K
    a = model.forecast(tokens, 2, 3, starts=torch.tensor([12]), generator=torch.Generator().manual_seed(2))
    b = model.forecast(far, 2, 3, starts=torch.tensor([12]), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a, b, atol=1e-6)


def test_reset_blocks_attention_across_episodes():
    model = tiny_model().eval()
    T, B = 12, 2
    warm = model(make_batch(random_tokens(T, B, seed=1)), model.initial_state(B)).last_state
    tokens = random_tokens(T, B, seed=2)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[6, 0] = True  # column 0: a new episode at step 6; column 1 continues its episode
    base = model.predict(make_batch(tokens, reset), warm)
    changed = tokens.clone()
    changed[:6] = (changed[:6] + 5) % K
    other = model.predict(make_batch(changed, reset), warm)
    assert torch.allclose(base.token_logits[6:, 0], other.token_logits[6:, 0], atol=1e-5)
    assert not torch.allclose(base.token_logits[6:, 1], other.token_logits[6:, 1], atol=1e-5)
    # ... and the carried window (an older episode in column 0) is not seen after the reset.
    fresh = model.predict(make_batch(tokens, reset), model.initial_state(B))
    assert torch.allclose(base.token_logits[6:, 0], fresh.token_logits[6:, 0], atol=1e-5)
    assert base.first_step[6, 0] and not base.has_context[6, 0] and base.has_context[7:, 0].all()
    # The carried state keeps only the episode that goes on.
    assert base.last_state.valid[:, 0].sum() == 6 and base.last_state.valid[:, 1].all()
    assert base.last_state.step[-1, 0] == 5
    # A lane starting mid-episode with nothing carried: its first step is neither scored nor first.
    start = model.predict(make_batch(tokens, torch.zeros(T, B, dtype=torch.bool)), model.initial_state(B))
    assert not start.has_context[0].any() and not start.first_step[0].any() and start.has_context[1:].all()


@pytest.mark.parametrize("context_steps", [24, 6])
def test_carried_state_gives_the_same_predictions_as_one_chunk(context_steps):
    """Exact when the sequence fits in the context, and also when it does not (chunks longer than it)."""
    model = tiny_model(context_steps=context_steps).eval()
    T, B = 20, 3
    tokens = random_tokens(T, B, seed=3)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0] = True
    reset[11, 2] = True
    batch = make_batch(tokens, reset)
    whole = model.predict(batch, model.initial_state(B))
    state, parts = model.initial_state(B), []
    for a, b in ((0, 8), (8, 15), (15, 20)):
        parts.append(model.predict({k: v[a:b] for k, v in batch.items()}, state))
        state = parts[-1].last_state
    assert isinstance(state, TransformerState) and state.tokens.shape == (context_steps - 1, B, G)
    assert torch.allclose(torch.cat([p.token_logits for p in parts]), whole.token_logits, atol=1e-5)
    assert torch.allclose(torch.cat([p.reward for p in parts]), whole.reward, atol=1e-5)
    assert torch.equal(torch.cat([p.has_context for p in parts]), whole.has_context)
    assert torch.isfinite(model(batch, model.initial_state(B)).loss)


def test_forecast_shapes_normalisation_and_horizon_one():
    model = tiny_model().eval()
    T, H, S = 11, 3, 5
    tokens = random_tokens(T, 1, seed=4)[:, 0]
    probs = model.forecast(tokens, H, S, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (T - 1, H, G, K)
    assert torch.allclose(probs.sum(-1), torch.ones(T - 1, H, G), atol=1e-5)
    # h=1 is the model's own next-step distribution, as in training (one column, one episode).
    logits = model.predict(make_batch(tokens.unsqueeze(1)), model.initial_state(1)).token_logits[1:, 0]
    assert torch.allclose(probs[:, 0], torch.softmax(logits, -1), atol=1e-5)
    # The same seed gives the same rollouts; another seed other ones (h>1 only).
    again = model.forecast(tokens, H, S, generator=torch.Generator().manual_seed(0))
    assert torch.equal(probs, again)
    other = model.forecast(tokens, H, S, generator=torch.Generator().manual_seed(7))
    assert torch.equal(probs[:, 0], other[:, 0]) and not torch.allclose(probs[:, 1:], other[:, 1:])
    # Chunking the starts changes nothing at h=1; chosen starts pick rows.
    small = model.forecast(tokens, H, S, generator=torch.Generator().manual_seed(0), max_windows=S * 2)
    assert torch.allclose(small[:, 0], probs[:, 0], atol=1e-6)
    picked = model.forecast(tokens, 1, 1, starts=torch.tensor([0, 9]))
    assert torch.allclose(picked[:, 0], probs[[0, 9], 0], atol=1e-6)


@pytest.mark.parametrize("context_steps, layers", [(8, 2), (9, 2), (7, 3), (5, 1)])
def test_imagining_on_the_key_value_cache_computes_what_training_does(context_steps, layers):
    """Teacher-forced through an utterance 4x longer than the context, each cached step forecasts the
    next step exactly as the training pass (all steps at once, attention masked) does."""
    model = tiny_model(seed=3, context_steps=context_steps, transformer_layers=layers).eval()
    T = 4 * context_steps + 3
    tokens = random_tokens(T, 1, seed=6)[:, 0]
    expected = model.predict(make_batch(tokens.unsqueeze(1)), model.initial_state(1)).token_logits[:, 0]
    with torch.no_grad():
        feature, cache = model._prefill(*model._window(tokens, torch.tensor([0])))
        for t in range(1, T):
            assert torch.allclose(model._next_logits(feature)[0], expected[t], atol=1e-5), t
            feature, cache = model._step(cache, tokens[t].unsqueeze(0))
    assert int(cache.step[0]) == T - 1 and cache.keys[0].shape[2] == model.span - 1


def test_imagine_shapes_and_seeds():
    model = tiny_model().eval()
    for P in (0, 3, 12):
        prompt = random_tokens(P, 1, seed=5)[:, 0]
        dream = model.imagine(prompt, 6, samples=4, generator=torch.Generator().manual_seed(0))
        assert dream.shape == (4, 6, G) and dream.dtype == torch.int64
        assert dream.min() >= 0 and dream.max() < K
        assert torch.equal(dream, model.imagine(prompt, 6, samples=4, generator=torch.Generator().manual_seed(0)))
    assert model.imagine(prompt, 0, samples=2).shape == (2, 0, G)


def test_bad_token_ids_name_the_range():
    model = tiny_model()
    tokens = random_tokens(6, 2)
    tokens[3, 1, 0] = K
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(make_batch(tokens), model.initial_state(2))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.forecast(torch.full((5, G), -1), 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.imagine(torch.full((2, G), K), 2, 2)


def test_parameter_count_and_conf_checks():
    model = tiny_model()
    assert model.parameter_count() == sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(ValueError, match="multiple"):
        tiny_model(transformer_dim=30, transformer_heads=4)
