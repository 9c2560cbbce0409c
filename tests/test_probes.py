"""Linear probes of latent features: a separable label is found, a random one is not, token counts tell two token
distributions apart, labels the test split cannot score are said to be so, and a tiny world model goes through."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pydreamer.models import Dreamer
from pydreamer.probes import (corpus_labels, holdout_split, probe_features, probe_metrics, probe_report, run_probes,
                              synth_kind, token_count_features)
from runtime.config import load_config

torch.set_num_threads(1)
K, G = 16, 2


def _blobs(n_per_class: int, n_classes: int, dim: int, seed: int, spread: float = 0.3):
    """Separable features: class c sits at a distant random centre."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 3, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(0, spread, (len(y), dim)), [f"c{c}" for c in y]


def test_separable_features_are_probed_perfectly_and_chance_is_the_majority_rate():
    xtr, ytr = _blobs(20, 3, 8, seed=0)
    xte, yte = _blobs(10, 3, 8, seed=1)
    xte, yte = xte[:25], yte[:25]  # 10, 10, 5 per class: majority rate 0.4
    r = run_probes(xtr, ytr, xte, yte)
    assert r["acc"] > 0.95
    assert r["chance"] == pytest.approx(0.4) and r["chance_uniform"] == pytest.approx(1 / 3)
    assert (r["n_train"], r["n_test"], r["n_classes"], r["n_test_classes"], r["n_test_unseen"]) == (60, 25, 3, 3, 0)
    assert r["cv_folds"] == 5 and r["C"] > 0


def test_random_features_score_near_chance():
    rng = np.random.default_rng(0)
    ytr, yte = [f"c{i % 2}" for i in range(200)], [f"c{i % 2}" for i in range(400)]
    r = run_probes(rng.normal(size=(200, 20)), ytr, rng.normal(size=(400, 20)), yte)
    assert r["chance"] == pytest.approx(0.5)
    assert abs(r["acc"] - 0.5) < 0.1


