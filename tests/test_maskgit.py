"""The masked parallel block decoder (world_model: maskgit): its schedule, learning, forecasts and dreams."""
from __future__ import annotations

import pytest
import torch

from pydreamer.models.dreamer import WORLD_MODELS, Dreamer
from pydreamer.models.maskgit import MaskedBlock, MaskGITWorldModel, unmasking_schedule
from runtime.config import ConfigError, load_config
from tests.test_transformer import K, G, PatternLanes, make_batch, random_tokens

torch.set_num_threads(1)


def tiny_model(seed: int = 0, **overrides) -> MaskGITWorldModel:
    conf = load_config(["defaults", "audio", "tiny", "maskgit"])
    conf.update(transformer_dim=32, transformer_heads=2, transformer_layers=1, transformer_dropout=0.0,
                context_steps=8, hidden_dim=32, embed_dim=32, token_embed_dim=8, maskgit_block=4, maskgit_layers=1,
                maskgit_iterations=4, maskgit_starts=0)
    conf.update(overrides)
    torch.manual_seed(seed)
    return MaskGITWorldModel(conf, n_tokens=K, tokens_per_step=G, action_dim=1)


@pytest.mark.parametrize("n, iterations", [(64, 12), (8, 4), (3, 12), (1, 1), (100, 3)])
def test_the_schedule_unmasks_every_token_within_the_iterations(n, iterations):
    left = unmasking_schedule(n, iterations)
    assert len(left) <= iterations and left[-1] == 0
    assert all(a > b for a, b in zip([n] + left, left))  # at least one token unmasked per iteration


def test_the_schedule_follows_the_cosine():
    assert unmasking_schedule(64, 12)[:3] == [63, 61, 59]  # floor(64 cos(pi/2 i/12)): slow first, fast last
    with pytest.raises(ValueError):
        unmasking_schedule(0, 12)


def test_decoding_leaves_no_token_masked_and_is_seeded():
    torch.manual_seed(0)
    block = MaskedBlock(K, G, 5, 12, 16, 2, 1, 0.0).eval()
    context = torch.randn(3, 12)
    calls = []
    block.register_forward_hook(lambda m, args, out: calls.append(int((args[1] == m.mask_id).sum())))
    a = block.decode(context, 6, 1.0, torch.Generator().manual_seed(1))
    b = block.decode(context, 6, 1.0, torch.Generator().manual_seed(1))
    assert a.shape == (3, 5, G) and ((a >= 0) & (a < K)).all() and torch.equal(a, b)
    assert len(calls) == 2 * len(unmasking_schedule(5 * G, 6))
    assert calls[0] == 3 * 5 * G  # starts fully masked, fewer masked at every iteration
    assert all(x > y for x, y in zip(calls[:len(calls) // 2], calls[1:len(calls) // 2]))


def test_it_is_a_registered_world_model_and_refuses_the_contrastive_objective():
    assert WORLD_MODELS["maskgit"] is MaskGITWorldModel
    dreamer = Dreamer(load_config(["defaults", "tiny", "maskgit"], ["--context_steps", "8"]), 16, G, 1)
    assert dreamer.model_args()["conf"]["maskgit_block"] == 16 and dreamer.ac is None
    with pytest.raises(ConfigError, match="wm_objective"):
        load_config(["defaults", "tiny", "maskgit", "contrastive"])


def test_training_lowers_the_loss_and_learns_the_pattern():
    model = tiny_model(maskgit_starts=32)
    lanes = PatternLanes(B=8, T=12, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    state = model.initial_state(8)
    losses = []
    for _ in range(400):
        out = model(next(lanes), state)
        state = out.last_state
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.metrics["loss_block"]))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    # The pattern counts up by one per step: the fully masked block forecasts it several steps ahead.
    model.eval()
    tokens = torch.stack([(torch.arange(10) + 3 + g) % K for g in range(G)], -1)
    probs = model.forecast(tokens, horizon=3, samples=1, starts=torch.tensor([4]))
    assert probs.shape == (1, 3, G, K)
    assert (probs[0].argmax(-1) == tokens[5:8]).float().mean() > 0.8


def test_forecast_within_the_block_is_the_masked_block_and_past_it_is_seeded():
    model = tiny_model().eval()
    tokens = random_tokens(12, 1, seed=2)[:, 0]
    starts = torch.tensor([0, 5, 10])
    near = model.forecast(tokens, horizon=4, samples=1, starts=starts)
    context = model.step_features(tokens)[starts]
    assert torch.allclose(near, torch.softmax(model.block.masked_logits(context), -1), atol=1e-5)
    far = model.forecast(tokens, horizon=10, samples=3, starts=starts, generator=torch.Generator().manual_seed(0))
    again = model.forecast(tokens, horizon=10, samples=3, starts=starts, generator=torch.Generator().manual_seed(0))
    assert far.shape == (3, 10, G, K) and torch.allclose(far, again) and torch.allclose(far[:, :4], near, atol=1e-5)
    assert torch.allclose(far.sum(-1), torch.ones(3, 10, G), atol=1e-4)


def test_eval_scores_the_fully_masked_block_on_the_steps_with_context():
    model = tiny_model().eval()
    tokens = random_tokens(10, 2, seed=3)
    sums = model.eval_sums(make_batch(tokens), torch.ones(10, 2, dtype=torch.bool), samples=1).sums
    assert sums["nll_h1"][1] == 9 * 2 * G and sums["nll_h1_next_step_head"][1] == 9 * 2 * G
    by_forecast = sum(-torch.log2(model.forecast(tokens[:, b], 1, 1, torch.arange(9))[:, 0]
                                  .gather(-1, tokens[1:, b].unsqueeze(-1))).sum() for b in range(2))
    assert sums["nll_h1"][0] == pytest.approx(float(by_forecast), rel=1e-4)


@pytest.mark.parametrize("prompt_steps", [0, 5])
def test_dreams_go_block_by_block_and_are_seeded(prompt_steps):
    model = tiny_model().eval()
    prompt = random_tokens(prompt_steps, 1, seed=4)[:, 0]
    a = model.imagine(prompt, n_steps=10, samples=2, temperature=0.8, seed=7)
    assert a.shape == (2, 10, G) and torch.equal(a, model.imagine(prompt, 10, 2, 0.8, seed=7))
    assert model.imagine(prompt, 0, 2).shape == (2, 0, G)
    mixed = model.mix(random_tokens(6, 1, 5)[:, 0], random_tokens(6, 1, 6)[:, 0], [0.0, 0.5, 1.0], 6)
    assert mixed.shape == (3, 6, G)
