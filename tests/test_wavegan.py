"""The WaveGAN baseline (`python -m wavegan`): the WGAN-GP pieces on known cases, its waves made the way prepare made
them, checkpoints and resume, bad config values, and the command on a tiny corpus made here, end to end into MLflow."""
from __future__ import annotations

import ast
import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.config import load_config
from tests.audio_fixtures import write_clip
from tokenizer.features import MelSettings, log_mel_features
from tokenizer.layout import DataLayout
from tokenizer.shards import iter_utterances
from wavegan.data import Waveforms, WindowSampler, split_sources, utterance_wave
from wavegan.gan import critic_step, gradient_penalty, make_optimizers
from wavegan.models import Critic, WaveGAN, phase_shuffle, start_length, widths

ROOT = Path(__file__).resolve().parents[1]
ARCH = {"wavegan_latent_dim": 8, "wavegan_model_dim": 2, "wavegan_layers": 3, "wavegan_kernel": 9,
        "wavegan_phase_shuffle": 2}


@pytest.fixture(autouse=True)
def local_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


# ---- the pieces --------------------------------------------------------------------------------------

def test_gradient_penalty_of_a_linear_critic_is_its_weight_norms_distance_to_one():
    torch.manual_seed(0)
    critic = torch.nn.Linear(64, 1)  # D(x) = w.x + b: the input gradient is w everywhere
    real, fake = torch.randn(5, 64), torch.zeros(5, 64)
    expected = (critic.weight.norm() - 1) ** 2
    assert torch.allclose(gradient_penalty(critic, real, fake), expected, atol=1e-6)
    with torch.no_grad():
        critic.weight.copy_(critic.weight / critic.weight.norm())  # 1-Lipschitz exactly: no penalty
    assert gradient_penalty(critic, real, fake).item() < 1e-10
    # the WaveGAN critic on a tiny batch: finite, and differentiable into the critic's weights
    model = WaveGAN(1000, ARCH)
    gp = gradient_penalty(model.critic, torch.randn(3, 1, 1000), model.generator(torch.randn(3, 8)))
    assert torch.isfinite(gp) and gp.item() >= 0
    gp.backward()
    weights = [p for name, p in model.critic.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights)  # (the score's bias has none)


def test_the_critic_learns_to_score_noise_above_silence():
    torch.manual_seed(0)
    critic = Critic(1024, model_dim=4, layers=3, kernel=9, shuffle=2)
    opt = torch.optim.Adam(critic.parameters(), 1e-2, betas=(0.5, 0.9))
    noise, silence = 0.3 * torch.randn(8, 1, 1024), torch.zeros(8, 1, 1024)

    def margin() -> float:
        with torch.no_grad():
            return (critic(noise).mean() - critic(silence).mean()).item()

    before = margin()
    for _ in range(40):  # the critic's WGAN-GP loss, with noise as the real windows and silence as the generated
        loss = critic(silence).mean() - critic(noise).mean() + 10 * gradient_penalty(critic, noise, silence)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # W = E[D(noise)] - E[D(silence)] grows towards the distance a 1-Lipschitz critic allows (||noise|| ~ 9.6)
    assert abs(before) < 0.1 and margin() > 2.0


def test_generator_output_shape_and_range_and_the_critics_score():
    assert widths(64, 5) == [1024, 512, 256, 128, 64] and widths(8, 6) == [128, 128, 64, 32, 16, 8]
    assert start_length(16000, 5) == 16 and start_length(4000, 3) == 63
    model = WaveGAN(4000, ARCH)
    with torch.no_grad():
        z = 100 * torch.randn(6, 8)  # large latents drive tanh into saturation: still inside [-1, 1]
        wave = model.generator(z)
        assert wave.shape == (6, 1, 4000) and wave.abs().max() <= 1.0 and wave.std() > 0
        assert model.critic(wave).shape == (6,)
    x = torch.arange(20.0).view(2, 1, 10)
    assert torch.equal(phase_shuffle(x, 0), x)
    shifted = phase_shuffle(x, 2)
    assert shifted.shape == x.shape and all(  # each example is its own shift of the input (edges reflected)
        any(torch.equal(shifted[b, 0, 2:8], x[b, 0, 2 - s:8 - s]) for s in range(-2, 3)) for b in range(2))


def _waves(n: int = 5, seconds: float = 0.5, sr: int = 2000) -> Waveforms:
    rng = np.random.default_rng(0)
    parts = [(0.1 * rng.standard_normal(int(sr * seconds * (1 + i % 3)))).astype(np.float32) for i in range(n)]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    return Waveforms(np.concatenate(parts), offsets, [f"u{i}" for i in range(n)], sr)


