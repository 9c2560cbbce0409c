"""Forecasts scored as log-mel (pydreamer/log_mel.py): known answers with an exact codec, and `evaluate` end to end."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pydreamer.baselines.continuous import ContinuousBaselines
from pydreamer.log_mel import FLOOR, LogMelScorer, log_mel_metrics, log_mel_table, true_steps

DS, M, K, G = 2, 3, 8, 1


class ExactCodec:
    """Token id k decodes to the frame value k in every bin (z-scored = dB here): a decoder with no error."""

    frames_per_step = DS
    settings = SimpleNamespace(n_mels=M)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens)[..., 0].astype(np.float32)  # [N, L]
        return np.repeat(t, DS, -1)[..., None].repeat(M, -1)

    @staticmethod
    def to_db(z: np.ndarray, mean: float, std: float) -> np.ndarray:
        return z * std + mean


def test_true_steps_repeat_the_last_frame_of_a_short_last_step():
    db = np.arange(5 * M, dtype=np.float32).reshape(5, M)
    steps = true_steps(db, 3, DS)
    assert steps.shape == (3, DS * M)
    assert np.array_equal(steps[2], np.concatenate([db[4], db[4]]))


def _one_hot(tokens: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(tokens, dtype=torch.long), K).float()


def test_a_perfect_forecast_scores_zero_beats_every_baseline_and_equals_the_floor():
    rng = np.random.default_rng(0)
    utterances = [rng.integers(0, K, (30, G)) for _ in range(4)]
    dbs = [ExactCodec().decode(u[None])[0] for u in utterances]  # the true log-mel is what the tokens decode to
    steps = [true_steps(d, len(u), DS) for d, u in zip(dbs, utterances)]
    scorer = LogMelScorer(ExactCodec(), ContinuousBaselines.fit(steps[:2], steps[2:]), horizons=3, n_utterances=4)
    for u, tokens in enumerate(utterances):
        starts = np.arange(len(tokens) - 1)
        target = np.minimum(starts[:, None] + np.arange(1, 4), len(tokens) - 1)
        scorer.add(u, tokens, dbs[u], (0.0, 1.0), starts, _one_hot(tokens[target]))
    report = scorer.report()
    assert report["lsd"]["mean"]["model"] == pytest.approx([0, 0, 0], abs=1e-6)
    assert report["mse"]["mean"][FLOOR] == pytest.approx([0, 0, 0], abs=1e-6)
    assert all(m > 0 and lo > 0 for m, lo in zip(report["lsd"]["margin"], report["lsd"]["lo"]))
    assert report["cells"] == [4 * 29 - 0, 4 * 28, 4 * 27]  # cells past the end are not scored
    metrics = log_mel_metrics(report, "test")
    assert metrics["test/log_mel/lsd_h1"] == 0 and metrics["test/log_mel/copy_last/mse_h2"] > 0
    table = log_mel_table(report)
    assert "| **model** (mean forecast) |" in table and "true tokens decoded" in table and "most probable" in table


def test_the_mean_of_the_draws_is_the_forecast_a_blur_beats_a_sharp_guess_in_db():
    """Half the mass on token 2, half on 6, the truth 4: the mean of the decoded draws lands near 4; the most
    probable token (2) is 2 dB off. LSD and MSE reward the mean, so it is the model's log-mel forecast."""
    tokens = np.full((10, G), 4)
    db = ExactCodec().decode(tokens[None])[0]
    steps = [true_steps(db, 10, DS)]
    scorer = LogMelScorer(ExactCodec(), ContinuousBaselines.fit(steps, steps), horizons=1, n_utterances=1, samples=400)
    probs = torch.zeros(9, 1, G, K)
    probs[..., 2] = probs[..., 6] = 0.5
    scorer.add(0, tokens, db, (0.0, 1.0), np.arange(9), probs)
    report = scorer.report()
    assert report["lsd"]["mean"]["most_probable_tokens"][0] == pytest.approx(2.0)
    assert report["lsd"]["mean"]["model"][0] < 0.4


