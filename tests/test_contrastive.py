"""The contrastive objective: InfoNCE by hand, probes that do not train the latent, a tiny run, evaluation, dreams."""
from __future__ import annotations

import math

import mlflow
import pytest
import torch
import torch.nn.functional as F

from pydreamer.models import Dreamer
from pydreamer.models.contrastive import ContrastiveHead, info_nce, same_tokens
from runtime.config import ConfigError, load_config
from tests.test_learner import learner_args, replay  # noqa: F401 (the toy replay store fixture)
from tests.test_models import fake_batch, tiny_conf

torch.set_num_threads(1)


def test_info_nce_equals_the_hand_computed_value():
    # one query, three keys, positive = key 1, temperature 0.5: logits = (1.2, 2.0, 0.0)
    query = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    loss, hit = info_nce(query, keys, torch.tensor([1]), 0.5)
    by_hand = math.log(math.exp(1.2) + math.exp(2.0) + math.exp(0.0)) - 2.0
    assert loss.item() == pytest.approx(by_hand, abs=1e-6) and hit.item()
    # two orthogonal steps, each its own positive, temperature 1: log(1 + e^-1) per row
    loss, hit = info_nce(torch.eye(2), torch.eye(2), torch.arange(2), 1.0)
    assert torch.allclose(loss, torch.full((2,), math.log(1 + math.exp(-1))))
    assert hit.all()
    # a key with the positive's very tokens is no negative: the loss is the one without that key
    keys = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    tokens = torch.tensor([[3, 4], [5, 6], [7, 8], [5, 6]])  # key 3 repeats the positive's step
    head = ContrastiveHead(2, 2, 2, temperature=0.5)
    loss, _ = info_nce(query, keys, torch.tensor([1]), 0.5, same_tokens(tokens, torch.tensor([1])))
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)
    assert same_tokens(tokens, torch.tensor([1])).tolist() == [[False, True, False, True]]
    assert head.temperature.item() == pytest.approx(0.5)


def test_info_nce_falls_when_features_match_their_embeddings():
    torch.manual_seed(0)
    head = ContrastiveHead(8, 8, 8, temperature=0.1)
    with torch.no_grad():  # identity projections: a feature equal to its step's embedding is a perfect match
        for lin in (head.query, head.key):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
    embed = torch.randn(32, 8)
    target = torch.arange(32)
    matched, _ = head.loss(embed, head.keys(embed), target)
    shuffled, _ = head.loss(embed[torch.randperm(32)], head.keys(embed), target)
    noisy, _ = head.loss(embed + 0.5 * torch.randn(32, 8), head.keys(embed), target)
    assert matched.mean() < noisy.mean() < shuffled.mean()
    assert head.temperature.item() == pytest.approx(0.1)
    assert F.normalize(head.keys(embed), dim=-1).norm(dim=-1).allclose(torch.ones(32))


def test_the_contrastive_section_and_its_checks():
    assert load_config(["defaults", "audio", "tiny"])["wm_objective"] == "reconstruction"
    assert load_config(["defaults", "audio", "tiny", "contrastive"])["wm_objective"] == "contrastive"
    with pytest.raises(ConfigError, match="wm_objective"):
        load_config(["defaults"], ["--wm_objective", "infonce"])
    with pytest.raises(ConfigError, match="Transformer"):
        load_config(["defaults", "contrastive", "transformer"])
    with pytest.raises(ConfigError, match="contrastive_temperature"):
        load_config(["defaults", "contrastive"], ["--contrastive_temperature", "0.001"])


def _grads(module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("objective", ["reconstruction", "contrastive"])
def test_token_heads_are_probes_only_in_the_contrastive_objective(objective):
    """With every loss but the token heads' weighted 0, only a reconstruction model's latent gets gradients."""
    torch.manual_seed(0)
    conf = tiny_conf(wm_objective=objective, kl_weight=0.0, reward_weight=0.0, terminal_weight=0.0,
                     contrastive_weight=0.0, overshoot_steps=3, overshoot_starts=8)
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1)
    out = model.wm(fake_batch(T=8, B=3), model.initial_state(3))
    out.loss.backward()
    wm = model.wm
    assert _grads(wm.decoder) > 0 and _grads(wm.forecast_head) > 0  # the probes learn in both
    latent = _grads(wm.encoder) + _grads(wm.rssm)
    assert (latent == 0) == (objective == "contrastive")


