"""World model on fake batches: shapes, gradients, reset, learning, bad input, checkpoints."""
from __future__ import annotations

import math

import pytest
import torch

from pydreamer.models import Dreamer, NonFiniteLoss, State
from pydreamer.models.checkpoint import load_checkpoint, restore, save_checkpoint
from runtime.config import load_config

torch.set_num_threads(1)


def tiny_conf(**overrides):
    conf = load_config(["defaults", "tiny"])
    conf.update(overrides)
    return conf


def fake_batch(T=8, B=3, G=2, K=16, A=1, pattern=False, seed=0):
    """A time-major batch in the replay loader's format. pattern=True: tokens cycle 0,1,2,... (learnable)."""
    g = torch.Generator().manual_seed(seed)
    if pattern:
        start = torch.randint(K, (1, B, 1), generator=g)
        tokens = (start + torch.arange(T).view(T, 1, 1) + torch.arange(G).view(1, 1, G)) % K
    else:
        tokens = torch.randint(K, (T, B, G), generator=g)
    action = torch.zeros(T, B, A)
    action[..., 0] = 1.0
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0] = True
    return {
        "tokens": tokens.long(),
        "action": action,
        "reward": torch.rand(T, B, generator=g),
        "terminal": torch.zeros(T, B),
        "reset": reset,
    }


def test_forward_shapes_and_loss_finite():
    conf = tiny_conf()
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1)
    batch = fake_batch()
    out = model.wm(batch, model.initial_state(3))
    assert out.token_logits.shape == (8, 3, 2, 16)
    assert out.states.deter.shape == (8, 3, conf.deter_dim)
    assert out.states.stoch.shape == (8, 3, conf.stoch_dim * conf.stoch_discrete)
    assert torch.isfinite(out.loss)
    # a random model is near the uniform code: log2(16) = 4 bits per token
    assert abs(out.metrics["loss_tokens"].item() - 4.0) < 1.0
    # stochastic state is one-hot per variable
    z = out.states.stoch.detach().reshape(8, 3, conf.stoch_dim, conf.stoch_discrete)
    assert torch.allclose(z.sum(-1), torch.ones(8, 3, conf.stoch_dim))


def test_straight_through_gradients_reach_encoder_and_posterior():
    model = Dreamer(tiny_conf(free_nats=0.0), n_tokens=16, tokens_per_step=2, action_dim=1)  # no free KL: the prior learns
    out = model.wm(fake_batch(), model.initial_state(3))
    out.loss.backward()
    for part in (model.wm.encoder, model.wm.rssm.post_net, model.wm.rssm.prior_net, model.wm.rssm.gru):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_reset_zeroes_the_carried_state():
    model = Dreamer(tiny_conf(), n_tokens=16, tokens_per_step=2, action_dim=1).eval()
    batch = fake_batch(T=4, B=2)
    rssm = model.wm.rssm
    embed = model.wm.encoder(batch["tokens"])
    carried = State(torch.randn(2, rssm.deter_dim), torch.ones(2, rssm.stoch_size))
    with torch.no_grad():
        s1, *_ = rssm.observe(embed, batch["action"], batch["reset"], carried)
        s2, *_ = rssm.observe(embed, batch["action"], batch["reset"], rssm.initial_state(2))
    assert torch.allclose(s1.deter[0], s2.deter[0])
    no_reset = torch.zeros_like(batch["reset"])
    with torch.no_grad():
        s3, *_ = rssm.observe(embed, batch["action"], no_reset, carried)
    assert not torch.allclose(s3.deter[0], s2.deter[0])


def test_bad_tokens_are_a_clear_error():
    model = Dreamer(tiny_conf(), n_tokens=16, tokens_per_step=2, action_dim=1)
    batch = fake_batch(K=32)
    batch["tokens"][0, 0, 0] = 31
    with pytest.raises(ValueError, match="codebook size"):
        model.wm(batch, model.initial_state(3))
    with pytest.raises(ValueError, match="tokens per step"):
        model.wm(fake_batch(G=3), model.initial_state(3))


