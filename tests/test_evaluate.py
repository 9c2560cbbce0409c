"""python -m pydreamer.evaluate: the estimator on a chain whose answer is known, and what bad input gets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pydreamer.evaluate import main
from pydreamer.forecast import score
from pydreamer.models import Dreamer
from pydreamer.models.checkpoint import save_checkpoint
from pydreamer.replay_layout import checkpoint_path
from runtime.config import load_config
from runtime.tracking import setup_mlflow, start_or_resume_run
from tests.conftest import make_token_corpus


def _chain(K: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(K, 0.3), size=K)
    return P


def _conditional_entropy(P: np.ndarray, h: int) -> float:
    """H(X_{t+h} | X_t) in bits under the chain's stationary distribution."""
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmax(np.real(w))])
    pi = pi / pi.sum()
    Ph = np.linalg.matrix_power(P, h)
    return float(-(pi[:, None] * Ph * np.log2(np.maximum(Ph, 1e-300))).sum())


@pytest.mark.parametrize("h", [1, 3])
def test_mean_probability_estimator_matches_the_chains_entropy(h):
    """A forecaster that knows the chain and imagines S futures by sampling it: the NLL of the
    mean probability over futures is H(X_{t+h} | X_t) (up to Monte-Carlo and sampling error)."""
    K, T, S, H = 6, 4000, 64, 3
    P = _chain(K, 1)
    rng = np.random.default_rng(0)
    x = np.zeros(T, np.int64)
    for t in range(1, T):
        x[t] = rng.choice(K, p=P[x[t - 1]])
    starts = np.arange(T - 1)
    probs = np.zeros((len(starts), H, 1, K))
    state = np.repeat(x[starts][:, None], S, 1)  # [N, S] imagined tokens, starting from the observed one
    for k in range(H):
        probs[:, k, 0] = P[state].mean(1)  # mean over futures of the next-step distribution
        u = rng.random(state.shape)[..., None]
        state = (u > np.cumsum(P[state], -1)).sum(-1).clip(max=K - 1)
    bits, hits, valid = score(torch.from_numpy(probs), x[:, None], starts)
    measured = bits[valid[:, h - 1], h - 1].mean()
    assert measured == pytest.approx(_conditional_entropy(P, h), abs=0.06)
    assert hits.dtype == bool and valid[:, 0].all() and not valid[-1, 1]


def _run_with_checkpoint(tmp_path, splits, checkpoint=True, conditions=()):
    data = make_token_corpus(tmp_path / "tok", splits, labels=bool(conditions))
    condition = ["--condition", ",".join(name for name, _ in conditions)] if conditions else []
    conf = load_config(["defaults", "audio", "tiny"], ["--data_dir", str(data), "--mlflow_dir", str(tmp_path / "mlruns"),
                                                        "--codebook_size", "32", *condition])
    replay = tmp_path / "replay"
    with start_or_resume_run(conf, tags={"replay_dir": str(replay)}) as run:
        pass
    if checkpoint:
        model = Dreamer(conf, 32, 4, 1, conditions=conditions)
        save_checkpoint(checkpoint_path(replay), model, None, 7)
    return run.info.run_id


def _evaluate(tmp_path, *args):
    return main(["--mlflow_dir", str(tmp_path / "mlruns"), "--evaluate_horizons", "3", "--evaluate_samples", "2",
                 *args])