def test_a_forecast_one_token_off_is_off_by_that_many_db():
    tokens = np.full((10, G), 3)
    db = ExactCodec().decode(tokens[None])[0]
    steps = [true_steps(db, 10, DS)]
    scorer = LogMelScorer(ExactCodec(), ContinuousBaselines.fit(steps, steps), horizons=1, n_utterances=1, context=2)
    starts = np.arange(9)
    scorer.add(0, tokens, db, (0.0, 1.0), starts, _one_hot(np.full((9, 1, G), 5)))
    report = scorer.report()
    assert report["lsd"]["mean"]["model"][0] == pytest.approx(2.0) and report["mse"]["mean"]["model"][0] == pytest.approx(4.0)
    assert report["lsd"]["mean"]["copy_last"][0] == pytest.approx(0.0, abs=1e-6)  # a constant utterance
    assert report["lsd"]["margin"][0] == pytest.approx(-2.0)


@pytest.mark.parametrize("world_model", ["rssm", "mel_rssm"])
def test_evaluate_scores_the_run_as_log_mel_beside_the_continuous_baselines(tmp_path, capsys, world_model):
    import mlflow

    from pydreamer.evaluate import main
    from tests.test_dream import make_run
    from tests.conftest import make_token_corpus
    from runtime.config import load_config
    from tokenizer.layout import DataLayout
    from tokenizer.shards import ShardWriter
    from tokenizer.tokens import TokenSplit
    from tokenizer.vqvae import VQVAE, save_vqvae
    from tokenizer.features import MelSettings

    data = make_token_corpus(tmp_path / "data", {"train": 4, "val": 2, "test": 2}, codebook_size=32)
    layout = DataLayout.of(data)
    meta = json.loads(layout.token_meta.read_text())
    layout.token_meta.write_text(json.dumps({**meta, "mel_mean": -30.0, "mel_std": 15.0}))
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        with ShardWriter(layout.mels(split)) as w:
            for u in TokenSplit(layout, split):
                frames = 4 * len(u["tokens"]) - 1  # a short last step
                w.add(per_step={"mel": rng.standard_normal((frames, 80)).astype("float16"),
                                "voice": np.ones(frames, np.float32)},
                      per_utterance={"utterance_id": u["utterance_id"], "speaker": u["speaker"], "source": "t",
                                     "mean": -30.0, "std": 15.0})
    conf = load_config(["defaults", "audio", "tiny"])
    vq = VQVAE(n_mels=80, channels=16, code_dim=8, codebook_size=32, tokens_per_step=4, time_downsample=4, res_blocks=1)
    save_vqvae(layout.vqvae, vq, {"features": {k: conf[k] for k in MelSettings.__dataclass_fields__}})
    run_id = make_run(tmp_path, data, world_model)
    assert main(["--run", run_id, "--mlflow_dir", str(tmp_path / "mlruns"), "--no_probes", "--horizons", "3",
                 "--samples", "2", "--log_mel_starts", "0"]) == 0
    out = capsys.readouterr().out
    assert "Forecasts as log-mel" in out and "| running_mean |" in out and "| ar |" in out
    metrics = mlflow.get_run(run_id).data.metrics
    for key in ("test/log_mel/lsd_h1", "test/log_mel/mse_h3", "test/log_mel/ar/lsd_h2", "test/log_mel/true_tokens/lsd_h1",
                "test/log_mel/margin/lsd_h1", "test/log_mel/margin_lo/lsd_h1"):
        assert key in metrics and np.isfinite(metrics[key]), key
    # a token model has its token NLL too; a model of log-mel steps has its NLL per log-mel dimension instead
    assert ("test/nll_h1" in metrics) == (world_model == "rssm")
    assert ("test/mel_nll_h3" in metrics) == (world_model == "mel_rssm")
    folder = tmp_path / f"replay-{world_model}" / "evaluation" / "test"
    summary = json.loads((folder / "summary.json").read_text())
    assert (folder / "log_mel.md").is_file() and summary["log_mel"]["baselines"]["order"] >= 1
    # Random log-mels of 15 dB spread: every predictor is some dB off, none is wildly off
    assert all(0 < v < 60 for v in summary["log_mel"]["lsd"]["mean"]["model"])
    if world_model == "rssm":  # the decoded cells: a seeded draw of start steps, the same for every predictor
        every = summary["log_mel"]["cells"][0]
        assert main(["--run", run_id, "--mlflow_dir", str(tmp_path / "mlruns"), "--no_probes", "--no_tsne",
                     "--horizons", "3", "--samples", "2", "--log_mel_starts", "2"]) == 0
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["log_mel"]["cells"][0] == 2 * 2 < every and summary["log_mel"]["starts_per_utterance"] == 2