def test_windows_come_from_inside_one_utterance_and_short_ones_are_padded():
    waves = _waves()
    sampler = WindowSampler(waves, 1500, seed=0)
    batch = sampler.batch(200)
    assert batch.shape == (200, 1500) and batch.dtype == np.float32
    for row in batch[:40]:
        found = False
        for i in range(len(waves.ids)):
            w = waves.wave(i)
            if len(w) < 1500:  # 1000 samples: the whole utterance, then zeros
                found |= np.array_equal(row[:len(w)], w) and not row[len(w):].any()
            else:
                starts = np.flatnonzero(w[:len(w) - 1499] == row[0])
                found |= any(np.array_equal(w[s:s + 1500], row) for s in starts)
        assert found
    sampler.reseed(0, 7)
    again = sampler.batch(3)
    sampler.reseed(0, 7)
    assert np.array_equal(again, sampler.batch(3))


def _tiny_conf(**over):
    conf = load_config(["defaults", "tiny"])
    conf.update({"wavegan_seconds": 0.25, **ARCH, **over})
    return conf


def test_a_checkpoint_round_trip_continues_the_step_count_and_the_very_same_training(tmp_path):
    from wavegan.train import Trainer, train

    conf = _tiny_conf(wavegan_steps=4, wavegan_save_interval=2, wavegan_curve_interval=100, wavegan_log_interval=2)
    waves = _waves(sr=16000)

    def run(folder, steps, resume=False):
        t = Trainer({**conf, "wavegan_steps": steps}, 4000, torch.device("cpu"), folder)
        assert t.resume() is resume
        logged = []
        train(t, WindowSampler(waves, 4000, 0), lambda m, s: logged.append((s, m)), lambda s, r: None, lambda: False)
        return t, logged

    whole, logged = run(tmp_path / "a", 4)
    assert [s for s, _ in logged] == [2, 4] and {"wavegan/critic_loss", "wavegan/generator_loss",
                                               "wavegan/gradient_penalty", "wavegan/wasserstein",
                                               "wavegan/steps_per_sec"} <= set(logged[0][1])
    half, _ = run(tmp_path / "b", 2)
    assert half.latest.is_file() and half.kept(2).is_file()  # the last step is a curve point: a kept copy
    resumed, logged = run(tmp_path / "b", 4, resume=True)
    assert resumed.resumed_at == 2 and resumed.step == 4 and [s for s, _ in logged] == [4]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)  # seeded by seed and step at every save: the same draws as without the stop
    other = Trainer({**conf, "wavegan_model_dim": 3}, 4000, torch.device("cpu"), tmp_path / "b")
    with pytest.raises(ValueError, match="wavegan_model_dim"):
        other.resume()


def test_one_critic_step_moves_the_critic_only():
    model = WaveGAN(4000, ARCH)
    opts = make_optimizers(model, _tiny_conf())
    gen = [p.clone() for p in model.generator.parameters()]
    crit = [p.clone() for p in model.critic.parameters()]
    out = critic_step(model, opts["critic"], 0.1 * torch.randn(4, 1, 4000), 10.0)
    assert set(out) == {"critic_loss", "gradient_penalty", "wasserstein"} and all(np.isfinite(list(out.values())))
    assert all(torch.equal(a, b) for a, b in zip(gen, model.generator.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(crit, model.critic.parameters()))


# ---- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, names", [
    (["--wavegan_lr", "-1"], "'wavegan_lr'"),
    (["--wavegan_beta2", "1.0"], "'wavegan_beta2'"),
    (["--wavegan_batch_size", "0"], "'wavegan_batch_size'"),
    (["--wavegan_seconds", "0.01"], "'wavegan_seconds'"),
    (["--wavegan_phase_shuffle", "400"], "'wavegan_phase_shuffle'"),
    (["--wavegan_kernel", "3"], "'wavegan_kernel'"),
    (["--wavegan_n_critic", "two"], "wavegan_n_critic"),
    (["--wavegan_stpes", "5"], "wavegan_steps"),
])
def test_a_bad_config_value_is_one_line_naming_the_key_and_exit_2(tmp_path, capsys, override, names):
    from wavegan.command import main

    with pytest.raises(SystemExit) as e:
        main(["--configs", "defaults", "tiny", "--data_dir", str(tmp_path / "none"), "--mlflow_dir",
              str(tmp_path / "mlruns"), *override])
    err = capsys.readouterr().err
    assert e.value.code == 2 and names in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "mlruns").exists()  # refused before anything was written


