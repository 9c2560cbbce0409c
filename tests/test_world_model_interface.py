"""The world-model interface as its users rely on it: a new model is one class and one line in WORLD_MODELS, and
evaluation, dreams, latents and the learner take it without asking what it is; checkpoints rebuild the model
they were trained as; the latent pictures read every model, the RSSM with the actions it was trained on."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pydreamer.baselines import Baselines
from pydreamer.dreams.imagination import dream_tokens, mix_tokens
from pydreamer.episodes import EpisodeBuilder
from pydreamer.forecast import evaluate_split
from pydreamer.margins import curves
from pydreamer.latents import latent_points
from pydreamer.learner.eval_metrics import evaluate_episodes
from pydreamer.models import WORLD_MODELS, Dreamer, WorldModel
from pydreamer.models.base import EvalSums, bits_and_hits
from pydreamer.models.checkpoint import build_model, load_checkpoint, restore, save_checkpoint
from pydreamer.data import episode_batch
from runtime.config import load_config

K, G = 8, 3


class RepeatLastStep(WorldModel):
    """A toy world model: the next step repeats the last one, with probability sigmoid(logit) per token (the one
    weight it learns), the rest spread evenly over the other codes. Lives here, as a third model would live in
    pydreamer/models/: only the interface, nothing of the RSSM or the Transformer."""

    kind = "repeat"
    arch_keys = ()

    def __init__(self, conf, n_tokens, tokens_per_step, action_dim):
        super().__init__(conf, n_tokens, tokens_per_step, action_dim)
        self.logit = torch.nn.Parameter(torch.zeros(()))

    def _probs(self, last: torch.Tensor) -> torch.Tensor:
        """[..., G] last tokens -> [..., G, K] next-step distribution."""
        p = torch.sigmoid(self.logit)
        out = torch.full((*last.shape, self.n_tokens), 1.0, device=last.device) * (1 - p) / (self.n_tokens - 1)
        return out.scatter(-1, last.unsqueeze(-1), p.expand_as(last.unsqueeze(-1).float()))

    def initial_state(self, batch_size, device="cpu"):
        return (torch.zeros(batch_size, self.tokens_per_step, dtype=torch.long, device=device),)

    def state_batch_size(self, state):
        return state[0].shape[0]

    def forward(self, batch, state):
        tokens = batch["tokens"]
        probs = self._probs(tokens[:-1])
        loss = -torch.log(probs.gather(-1, tokens[1:].unsqueeze(-1))).sum(-1).mean()
        return _Out(loss, (tokens[-1].detach(),), {"loss_model": loss.detach()})

    def eval_sums(self, batch, mask, samples):
        tokens = batch["tokens"]
        bits, hits = bits_and_hits(self._probs(tokens[:-1]), tokens[1:])
        m = mask[1:]
        n = int(m.sum()) * tokens.shape[-1]
        nll = (float(bits.sum(-1)[m].sum()), n)
        return EvalSums({"nll_h1": nll, "acc_h1": (float(hits.float().sum(-1)[m].sum()), n), "loss_tokens": nll}, None)

    def forecast(self, tokens, horizon, samples, starts, generator=None):
        return self._probs(tokens[starts]).unsqueeze(1).expand(-1, horizon, -1, -1)

    def imagine(self, prompt, n_steps, samples, temperature=1.0, seed=0):
        last = prompt[-1] if len(prompt) else torch.zeros(self.tokens_per_step, dtype=torch.long)
        return last.expand(samples, n_steps, -1).clone()

    def mix(self, a, b, alphas, n_steps, temperature=1.0, seed=0):
        return torch.cat([self.imagine(b if al >= 0.5 else a, n_steps, 1) for al in alphas])

    def step_features(self, tokens):
        return torch.nn.functional.one_hot(tokens, self.n_tokens).flatten(1).float()


class _Out(tuple):
    def __new__(cls, loss, last_state, metrics):
        self = super().__new__(cls, (loss, last_state, metrics))
        self.loss, self.last_state, self.metrics = loss, last_state, metrics
        return self


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(WORLD_MODELS, "repeat", RepeatLastStep)  # the one line a new model adds
    conf = dict(load_config(["defaults", "tiny"]))
    conf["world_model"] = "repeat"
    return conf, Dreamer(conf, K, G, 1)


def _utterances(n=3, T=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        steps = rng.integers(0, K, (T // 3, G))
        out.append(np.repeat(steps, 3, axis=0))  # every step repeated 3 times: a repeat model is right 2 in 3
    return out


def test_a_toy_world_model_is_evaluated_per_horizon_without_being_asked_what_it_is(toy):
    conf, model = toy
    assert model.ac is None and model.world_model == "repeat"  # no latent: no actor-critic
    utts = _utterances()
    results = curves(evaluate_split(model, utts, Baselines.fit(utts, utts[:1], K, 2), 2, 1, 0, 0, torch.device("cpu")))
    # h = 1 and 2 alike, p = sigmoid(0) = 0.5 on the last token seen (1 bit), else 0.5/7 (log2 14 bits)
    for h in (1, 2):
        same = np.concatenate([(u[h:] == u[:-h]).ravel() for u in utts])
        assert results["model"]["nll"][h - 1] == pytest.approx(np.where(same, 1.0, math.log2(14)).mean(), abs=1e-5)
        assert results["model"]["acc"][h - 1] == pytest.approx(same.mean())
    assert len(results) > 1  # the baselines on the same cells


def test_a_toy_world_model_is_dreamt_mixed_and_pictured(toy):
    _, model = toy
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    dreams = dream_tokens(model, prompt, 5, 2, seed=1)
    assert dreams.shape == (2, 5, G) and (dreams == [4, 5, 6]).all()
    assert dream_tokens(model, None, 3, 1).shape == (1, 3, G)
    mixed = mix_tokens(model, prompt, prompt[::-1], [0.0, 1.0], 2)
    assert (mixed[0] == [4, 5, 6]).all() and (mixed[1] == [1, 2, 3]).all()
    assert latent_points(model, _utterances(), torch.device("cpu"), per_utterance=4).shape == (12, G * K)


def test_a_toy_world_model_trains_and_gets_its_eval_metrics(toy):
    conf, model = toy
    episodes = [_episode(u) for u in _utterances()]
    before = evaluate_episodes(model, episodes, conf, torch.device("cpu"))["nll_h1"]
    opt = model.make_optimizers({**conf, "adam_lr": 0.1})
    arrays, _ = episode_batch(episodes, 100)
    batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for step in range(1, 30):
        model.training_step(batch, model.initial_state(len(episodes)), opt, step)
    after = evaluate_episodes(model, episodes, conf, torch.device("cpu"))
    assert after["nll_h1"] < before and "value_error" not in after  # no critic to score


def _episode(tokens: np.ndarray) -> dict:
    builder = EpisodeBuilder({"tokens": tokens[0]}, n_actions=1)
    for t in range(1, len(tokens)):
        builder.add(0, {"tokens": tokens[t]}, 0.5, t == len(tokens) - 1)
    return builder.finish()


def test_the_rssm_latents_are_the_states_training_sees():
    """latents.py once filtered with all-zero actions; the replay store's episodes have the null action before
    every step but the first, and the step features must be the learner's own posterior features."""
    conf = load_config(["defaults", "tiny"])
    model = Dreamer(conf, K, G, 1).eval()
    tokens = _utterances(1, 12)[0]
    torch.manual_seed(3)
    features = model.wm.step_features(torch.from_numpy(tokens))
    arrays, _ = episode_batch([_episode(tokens)], 100)
    batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
    torch.manual_seed(3)
    with torch.no_grad():
        out = model.wm(batch, model.initial_state(1))
    trained = model.wm.latent_features(out.states)[:, 0]
    assert torch.equal(features, trained)