def test_contrastive_loss_trains_the_latent_with_multi_step_terms():
    torch.manual_seed(0)
    conf = tiny_conf(wm_objective="contrastive", contrastive_steps=3, overshoot_starts=8)
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1)
    out = model.wm(fake_batch(T=8, B=3), model.initial_state(3))
    m = out.metrics
    for key in ("loss_contrastive", "loss_contrastive_multi", "acc_contrastive", "contrastive_temperature",
                "loss_tokens", "loss_forecast"):
        assert torch.isfinite(m[key]), key
    assert m["loss_contrastive_multi"] > 0
    out.loss.backward()
    assert _grads(model.wm.encoder) > 0 and _grads(model.wm.rssm.prior_net) > 0
    assert model.wm.contrastive.log_temperature.grad is not None  # the temperature is learned
    off = Dreamer(tiny_conf(wm_objective="contrastive", contrastive_steps=0), 16, 2, 1)
    assert off.wm(fake_batch(T=8, B=3), off.initial_state(3)).metrics["loss_contrastive_multi"] == 0


def test_contrastive_learns_on_a_fixed_batch():
    torch.manual_seed(0)
    conf = tiny_conf(wm_objective="contrastive", adam_lr=1e-3, overshoot_starts=8)
    model = Dreamer(conf, n_tokens=16, tokens_per_step=2, action_dim=1)
    opt = model.make_optimizers(conf)
    batch = fake_batch(T=8, B=4)
    first = None
    for step in range(1, 61):
        _, metrics = model.training_step(batch, model.initial_state(4), opt, step)
        first = first or metrics
    assert metrics["loss_contrastive"] < first["loss_contrastive"] - 0.5
    assert metrics["loss_tokens"] < first["loss_tokens"]  # the probe reads more off a latent that learns


def test_a_tiny_contrastive_run_reports_its_probes_eval_nll(replay, monkeypatch):  # noqa: F811
    from pydreamer.train import main

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(learner_args(replay) + ["--n_steps", "20", "--wm_objective", "contrastive"]) == 0
    run_id = mlflow.last_active_run().info.run_id
    mlflow.end_run()
    run = mlflow.get_run(run_id)
    assert run.data.tags["objective"] == "contrastive" and run.data.params["wm_objective"] == "contrastive"
    for key in ("eval/nll_h1", "eval/acc_h1", "eval/loss_tokens", "train/loss_contrastive", "train/loss_tokens"):
        assert math.isfinite(run.data.metrics[key]), key


def test_evaluate_and_dreams_work_on_a_contrastive_run(tmp_path, capsys):
    from pydreamer.evaluate import main as evaluate
    from pydreamer.dreams.imagination import dream_tokens
    from pydreamer.models.checkpoint import save_checkpoint
    from pydreamer.replay_layout import checkpoint_path
    from runtime.tracking import start_or_resume_run
    from tests.conftest import make_token_corpus

    data = make_token_corpus(tmp_path / "tok", {"train": 6, "val": 2, "test": 2})
    conf = load_config(["defaults", "audio", "tiny", "contrastive"],
                       ["--data_dir", str(data), "--mlflow_dir", str(tmp_path / "mlruns"), "--codebook_size", "32"])
    replay_dir = tmp_path / "replay"
    with start_or_resume_run(conf, tags={"replay_dir": str(replay_dir)}) as run:
        pass
    model = Dreamer(conf, 32, 4, 1)
    save_checkpoint(checkpoint_path(replay_dir), model, None, 7)
    # the run's params rebuild the contrastive model (its projection and temperature load)
    assert evaluate(["--mlflow_dir", str(tmp_path / "mlruns"), "--horizons", "2", "--samples", "2",
                     "--run", run.info.run_id]) == 0
    assert "test/nll_h1" in mlflow.get_run(run.info.run_id).data.metrics
    tokens = dream_tokens(model, None, n_steps=5, samples=2)
    assert tokens.shape == (2, 5, 4) and tokens.max() < 32