@pytest.mark.parametrize("forecast_head", [True, False])
def test_training_lowers_token_loss_and_horizon1_beats_unigram(forecast_head):
    torch.manual_seed(0)
    conf = tiny_conf(adam_lr=3e-3, hidden_dim=64, deter_dim=64, embed_dim=64, forecast_head=forecast_head)
    K = 16
    model = Dreamer(conf, n_tokens=K, tokens_per_step=2, action_dim=1)
    opts = model.make_optimizers(conf)
    state = model.initial_state(8)
    first = None
    for step in range(1, 151):
        batch = fake_batch(T=12, B=8, K=K, pattern=True, seed=step)
        state = model.initial_state(8)
        state, metrics = model.training_step(batch, state, opts, step)
        first = first or {k: metrics[k] for k in ("loss_tokens", "loss_forecast")}
    assert metrics["loss_tokens"] < 0.5 * first["loss_tokens"]
    if forecast_head:
        assert metrics["loss_forecast"] < 0.5 * first["loss_forecast"]
    batch = fake_batch(T=12, B=8, K=K, pattern=True, seed=999)
    with torch.no_grad():
        out = model.wm(batch, model.initial_state(8))
        probs = model.wm.horizon1_probs(out.states, out.prior_logits, n_samples=4)
    p = probs.gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1)[1:]  # skip the reset step
    nll_h1 = float((-torch.log2(p.clamp_min(1e-9))).mean())
    assert nll_h1 < 0.5 * math.log2(K), nll_h1  # the cycle is predictable; unigram is log2(K) bits
    if forecast_head:  # read off the deterministic state: no draw to average over, the same on every call
        with torch.no_grad():
            again = model.wm.horizon1_probs(out.states, out.prior_logits, n_samples=1)
        assert torch.allclose(probs, again)


def test_non_finite_loss_stops_before_the_weights_change():
    conf = tiny_conf()
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1)
    opts = model.make_optimizers(conf)
    with torch.no_grad():
        model.wm.decoder.net[-1].bias.fill_(float("nan"))
    before = model.wm.encoder.embedding.weight.clone()
    with pytest.raises(NonFiniteLoss, match="step 7"):
        model.training_step(fake_batch(), model.initial_state(3), opts, step=7)
    assert torch.equal(before, model.wm.encoder.embedding.weight)


def test_checkpoint_round_trip(tmp_path):
    conf = tiny_conf()
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=2)
    opts = model.make_optimizers(conf)
    model.training_step(fake_batch(A=2), model.initial_state(3), opts, step=1)
    path = tmp_path / "checkpoints" / "latest.pt"
    save_checkpoint(path, model, opts, step=42)
    assert not list(path.parent.glob(".*tmp"))
    other = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=2)
    other_opts = other.make_optimizers(conf)
    assert restore(load_checkpoint(path), other, other_opts) == 42
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other_opts["model"].state_dict()["state"]
    wrong = Dreamer(conf, n_tokens=32, tokens_per_step=2, action_dim=2)
    with pytest.raises(ValueError, match="trained for"):
        restore(load_checkpoint(path), wrong)


def test_bf16_autocast_step_runs():
    """The GPU path (bf16 autocast) exercised on CPU: finite losses, float32 weights."""
    conf = tiny_conf()
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=3)
    opts = model.make_optimizers(conf)
    state, metrics = model.training_step(fake_batch(A=3), model.initial_state(3), opts, step=1, amp=True)
    assert all(math.isfinite(v) for v in metrics.values())
    assert next(model.parameters()).dtype == torch.float32


