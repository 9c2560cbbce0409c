"""Learner: metrics, evaluation, checkpoints, resume into the same MLflow run, NaN stop."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from pydreamer.generator import run_generator
from pydreamer.models import NonFiniteLoss
from pydreamer.models.checkpoint import load_checkpoint
from pydreamer.learner.eval_metrics import discounted_returns, entropy_bits, load_eval_episodes, unigram_pos_bits
from pydreamer.learner.loop import Learner
from pydreamer.replay_layout import checkpoint_path
from pydreamer.train import main
from runtime.config import load_config

torch.set_num_threads(1)


def toy_conf(tmp_path, **kw):
    conf = load_config(["defaults", "tiny"])
    conf.update(env_id="ToyTokens-v0", mlflow_dir=str(tmp_path / "mlruns"), replay_dir=str(tmp_path / "replay"),
                log_interval=10, eval_interval=20, save_interval=20, eval_episodes=4, data_workers=0,
                batch_size=4, batch_length=8, learner_wait_s=5.0)
    conf.update(kw)
    return conf


def learner_args(conf) -> list[str]:
    """The command line of a learner on the toy store of `toy_conf` (n_steps left to the caller)."""
    return ["--configs", "defaults", "tiny", "--env_id", "ToyTokens-v0", "--mlflow_dir", conf.mlflow_dir,
            "--replay_dir", conf.replay_dir, "--log_interval", "10", "--eval_interval", "20", "--save_interval", "20",
            "--eval_episodes", "4", "--batch_size", "4", "--batch_length", "8", "--data_workers", "0"]


@pytest.fixture
def replay(tmp_path):
    """A toy replay store: 40 train and 4 eval episodes written by the generator."""
    conf = toy_conf(tmp_path)
    run_generator(conf, conf.replay_dir, split="train", n_steps=480)
    run_generator(conf, conf.replay_dir, split="val", n_episodes=4)
    return conf


def test_discounted_returns_and_unigram():
    r = np.array([0.0, 1.0, 1.0, 1.0], np.float32)
    term = np.array([0, 0, 0, 1], bool)
    assert np.allclose(discounted_returns(r, term, 0.5), [1 + 0.5 + 0.25, 1 + 0.5, 1, 0])
    assert entropy_bits(np.array([0, 1, 2, 3]), 8) == pytest.approx(2.0)
    assert entropy_bits(np.array([5, 5, 5]), 8) == pytest.approx(0.0)
    assert unigram_pos_bits(np.array([[0, 5], [1, 5]]), 8) == pytest.approx(0.5)


def test_learner_logs_evaluates_saves_and_resumes(replay):
    conf = replay
    from pydreamer.data import make_replay_loader

    logged: dict[str, list] = {}

    def log_fn(metrics, step):
        for k, v in metrics.items():
            logged.setdefault(k, []).append((step, v))

    dims = {"n_tokens": 8, "tokens_per_step": 2, "action_dim": 3}
    eps = load_eval_episodes(f"{conf.replay_dir}/episodes_eval", 4)
    assert len(eps) == 4
    learner = Learner(conf, conf.replay_dir, dims)
    assert not learner.try_resume()
    learner.run(make_replay_loader(conf, conf.replay_dir), 40, log_fn=log_fn, eval_episodes_fn=lambda: eps)
    for key in ("train/loss_tokens", "train/kl", "train/grad_steps_per_sec", "train/data_wait_frac",
                "train/loss_actor", "train/loss_critic", "eval/loss_tokens", "eval/nll_h1", "eval/acc_h1",
                "eval/unigram_pos_nll", "eval/value_error"):
        assert key in logged, key
    assert [s for s, _ in logged["train/loss_tokens"]] == [10, 20, 30, 40]
    assert [s for s, _ in logged["eval/nll_h1"]] == [20, 40]
    assert 0 <= logged["train/data_wait_frac"][-1][1] <= 1
    ckpt = load_checkpoint(checkpoint_path(conf.replay_dir))
    assert ckpt["step"] == 40
    # model selection: best.pt holds the weights of the lowest val nll_h1 seen
    evals = dict(logged["eval/nll_h1"])
    best = load_checkpoint(checkpoint_path(conf.replay_dir, "best"))
    assert best["step"] == min(evals, key=evals.get)
    assert best["extra"]["val_nll_h1"] == pytest.approx(min(evals.values()))
    assert not learner.keep_if_best(learner.best_nll + 1.0)  # worse than the best: best.pt untouched

    again = Learner(conf, conf.replay_dir, dims)
    assert again.try_resume() and again.step == 40
    assert again.best_nll == pytest.approx(min(evals.values()))  # a resumed run keeps its model selection
    for a, b in zip(learner.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    again.run(make_replay_loader(conf, conf.replay_dir), 50, log_fn=log_fn)
    assert logged["train/loss_tokens"][-1][0] == 50


def test_non_finite_loss_keeps_last_good_checkpoint(replay):
    conf = replay
    from pydreamer.data import make_replay_loader

    learner = Learner(conf, conf.replay_dir, {"n_tokens": 8, "tokens_per_step": 2, "action_dim": 3})
    learner.run(make_replay_loader(conf, conf.replay_dir), 20)
    with torch.no_grad():
        learner.model.wm.decoder.net[-1].bias.fill_(float("inf"))
    with pytest.raises(NonFiniteLoss, match="step 21"):
        learner.run(make_replay_loader(conf, conf.replay_dir), 40)
    ckpt = load_checkpoint(checkpoint_path(conf.replay_dir))
    assert ckpt["step"] == 20 and torch.isfinite(ckpt["model"]["wm.decoder.net.6.bias"]).all()


def test_main_logs_to_mlflow_and_resumes_the_same_run(replay, monkeypatch):
    conf = replay
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = learner_args(conf)
    assert main(args + ["--n_steps", "20"]) == 0
    run_id = mlflow.last_active_run().info.run_id
    mlflow.end_run()
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert main(args + ["--n_steps", "40"]) == 0
    mlflow.end_run()
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_tokens")]
    assert steps == [10, 20, 30, 40]  # resumed at 20: one curve, no repeated steps
    metrics = mlflow.get_run(run_id).data.metrics
    for key in ("eval/nll_h1", "eval/acc_h1", "eval/loss_tokens", "eval/unigram_pos_nll", "eval/value_error",
                "train/grad_steps_per_sec", "train/data_wait_frac"):
        assert key in metrics, key
    assert load_checkpoint(checkpoint_path(conf.replay_dir))["step"] == 40


@pytest.mark.parametrize("world_model, has_kl", [("rssm", True), ("transformer", False), ("maskgit", False)])
def test_the_progress_line_shows_only_the_models_own_metrics(replay, caplog, world_model, has_kl):
    """A world model without a latent has no KL: its progress line says nothing of one (it said `kl nan`)."""
    from pydreamer.data import make_replay_loader

    conf = replay
    conf.update(world_model=world_model, context_steps=8)
    learner = Learner(conf, conf.replay_dir, {"n_tokens": 8, "tokens_per_step": 2, "action_dim": 3})
    with caplog.at_level("INFO", logger="pydreamer.train"):
        learner.run(make_replay_loader(conf, conf.replay_dir), 10, log_fn=lambda m, s: None)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 10/10")]
    assert len(lines) == 1 and "loss_tokens" in lines[0] and "nan" not in lines[0]
    assert (" kl " in lines[0]) == has_kl


def test_a_conditioned_learner_trains_on_its_episodes_labels_and_its_checkpoint_keeps_them(labelled_token_dir,
                                                                                           tmp_path):
    from envs import env_dims
    from pydreamer.data import make_replay_loader, replay_condition

    conf = load_config(["defaults", "tiny"], ["--data_dir", str(labelled_token_dir), "--condition", "language,voice",
                                              "--replay_dir", str(tmp_path / "replay"), "--data_workers", "0",
                                              "--log_interval", "5", "--eval_interval", "100", "--save_interval", "10"])
    run_generator(conf, conf.replay_dir, split="train", n_steps=400)
    vocabulary = replay_condition(conf)
    assert vocabulary == [("language", ["de", "en"]), ("voice", ["m0", "m1", "m2"])]
    loader = make_replay_loader(conf, conf.replay_dir)
    batch = next(iter(loader))
    assert batch["condition"].shape == (*batch["reward"].shape, 2) and (batch["condition"] > 0).all()
    learner = Learner(conf, conf.replay_dir, env_dims(conf), conditions=vocabulary)
    learner.run(loader, 10, log_fn=lambda metrics, step: None)
    ckpt = load_checkpoint(checkpoint_path(conf.replay_dir))
    assert ckpt["step"] == 10 and ckpt["model_args"]["conditions"] == [["language", ["de", "en"]],
                                                                         ["voice", ["m0", "m1", "m2"]]]


def test_the_learner_takes_the_threads_granted_while_it_trains(replay, caplog):
    """launch.py grants the generators' cores once they are done: the learner tries them at its next steps."""
    import logging
    import os

    from pydreamer.data import make_replay_loader
    from runtime.processes import ThreadGrants

    conf = replay
    learner = Learner(conf, conf.replay_dir, {"n_tokens": 8, "tokens_per_step": 2, "action_dim": 3})
    read_end, write_end = os.pipe()
    learner.threads.grants = ThreadGrants(read_end)
    os.write(write_end, b"2\n")
    try:
        with caplog.at_level(logging.INFO, logger="pydreamer.train"):
            learner.run(make_replay_loader(conf, conf.replay_dir), 20)
        assert "the generators are done: 2 threads from step 6 on" in caplog.text
        kept = "2 threads: " in caplog.text
        assert kept != ("2 threads were slower" in caplog.text)  # one verdict, whichever it was here
        assert torch.get_num_threads() == (2 if kept else 1)
    finally:
        torch.set_num_threads(1)
        os.close(write_end)
        learner.threads.grants.close()


@pytest.mark.parametrize("after, kept", [(0.5, True), (1.2, False), (4.0, False)])
def test_granted_threads_are_kept_only_when_steps_get_faster(after, kept):
    """The verdict on step times given: faster is kept; slower is undone after the trial, 3x slower at once."""
    import os

    from pydreamer.learner.loop import _GrantedThreads
    from runtime.processes import ThreadGrants

    read_end, write_end = os.pipe()
    threads = _GrantedThreads(ThreadGrants(read_end))
    torch.set_num_threads(1)
    try:
        os.write(write_end, b"2\n")
        for step in range(1, 7):
            threads.step_took(5.0 if step == 1 else 1.0, step)  # the first step is slow: the median ignores it
        assert torch.get_num_threads() == 2 and threads.trial == (1, 1.0)
        for step in range(7, 7 + (1 if after > 3 else threads.TRIAL)):
            threads.step_took(after, step)
        assert threads.trial is None and torch.get_num_threads() == (2 if kept else 1)
    finally:
        torch.set_num_threads(1)
        os.close(write_end)
        threads.grants.close()