def test_evaluate_logs_test_metrics_beside_baselines(tmp_path, capsys):
    run_id = _run_with_checkpoint(tmp_path, {"train": 6, "val": 2, "test": 2})
    assert _evaluate(tmp_path, "--run", run_id) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "every start step" in out
    # how far it has got, on stderr: a few lines with the time left, not one per step (6.5 silent minutes before)
    progress = [line for line in captured.err.splitlines() if line.startswith("evaluate: ") and "%" in line]
    assert 1 <= len(progress) <= 10 and progress[-1].startswith("evaluate: 100%") and "left" in progress[-1]
    assert "evaluate: linear probes" in captured.err
    for name in ("unigram", "bigram", "copy_last", "ngram", "cache", "ngram_cache"):
        assert f"| {name} |" in out
    import mlflow

    metrics = mlflow.get_run(run_id).data.metrics
    for key in ("test/nll_h1", "test/acc_h3", "test/baseline/bigram/nll_h2", "test/baseline/copy_last/acc_h1",
                "test/baseline/unigram/nll_h3", "test/best_baseline/nll_h1", "test/margin_h1", "test/margin_lo_h1",
                "test/margin_hi_h3", "test/bits_per_second_h1"):
        assert key in metrics and np.isfinite(metrics[key])
    assert metrics["test/margin_lo_h1"] <= metrics["test/margin_h1"] <= metrics["test/margin_hi_h1"]
    best = min(metrics[f"test/baseline/{n}/nll_h1"]
               for n in ("unigram", "bigram", "copy_last", "ngram", "cache", "ngram_cache"))
    assert metrics["test/best_baseline/nll_h1"] <= best + 1e-9
    assert metrics["test/margin_h1"] == pytest.approx(metrics["test/best_baseline/nll_h1"] - metrics["test/nll_h1"])
    assert metrics["test/bits_per_second_h1"] == pytest.approx(metrics["test/nll_h1"] * 4 * 25, rel=1e-6)
    assert "| best baseline |" in out and "| margin to best, 95% CI |" in out and "voiced" in out
    folder = tmp_path / "replay" / "evaluation" / "test"
    assert {"horizons.csv", "horizons.png", "summary.json"} <= {p.name for p in folder.iterdir()}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["checkpoint"] == "latest.pt"  # no best.pt: latest
    # every per-horizon family is also a curve over h (what MLflow charts and overlays across runs), and the
    # picture sits at the root of the run's artifacts
    client = mlflow.MlflowClient()
    for family in ("test/nll", "test/acc", "test/baseline/bigram/nll", "test/margin", "test/voiced/nll"):
        curve = {m.step: m.value for m in client.get_metric_history(run_id, f"{family}_by_horizon")}
        assert curve == {h: pytest.approx(metrics[f"{family}_h{h}"]) for h in (1, 2, 3)}, family
    assert "horizons_test.png" in [a.path for a in client.list_artifacts(run_id)]
    assert f"/#/experiments/{mlflow.get_run(run_id).info.experiment_id}/runs/{run_id}?workflowType=machine_learning" \
        in out.splitlines()[-1]
    # probes: every label the corpus has is probed (or says why not), printed and in summary.json
    assert "Linear probes" in out and set(summary["probes"]) >= {"speaker", "language"}
    for label, report in summary["probes"].items():
        if "skipped" not in report:
            assert 0 <= report["latent"]["acc"] <= 1 and metrics[f"test/probe/{label}/acc"] == report["latent"]["acc"]


