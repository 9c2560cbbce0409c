"""The DreamerV3-style RSSM over log-mel steps (world_model: mel_rssm): its density, learning, forecasts, dreams."""
from __future__ import annotations

import math

import pytest
import torch

from pydreamer.models.dreamer import WORLD_MODELS, Dreamer
from pydreamer.models.functions import symexp, symlog
from pydreamer.models.mel_world_model import GaussianHead, MelRSSMWorldModel
from runtime.config import ConfigError, load_config

torch.set_num_threads(1)
DS, M = 2, 3
D = DS * M


def tiny_model(seed: int = 0, **overrides) -> MelRSSMWorldModel:
    conf = load_config(["defaults", "audio", "tiny", "mel"], ["--time_downsample", str(DS), "--n_mels", str(M)])
    conf.update(overrides)
    torch.manual_seed(seed)
    return MelRSSMWorldModel(conf, n_tokens=8, tokens_per_step=2, action_dim=1)


def wave_batch(T: int, B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Lanes of a sine per dimension with a random phase per lane: each step follows from the two before."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(1, B, 1, generator=g) * 6.28
    t = torch.arange(T).reshape(T, 1, 1).float()
    mel = 2.0 * torch.sin(0.7 * t + phase + torch.arange(D).float() * 0.3)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0] = True
    action = torch.zeros(T, B, 1)
    action[1:, :, 0] = 1.0
    return {"mel": mel, "action": action, "reward": torch.zeros(T, B), "terminal": torch.zeros(T, B), "reset": reset}


def test_symlog_inverts_and_the_gaussian_is_a_density_in_x():
    x = torch.linspace(-20, 20, 101)
    assert torch.allclose(symexp(symlog(x)), x, atol=1e-4)
    head = GaussianHead(4, 8, 1)
    with torch.no_grad():
        head.log_scale.fill_(-1.0)
    mean = torch.full((20001, 1), 0.5)
    grid = torch.linspace(-30, 30, 20001).unsqueeze(1)
    density = torch.exp(-head.nll(mean, grid))
    assert float(density.sum() * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-3)  # integrates to 1 over x


def test_it_is_registered_and_needs_the_mel_observation():
    assert WORLD_MODELS["mel_rssm"] is MelRSSMWorldModel and MelRSSMWorldModel.observes == "mel"
    conf = load_config(["defaults", "tiny", "mel"])
    assert (conf["kl_balance"], conf["kl_weight"], conf["free_nats"], conf["unimix"]) == (0.8333, 0.6, 1.0, 0.01)
    dreamer = Dreamer(conf, 8, 2, 1)
    assert dreamer.ac is not None and dreamer.model_args()["conf"]["n_mels"] == conf["n_mels"]
    with pytest.raises(ConfigError, match="observation mel"):
        load_config(["defaults", "tiny"], ["--world_model", "mel_rssm"])


def test_training_lowers_the_forecast_nll():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = last = None
    for i in range(120):
        out = model(wave_batch(16, 8, seed=i), model.initial_state(8))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        value = float(out.metrics["loss_forecast"])
        first = value if first is None else first
        last = value
    assert last < first - 0.5
    model.eval()
    batch = wave_batch(16, 2, seed=999)
    sums = model.eval_sums(batch, torch.ones(16, 2, dtype=torch.bool), samples=1).sums
    assert sums["nll_h1"][1] == 15 * 2 * D and math.isfinite(sums["nll_h1"][0])
    assert sums["mse_h1"][0] / sums["mse_h1"][1] < 1.0  # the sine's variance is 2; the forecast does better


def test_forecast_mel_shapes_seeds_and_nan_past_the_end():
    model = tiny_model().eval()
    steps = wave_batch(10, 1)["mel"][:, 0]
    starts = torch.tensor([0, 4, 8])
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    mean, nll = model.forecast_mel(steps, 3, 4, starts, gen())
    again = model.forecast_mel(steps, 3, 4, starts, gen())
    assert mean.shape == (3, 3, D) and nll.shape == (3, 3)
    assert torch.equal(mean, again[0]) and torch.allclose(nll, again[1], equal_nan=True)
    assert torch.isnan(nll[2, 1:]).all() and torch.isfinite(nll[:2]).all()  # t + h past T - 1 has no truth
    with pytest.raises(TypeError, match="forecast_mel"):
        model.forecast(torch.zeros(4, 2, dtype=torch.long), 1, 1, starts)


@pytest.mark.parametrize("prompt_steps", [0, 4])
def test_dreams_are_log_mel_steps_and_seeded(prompt_steps):
    model = tiny_model().eval()
    prompt = wave_batch(max(prompt_steps, 1), 1)["mel"][:prompt_steps, 0]
    a = model.imagine(prompt, 6, 2, seed=5)
    assert a.shape == (2, 6, D) and torch.isfinite(a).all() and torch.equal(a, model.imagine(prompt, 6, 2, seed=5))
    assert model.mix(prompt if prompt_steps else wave_batch(3, 1)["mel"][:, 0], wave_batch(3, 1, 1)["mel"][:, 0],
                     [0.0, 1.0], 4).shape == (2, 4, D)
    assert model.step_features(wave_batch(5, 1)["mel"][:, 0]).shape == (5, model.latent_dim)
    with pytest.raises(ValueError, match="time_downsample x n_mels"):
        model.imagine(torch.zeros(3, D + 1), 2, 1)