def test_the_transformers_latent_picture_has_points():
    conf = load_config(["defaults", "tiny"], ["--world_model", "transformer", "--context_steps", "8"])
    model = Dreamer(conf, K, G, 1).eval()
    points = latent_points(model, _utterances(2, 12), torch.device("cpu"), per_utterance=5)
    assert points.shape == (10, conf["transformer_dim"]) and np.isfinite(points).all()


def test_a_checkpoint_rebuilds_the_model_it_was_trained_as(tmp_path):
    trained_as = load_config(["defaults", "tiny"], ["--deter_dim", "48", "--token_head", "autoregressive"])
    model = Dreamer(trained_as, K, G, 1)
    save_checkpoint(tmp_path / "c.pt", model, None, 9)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["model_args"]["world_model"] == "rssm" and ckpt["model_args"]["conf"]["deter_dim"] == 48
    today = load_config(["defaults", "tiny"], ["--world_model", "transformer", "--context_steps", "8"])
    with pytest.raises(ValueError, match="trained as another model"):
        restore(ckpt, Dreamer(today, K, G, 1))  # the config of the day does not fit ...
    rebuilt = build_model(ckpt, today)  # ... the checkpoint's own model_args do
    assert restore(ckpt, rebuilt) == 9 and rebuilt.world_model == "rssm" and rebuilt.wm.rssm.deter_dim == 48
    for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_from_before_model_args_still_loads(tmp_path):
    """Older checkpoints: no model_args, and the forecast head under its old name `wm.forecast.*`."""
    conf = load_config(["defaults", "tiny"])
    model = Dreamer(conf, K, G, 1)
    old = {k.replace("wm.forecast_head.", "wm.forecast."): v for k, v in model.state_dict().items()}
    assert any(k.startswith("wm.forecast.") for k in old)
    torch.save({"step": 4, "dims": dict(model.dims), "model": old, "optimizers": {}, "extra": {}}, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    rebuilt = build_model(ckpt, conf)
    assert restore(ckpt, rebuilt) == 4
    assert torch.equal(rebuilt.wm.forecast_head.net[0].weight, model.wm.forecast_head.net[0].weight)