def test_a_data_dir_without_a_prepared_corpus_is_one_line_and_exit_2(tmp_path, capsys):
    from wavegan.command import main

    with pytest.raises(SystemExit) as e:
        main(["--configs", "defaults", "tiny", "--data_dir", str(tmp_path / "empty"), "--mlflow_dir",
              str(tmp_path / "mlruns")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "python -m tokenizer prepare" in err and len(err.strip().splitlines()) == 1


# ---- the waves of a prepared corpus, and the command on it --------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A prepared folder corpus (speech-like clips of 3 speakers), as `python -m tokenizer prepare` leaves it."""
    from tokenizer.prepare import prepare
    from tokenizer.records import record_settings

    root = tmp_path_factory.mktemp("wavegan")
    for i in range(12):
        write_clip(root / "clips" / f"spk{i % 3}" / f"c{i:02d}.wav", seconds=2.0, seed=i)
    data = root / "data"
    conf = load_config(["defaults", "tiny"], ["--source", "folder", "--data_root", str(root / "clips"),
                                              "--data_dir", str(data)])
    prepare(conf, DataLayout.of(data))
    record_settings(conf, DataLayout.of(data), "prepare")
    return root, data, conf


def test_the_waves_are_the_ones_whose_log_mels_were_prepared(corpus):
    _, data, conf = corpus
    layout = DataLayout.of(data)
    prepared = {u["utterance_id"]: u for u in iter_utterances(layout.mels("train"))}
    sources = split_sources(load_config(["defaults", "tiny"]), layout, "train")  # settings from the data_dir
    assert [s.utterance_id for s in sources] == list(prepared) and len(sources) >= 8
    for rec in sources[:3]:
        f = log_mel_features(utterance_wave(rec, conf), MelSettings.from_conf(conf), conf["vad_db"])
        assert np.allclose(f["mel"].astype(np.float16), prepared[rec.utterance_id]["mel"], atol=1e-2)


def _run(root, data, *extra):
    from wavegan.command import main

    try:
        return main(["--configs", "defaults", "tiny", "--data_dir", str(data), "--mlflow_dir", str(root / "mlruns"),
                     *extra])
    except SystemExit as e:
        return e.code


def test_the_command_writes_samples_metrics_and_a_curve_and_resumes(corpus, capsys):
    import mlflow

    root, data, _ = corpus
    assert _run(root, data) == 0
    out = capsys.readouterr().out
    assert "Quality against training time" in out and "| 4 |" in out and "pydreamer.compare --runs" in out
    run = mlflow.search_runs(experiment_names=["audio-world-model"], output_format="list")[0]
    assert run.data.tags["family"] == "wavegan" and run.data.tags["objective"] == "wgan-gp"
    m = run.data.metrics
    assert {"dream/unconditional/rms/ks_stat", "dream/real/rms/median", "dream/unconditional/silent_fraction",
            "dream/realtime_factor", "wavegan/critic_loss", "wavegan/wasserstein", "train/model_params"} <= set(m)
    client = mlflow.MlflowClient()
    assert [x.step for x in client.get_metric_history(run.info.run_id, "dream/unconditional/silent_fraction")] == [2, 4]
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    step4 = artifacts / "samples" / "step-000004"
    assert sorted(p.name for p in step4.iterdir()) == ["acoustics.md", "sample-00.wav", "sample-01.wav",
                                                       "sample-02.wav", "spectrograms.png", "summary.json"]
    assert json.loads((step4 / "summary.json").read_text())["step"] == 4
    assert (artifacts / "samples" / "curve.csv").read_text().count("\n") == 3  # a header and steps 2, 4
    assert any((artifacts / "samples" / "real").glob("real-00-*.wav"))
    assert {p.name for p in (artifacts / "checkpoints").iterdir()} == {"latest.pt", "step-000002.pt", "step-000004.pt"}
    # resumed for two more steps: the step count goes on, the run is the same
    assert _run(root, data, "--resume_id", run.info.run_id, "--wavegan_steps", "6") == 0
    history = client.get_metric_history(run.info.run_id, "dream/unconditional/silent_fraction")
    assert [x.step for x in history] == [2, 4, 6]
    assert (artifacts / "samples" / "curve.csv").read_text().count("\n") == 4


def test_sigterm_saves_a_checkpoint_and_exits_130_then_the_run_resumes(corpus, monkeypatch, caplog):
    import mlflow

    import wavegan.train

    root, data, _ = corpus
    real_step, calls = wavegan.train.train_step, []

    def step_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # what `docker stop` sends, mid-step: the step is finished first
        return real_step(*args, **kwargs)

    monkeypatch.setattr(wavegan.train, "train_step", step_then_sigterm)
    caplog.set_level(logging.INFO, logger="wavegan")
    assert _run(root, data, "--wavegan_save_interval", "100", "--wavegan_curve_interval", "100") == 130
    run = mlflow.search_runs(experiment_names=["audio-world-model"], output_format="list")[0]
    assert run.info.status == "KILLED" and "continue with --resume_id" in caplog.text
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert torch.load(artifacts / "checkpoints" / "latest.pt", weights_only=True)["step"] == 1
    assert _run(root, data, "--resume_id", run.info.run_id, "--wavegan_curve_interval", "100") == 0
    assert torch.load(artifacts / "checkpoints" / "latest.pt", weights_only=True)["step"] == 4
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"
    assert _run(root, data, "--resume_id", "nosuchrun") == 2


# ---- the package's shape (tests/test_structure.py holds the older packages to it) ----------------------

def test_wavegan_modules_and_functions_are_small():
    for path in sorted((ROOT / "wavegan").glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 400, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 80, f"{path.name}:{node.name}"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "launch", path  # nothing imports the launcher