def test_conditioned_forecasts_read_each_utterances_own_labels_beside_the_unconditioned_ones(tmp_path, capsys,
                                                                                            monkeypatch):
    from pydreamer.models.conditioning import Conditioning

    run_id = _run_with_checkpoint(tmp_path, {"train": 6, "val": 2, "test": 3},
                                  conditions=[("language", ["de", "en"]), ("voice", ["m0", "m1", "m2"])])
    asked = []
    ids = Conditioning.ids
    monkeypatch.setattr(Conditioning, "ids", lambda self, values: asked.append(dict(values)) or ids(self, values))
    assert _evaluate(tmp_path, "--run", run_id, "--no_probes", "--no_tsne", "--no_log_mel") == 0
    assert asked == []  # plain: every utterance unconditioned
    assert _evaluate(tmp_path, "--run", run_id, "--conditioned", "--no_log_mel") == 0
    # test utterances 0..2: their own language; voice m0 for the first, f9 (never in train) is none for the others
    assert asked == [{"language": "de", "voice": "m0"}, {"language": "en"}, {"language": "de"}]
    import mlflow

    metrics = mlflow.get_run(run_id).data.metrics
    assert np.isfinite(metrics["test_conditioned/nll_h1"]) and np.isfinite(metrics["test/nll_h1"])
    assert metrics["test_conditioned/nll_h1"] != metrics["test/nll_h1"]  # the label embeddings moved the forecast
    assert metrics["test_conditioned/baseline/ngram/nll_h1"] == metrics["test/baseline/ngram/nll_h1"]  # same cells
    summary = json.loads((tmp_path / "replay" / "evaluation" / "test_conditioned" / "summary.json").read_text())
    assert summary["conditioned"] is True and summary["split"] == "test"
    capsys.readouterr()
    plain = _run_with_checkpoint(tmp_path / "plain", {"train": 6, "val": 2, "test": 2})
    with pytest.raises(SystemExit) as e:
        main(["--mlflow_dir", str(tmp_path / "plain" / "mlruns"), "--run", plain, "--conditioned"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "trained without conditioning" in err and len(err.strip().splitlines()) == 1


def test_per_horizon_metrics_become_curves_with_the_horizon_as_step():
    from pydreamer.evaluation_report import horizon_curves

    metrics = {"test/nll_h1": 3.0, "test/nll_h12": 4.0, "test/baseline/ngram_cache/nll_h2": 5.0,
               "test/log_mel/margin/lsd_h1": 0.5, "test/mel_nll_h3": 1.0, "test/probe/speaker/acc": 0.9}
    assert horizon_curves(metrics) == {"test/nll_by_horizon": {1: 3.0, 12: 4.0},
                                       "test/baseline/ngram_cache/nll_by_horizon": {2: 5.0},
                                       "test/log_mel/margin/lsd_by_horizon": {1: 0.5},
                                       "test/mel_nll_by_horizon": {3: 1.0}}


def test_evaluate_prefers_the_best_checkpoint_unless_told(tmp_path, capsys):
    run_id = _run_with_checkpoint(tmp_path, {"train": 6, "val": 2, "test": 2})
    conf = load_config(["defaults", "audio", "tiny"], ["--codebook_size", "32"])
    save_checkpoint(checkpoint_path(tmp_path / "replay", "best"), Dreamer(conf, 32, 4, 1), None, 3,
                    extra={"val_nll_h1": 4.0})
    summary = tmp_path / "replay" / "evaluation" / "test" / "summary.json"
    assert _evaluate(tmp_path, "--run", run_id) == 0
    assert json.loads(summary.read_text())["checkpoint"] == "best.pt"
    assert json.loads(summary.read_text())["step"] == 3
    capsys.readouterr()
    assert _evaluate(tmp_path, "--run", run_id, "--checkpoint", "latest") == 0
    assert json.loads(summary.read_text())["step"] == 7
    # the second evaluation's curves differ from the first's: logged beside them, and said so
    assert "this evaluation's are logged beside them, e.g. test/nll_by_horizon as test/nll_by_horizon_2" in \
        capsys.readouterr().err


def test_samples_0_scores_with_the_world_models_fair_number(tmp_path):
    from pydreamer.models.rssm_world_model import RSSMWorldModel
    from pydreamer.models.transformer import TransformerWorldModel

    assert TransformerWorldModel.fair_samples > RSSMWorldModel.fair_samples >= 8  # measured, see bench/samples.py
    run_id = _run_with_checkpoint(tmp_path, {"train": 6, "val": 2, "test": 2})
    assert _evaluate(tmp_path, "--run", run_id, "--samples", "0", "--no_probes") == 0  # the short name of before
    summary = json.loads((tmp_path / "replay" / "evaluation" / "test" / "summary.json").read_text())
    assert summary["samples"] == summary["fair_samples"] == RSSMWorldModel.fair_samples and "probes" in summary


@pytest.mark.parametrize("case, message", [
    ("unknown run", "no MLflow run 'nosuchrun'"),
    ("no checkpoint", "has no checkpoint"),
    ("missing split", "no token shards for split 'test'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, message):
    if case == "unknown run":
        setup_mlflow({"mlflow_dir": str(tmp_path / "mlruns"), "experiment": "audio-world-model"})
        run_id = "nosuchrun"
    else:
        run_id = _run_with_checkpoint(tmp_path, {"train": 6, "val": 2}, checkpoint=case != "no checkpoint")
    with pytest.raises(SystemExit) as e:
        _evaluate(tmp_path, "--run", run_id)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_run_from_before_a_key_gets_the_old_behaviour(tmp_path):
    """A run logged before `forecast_head` existed was trained without the head: evaluating it must
    build the model it trained, not today's default."""
    from pydreamer.runs import run_config

    class Run:
        class data:
            params = {"world_model": "rssm", "hidden_dim": "64"}

    conf = run_config(Run)
    assert conf["forecast_head"] is False and conf["hidden_dim"] == 64
    Run.data.params["forecast_head"] = "True"
    assert run_config(Run)["forecast_head"] is True


def test_a_run_from_before_the_vocoder_dreams_as_it_did():
    """Bug: dream's own table of old-run defaults was never read (run_config fills every key first), so a
    run made before `vocoder` dreamt through HiFi-GAN and scored DNSMOS; it must keep Griffin-Lim, no DNSMOS."""
    import argparse

    from pydreamer.dreams.command import CONFIG_DEFAULTS, fill_from_config
    from pydreamer.runs import run_config

    class Run:
        class data:
            params = {"world_model": "rssm"}

    a = fill_from_config(argparse.Namespace(**{option: None for option in CONFIG_DEFAULTS}), run_config(Run))
    assert (a.vocoder, a.perceptual, a.imagination) == ("griffinlim", False, "latent")
    Run.data.params.update(vocoder="hifigan", dream_perceptual="True")
    a = fill_from_config(argparse.Namespace(**{option: None for option in CONFIG_DEFAULTS}), run_config(Run))
    assert (a.vocoder, a.perceptual) == ("hifigan", True)


def test_the_options_are_named_as_the_config_keys_and_show_their_defaults(capsys):
    """One name per setting: `--evaluate_horizons` is the config key evaluate_horizons, its default the run's;
    the short names of before still parse but are not listed; every option says its default."""
    import re

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    entries = {entry.split()[0].rstrip(","): " ".join(entry.split())
               for entry in re.split(r"\n(?=  -)", out.split("options:", 1)[1]) if entry.strip()}
    for key in ("evaluate_horizons", "evaluate_samples", "evaluate_imagination", "evaluate_log_mel_starts", "seed"):
        assert f"(default: the run's {key})" in entries[f"--{key}"], key
    assert not {"--horizons", "--samples", "--imagination", "--log_mel_starts"} & set(entries)
    for flag, text in entries.items():
        assert "default" in text or flag in ("-h", "--run", "--no_probes", "--no_tsne", "--no_log_mel", "--conditioned"), text