def test_test_labels_unseen_in_train_are_left_out_and_counted():
    xtr, ytr = _blobs(10, 2, 4, seed=0)
    xte, yte = _blobs(5, 3, 4, seed=1)  # class c2 never occurs in train
    r = run_probes(xtr, ytr, xte, yte)
    assert (r["n_test"], r["n_test_unseen"], r["n_classes"]) == (10, 5, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        run_probes(xtr[:10], ytr[:10], xte, yte)


def _utterances(n: int, seed: int, low: bool) -> list[np.ndarray]:
    """Utterances whose tokens come from the lower or the upper half of the codebook (mostly)."""
    rng = np.random.default_rng(seed)
    p = np.where(np.arange(K) < K // 2, 3.0, 1.0) if low else np.where(np.arange(K) < K // 2, 1.0, 3.0)
    return [rng.choice(K, size=(int(rng.integers(10, 30)), G), p=p / p.sum()) for _ in range(n)]


def test_token_counts_are_per_position_histograms_that_separate_two_distributions():
    f = token_count_features([np.array([[0, 1], [0, 3]])], n_tokens=4, tokens_per_step=2)
    np.testing.assert_allclose(f[0], [1, 0, 0, 0, 0, 0.5, 0, 0.5])
    tr = _utterances(20, 0, True) + _utterances(20, 1, False)
    te = _utterances(10, 2, True) + _utterances(10, 3, False)
    ytr, yte = ["low"] * 20 + ["high"] * 20, ["low"] * 10 + ["high"] * 10
    r = run_probes(token_count_features(tr, K, G), ytr, token_count_features(te, K, G), yte)
    assert r["acc"] >= 0.9 and r["chance"] == pytest.approx(0.5)


def test_holdout_keeps_every_class_in_train_and_holds_speakers_out_where_it_can():
    langs = ["en"] * 6 + ["de"] * 6
    spk = ["en+a"] * 3 + ["en+b"] * 3 + ["de+a"] * 3 + ["de+b"] * 3
    tr, te = holdout_split(langs, spk, fraction=0.5)
    assert set(np.array(langs)[tr]) == set(np.array(langs)[te]) == {"en", "de"}
    assert not set(np.array(spk)[tr]) & set(np.array(spk)[te])  # speaker-disjoint
    assert holdout_split(spk, spk) is None  # a speaker label cannot hold out whole speakers
    tr, te = holdout_split(spk, None)
    assert len(te) == 4 and set(np.array(spk)[tr]) == set(spk)


def test_synth_kind_follows_the_plan_and_refuses_a_wrong_voice_list():
    from tokenizer.synth import plan_synth_corpus, synth_voices

    conf = {"seed": 3, "synth_minutes": 0.5, "synth_languages": ["en", "de"], "synth_voices_per_language": 2}
    voices = synth_voices(conf["synth_languages"], conf["synth_voices_per_language"])
    plan = plan_synth_corpus(conf)
    assert [synth_kind(u.utterance_id, voices) for u in plan] == [u.kind for u in plan]
    assert synth_kind(plan[1].utterance_id, voices[::-1]) is None
    assert synth_kind("common_voice_123", voices) is None


def test_corpus_labels_read_the_synthetic_corpus_settings(tmp_path):
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "prepare.json").write_text(json.dumps(
        {"source": "synth", "synth_languages": ["en", "de"], "synth_voices_per_language": 2}))
    labels = corpus_labels(tmp_path)
    u = {"utterance_id": "synth-00001-en+f1", "speaker": "en+f1"}
    assert {k: fn(u) for k, fn in labels.items()} == {"speaker": "en+f1", "language": "en", "kind": "syllables"}
    assert set(corpus_labels(tmp_path / "elsewhere")) == {"speaker", "language"}
    assert labels["language"]({"speaker": "client_42"}) is None


def _tiny_model() -> Dreamer:
    conf = load_config(["defaults", "tiny"])
    torch.manual_seed(0)
    return Dreamer(conf, n_tokens=K, tokens_per_step=G, action_dim=1).eval()


def _records(utts: list[np.ndarray], speakers: list[str]) -> list[dict]:
    return [{"tokens": t, "speaker": s, "utterance_id": f"u{i}"} for i, (t, s) in enumerate(zip(utts, speakers))]


def test_report_of_a_tiny_world_model_probes_skips_and_falls_back_with_reasons():
    model = _tiny_model()
    utts = _utterances(24, 0, True) + _utterances(24, 1, False)
    tr_spk = [f"{'en' if i < 24 else 'de'}+v{i % 3}" for i in range(48)]
    train = _records(utts, tr_spk)
    test = _records(_utterances(6, 2, True) + _utterances(6, 3, False), ["en+t"] * 6 + ["de+t"] * 6)
    labels = {"speaker": lambda u: u["speaker"], "language": lambda u: u["speaker"].split("+")[0],
              "half": lambda u: "low" if u["speaker"].startswith("en") else "high", "absent": lambda u: None}
    report = probe_report(model, train, test, labels, "cpu", max_utterances=40)
    assert report["absent"]["skipped"].startswith("train has 0 class")
    sp = report["speaker"]  # every test speaker is new: scored on held-out utterances of train's speakers
    assert sp["eval_on"] == "train_holdout_utterances" and "unseen in train" in sp["note"]
    assert sp["latent"]["n_classes"] == 6 and sp["latent"]["n_test_unseen"] == 0
    for name in ("language", "half"):
        r = report[name]
        assert r["eval_on"] == "test" and r["latent"]["n_test"] == 12 and r["chance"] == pytest.approx(0.5)
        assert r["token_counts"]["acc"] >= 0.9 and 0.0 <= r["latent"]["acc"] <= 1.0
    metrics = probe_metrics(report, "test")
    assert set(metrics) == {f"test/probe/{n}/{m}" for n in ("speaker", "language", "half")
                            for m in ("acc", "token_counts_acc", "chance", "on_test")}
    assert metrics["test/probe/speaker/on_test"] == 0.0 and metrics["test/probe/half/on_test"] == 1.0
    assert all(np.isfinite(v) for v in metrics.values())


def test_probe_features_are_mean_and_std_of_step_features_and_repeatable():
    model = _tiny_model()
    utts = _utterances(3, 0, True)
    f = probe_features(model, utts, "cpu")
    with torch.no_grad():
        steps = model.wm.step_features(torch.as_tensor(utts[0]))
    assert f.shape == (3, 2 * steps.shape[1])
    np.testing.assert_allclose(f, probe_features(model, utts, "cpu"))
    np.testing.assert_allclose(probe_features(model, utts, "cpu", stats=("mean",)), f[:, :steps.shape[1]])
    with pytest.raises(ValueError, match="stats"):
        probe_features(model, utts, "cpu", stats=("max",))