def test_autoregressive_token_head_learns_what_ties_a_step_together():
    """Tokens 1 and 0 of a step are equal, token 0 a fair coin: independent heads pay 2 bits per
    step, a head that sees the step's earlier token 1 bit; its draws keep the tie."""
    from pydreamer.models.decoders import TokenDecoder

    torch.manual_seed(0)
    first = torch.randint(2, (512,))
    tokens = torch.stack([first, first + 2], -1)  # position 1 repeats position 0 (codes 2, 3)
    features = torch.zeros(512, 4)
    bits = {}
    for head in ("independent", "autoregressive"):
        dec = TokenDecoder(4, 4, 2, hidden_dim=16, head=head)
        opt = torch.optim.Adam(dec.parameters(), lr=0.03)
        for _ in range(150):
            loss = TokenDecoder.nll(dec(features, tokens), tokens).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        bits[head] = float(loss.detach()) / math.log(2)
        with torch.no_grad():
            probs, drawn = dec.sample(features[:64])
            assert probs.shape == (64, 2, 4) and drawn.shape == (64, 2)
            assert torch.allclose(probs.sum(-1), torch.ones(64, 2))
            if head == "autoregressive":  # sample() gives the same probabilities as teacher forcing on its draws
                assert torch.allclose(probs, torch.softmax(dec(features[:64], drawn), -1), atol=1e-5)
                assert (drawn[:, 1] == drawn[:, 0] + 2).float().mean() > 0.95
    assert bits["independent"] == pytest.approx(2.0, abs=0.1)
    assert bits["autoregressive"] == pytest.approx(1.0, abs=0.1)
    with pytest.raises(ValueError, match="needs the step's tokens"):
        TokenDecoder(4, 4, 2, head="autoregressive")(features)


def test_autoregressive_world_model_trains_and_forecasts():
    conf = tiny_conf(token_head="autoregressive")
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1)
    batch = fake_batch(pattern=True)
    out = model.wm(batch, model.initial_state(3))
    assert torch.isfinite(out.loss) and out.token_logits.shape == (8, 3, 2, 16)
    probs = model.wm.forecast(batch["tokens"][:, 0], horizon=3, samples=2, starts=torch.tensor([0, 2]))
    assert probs.shape == (2, 3, 2, 16) and torch.allclose(probs.sum(-1), torch.ones(2, 3, 2))


def test_overshoot_trains_the_forecast_head_on_imagined_states():
    """The cycle 0,1,2,... is predictable k steps ahead: training on imagined states lowers the
    k-step loss, and its gradient reaches the dynamics (the GRU), not only the head."""
    torch.manual_seed(0)
    conf = tiny_conf(adam_lr=3e-3, hidden_dim=64, deter_dim=64, embed_dim=64, overshoot_steps=4, overshoot_starts=16)
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1)
    batch = fake_batch(T=12, B=8, K=16, pattern=True, seed=1)
    out = model.wm(batch, model.initial_state(8))
    assert out.metrics["loss_overshoot"] > 0
    out.loss.backward()
    assert model.wm.rssm.gru.linear.weight.grad.abs().sum() > 0
    opts = model.make_optimizers(conf)
    first = None
    for step in range(1, 121):
        _, metrics = model.training_step(fake_batch(T=12, B=8, K=16, pattern=True, seed=step), model.initial_state(8),
                                         opts, step)
        first = first or metrics["loss_overshoot"]
    assert metrics["loss_overshoot"] < 0.5 * first
    off = Dreamer(tiny_conf(overshoot_steps=0), n_tokens=16, tokens_per_step=2, action_dim=1)
    assert float(off.wm(batch, off.initial_state(8)).metrics["loss_overshoot"]) == 0.0


def test_one_hot_samples_follow_the_categorical_and_pass_its_gradient():
    """The Gumbel-max draw is the categorical of the logits (chi-square), and the straight-through
    sample's gradient is the gradient of the probabilities."""
    from scipy.stats import chisquare

    from pydreamer.models.functions import sample_one_hot

    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    logits = p.log().expand(40000, 5).clone().requires_grad_(True)
    sample = sample_one_hot(logits)
    counts = sample.detach().sum(0)
    assert torch.allclose(sample.detach().sum(-1), torch.ones(40000)) and set(sample.detach().round().unique().tolist()) == {0.0, 1.0}
    assert chisquare(counts.numpy(), (p * 40000).numpy()).pvalue > 1e-3
    weights = torch.arange(5.0)
    (sample * weights).sum().backward()
    probs = torch.softmax(logits.detach()[0], -1)
    expected = probs * (weights - (probs * weights).sum())  # d E[w] / d logits
    assert torch.allclose(logits.grad[0], expected, atol=1e-6)


def test_index_samples_follow_the_categorical_and_the_generator():
    """The inverse-CDF draw is the categorical of the probabilities (chi-square), unnormalized ones
    included; a zero-probability index is never drawn; a seeded generator repeats its draws."""
    from scipy.stats import chisquare

    from pydreamer.models.functions import sample_index

    p = torch.tensor([0.5, 0.25, 0.0, 0.15, 0.07, 0.03])
    g = torch.Generator().manual_seed(0)
    draws = sample_index((p * 3).expand(2, 20000, 6), g)
    assert draws.shape == (2, 20000) and draws.dtype == torch.int64
    counts = torch.bincount(draws.reshape(-1), minlength=6).float()
    assert counts[2] == 0
    keep = p > 0
    assert chisquare(counts[keep].numpy(), (p[keep] * 40000).numpy()).pvalue > 1e-3
    again = sample_index((p * 3).expand(2, 20000, 6), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_token_imagination_goes_on_from_the_tokens_it_made():
    """imagination: tokens draws each step from the h = 1 forecast and reads it back: a model trained on a
    counting cycle dreams the cycle on from a prompt, and its h = 1 forecast is the latent mode's own."""
    torch.manual_seed(0)
    K = 16
    conf = tiny_conf(adam_lr=3e-3, hidden_dim=64, deter_dim=64, embed_dim=64)
    model = Dreamer(conf, n_tokens=K, tokens_per_step=2, action_dim=1)
    opts = model.make_optimizers(conf)
    for step in range(1, 151):
        model.training_step(fake_batch(T=12, B=8, K=K, pattern=True, seed=step), model.initial_state(8), opts, step)
    model.eval()
    prompt = fake_batch(T=6, B=1, K=K, pattern=True, seed=7)["tokens"][:, 0]  # [6, G]
    wm = model.wm
    assert wm.imagine_by("tokens") == "tokens"
    dreams = wm.imagine(prompt, 8, 4, temperature=0.5, seed=1)
    assert dreams.shape == (4, 8, 2)
    assert torch.equal(dreams, wm.imagine(prompt, 8, 4, temperature=0.5, seed=1))  # a pure function of the seed
    expected = (prompt[-1, 0] + 1 + torch.arange(8)) % K  # the cycle on from the prompt's last step
    assert float((dreams[:, :, 0] == expected).float().mean()) > 0.8
    starts = torch.tensor([2, 4])
    tokens_mode = wm.forecast(prompt, 3, 4, starts, generator=torch.Generator().manual_seed(0))
    wm.imagine_by("latent")
    latent_mode = wm.forecast(prompt, 3, 4, starts, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tokens_mode[:, 0], latent_mode[:, 0])  # h = 1: the same forecast head on the same state
    assert tokens_mode.shape == latent_mode.shape == (2, 3, 2, K)


def test_an_unknown_imagination_is_refused():
    with pytest.raises(ValueError, match="imagination"):
        Dreamer(tiny_conf(), n_tokens=16, tokens_per_step=2, action_dim=1).wm.imagine_by("dreams")


def test_the_transformer_has_one_imagination():
    conf = tiny_conf(world_model="transformer")
    wm = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1).wm
    assert wm.imagine_by("latent") == "tokens" and wm.imagination == "tokens"
