"""Conditioned world models: label embeddings through the action path, label dropout, checkpoints, alignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pydreamer.dreams.alignment import LabelClassifier, RealClips, alignment, alignment_markdown, alignment_metrics, \
    clip_features, prompt_kept
from pydreamer.models import Dreamer
from pydreamer.models.checkpoint import build_model, load_checkpoint, restore, save_checkpoint
from pydreamer.models.conditioning import Conditioning, UnknownCondition
from pydreamer.models.functions import guided_logits
from runtime.config import ConfigError, load_config
from tokenizer.layout import DataLayout
from tokenizer.shards import ShardWriter

VOCAB = [("language", ["de", "en"]), ("voice", ["a", "b", "c"])]


def test_ids_embeddings_and_unknown_values():
    c = Conditioning(VOCAB, 8, 0.0)
    assert c.ids({"language": "en"}).tolist() == [2, 0]  # a label not given is none (0)
    assert c.ids({"voice": "c", "language": "de"}).tolist() == [1, 3]
    assert c.embed(torch.zeros(5, 3, 2, dtype=torch.long)).shape == (5, 3, 8)
    with pytest.raises(UnknownCondition, match="unknown language 'fr'; the model knows de, en"):
        c.ids({"language": "fr"})
    with pytest.raises(UnknownCondition, match="not conditioned on 'kind'; its labels: language, voice"):
        c.ids({"kind": "counting"})


def test_label_dropout_drops_whole_sequences_at_its_rate():
    c = Conditioning(VOCAB, 4, 0.25)
    ids = torch.ones(6, 4000, 2, dtype=torch.long)
    dropped = c.drop(ids, torch.Generator().manual_seed(0))
    assert (dropped == dropped[0]).all()  # the same over the chunk
    assert abs((dropped[0] == 0).float().mean().item() - 0.25) < 0.03


def _batch(T: int, B: int, language: torch.Tensor) -> dict:
    """Each lane repeats one token: 1 for language 1 (de), 2 for language 2 (en)."""
    tokens = language.view(1, B, 1).expand(T, B, 2).clone()
    action = torch.zeros(T, B, 1)
    action[1:, :, 0] = 1
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0] = True
    return {"tokens": tokens, "action": action, "reward": torch.zeros(T, B), "terminal": torch.zeros(T, B),
            "reset": reset, "condition": torch.stack([language, torch.zeros_like(language)], -1).expand(T, B, 2)}


@pytest.mark.parametrize("world_model", ["rssm", "rssm+heads", "transformer", "maskgit"])
def test_a_conditioned_model_dreams_its_condition_and_dropout_leaves_an_unconditioned_one(world_model):
    """Language decides the tokens. After training with label dropout the first dreamt step follows the condition
    given, and the unconditioned model (none) draws both."""
    torch.manual_seed(0)
    world_model, _, heads = world_model.partition("+")
    conf = load_config(["defaults", "tiny"], ["--world_model", world_model, "--context_steps", "16",
                                              "--condition", "language,voice", "--condition_dropout", "0.3",
                                              "--adam_lr", "3e-3", "--condition_heads", str(bool(heads)).lower()])
    model = Dreamer(conf, 4, 2, 1, conditions=VOCAB)
    opts = model.make_optimizers(conf)
    losses = []
    for step in range(1, 121):
        language = torch.randint(1, 3, (16,))
        _, metrics = model.training_step(_batch(6, 16, language), model.initial_state(16), opts, step)
        losses.append(metrics.get("loss_model", metrics.get("loss_tokens")))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    model.eval()
    for value, token in (("de", 1), ("en", 2)):
        with model.wm.conditioned({"language": value}):
            first = model.wm.imagine(model.wm.as_tokens(None), 1, 64, seed=1)[:, 0]
        assert (first == token).float().mean() > 0.8, value
    if world_model == "maskgit":  # its decoding keeps the most confident draws: the marginal, not the dreams, is mixed
        wm = model.wm
        free = torch.softmax(wm.block.masked_logits(wm._conditioned(wm.transformer.norm(wm.start)[None])), -1)[0, 0, 0, 1]
    else:
        free = (model.wm.imagine(model.wm.as_tokens(None), 1, 64, seed=1)[:, 0] == 1).float().mean()
    assert 0.15 < free < 0.85  # none: both languages' tokens


def test_guided_logits_move_the_unconditioned_distribution_towards_the_conditioned_one():
    cond, uncond = torch.log(torch.tensor([0.6, 0.3, 0.1])), torch.log(torch.tensor([0.2, 0.4, 0.4]))
    lanes = torch.stack([cond, uncond])  # one conditioned lane, then the same lane unconditioned
    assert torch.allclose(torch.softmax(guided_logits(lanes, 1.0), -1)[0], cond.exp())
    assert torch.allclose(torch.softmax(guided_logits(lanes, 0.0), -1)[0], uncond.exp())
    want = torch.softmax(uncond + 3.0 * (cond - uncond), -1)  # p_u (p_c / p_u)^3, renormalized
    assert torch.allclose(torch.softmax(guided_logits(lanes, 3.0), -1)[0], want)
    assert want[0] > 0.95


@pytest.mark.parametrize("world_model,imagination,head,steps", [
    ("rssm", "tokens", "independent", 10), ("rssm", "latent", "independent", 10),
    ("rssm", "tokens", "autoregressive", 10), ("rssm+heads", "tokens", "independent", 10),
    ("rssm+heads", "latent", "independent", 10), ("transformer", "tokens", "independent", 60)])
def test_guidance_pushes_a_weakly_conditioned_model_to_its_condition_and_scale_0_unconditions_it(world_model,
                                                                                                 imagination, head,
                                                                                                 steps):
    """Trained briefly, the conditioned model follows its condition only partly; guidance above 1 makes its dreams
    follow it, 1 changes nothing, 0 dreams as the unconditioned model does."""
    torch.manual_seed(0)
    world_model, _, heads = world_model.partition("+")
    conf = load_config(["defaults", "tiny"], ["--world_model", world_model, "--context_steps", "16",
                                              "--condition", "language", "--condition_dropout", "0.5",
                                              "--adam_lr", "3e-3", "--token_head", head,
                                              "--condition_heads", str(bool(heads)).lower()])
    model = Dreamer(conf, 4, 2, 1, conditions=VOCAB[:1])
    opts = model.make_optimizers(conf)
    for step in range(1, steps + 1):  # a few steps: the condition is heard, but weakly
        model.training_step(_batch(6, 16, torch.randint(1, 3, (16,))), model.initial_state(16), opts, step)
    model.eval()
    wm = model.wm
    wm.imagine_by(imagination)

    def share_of_de(scale: float | None, steps: int = 3) -> float:
        if scale is not None:
            assert wm.guide(scale)
        with wm.conditioned({"language": "de"} if scale is not None else None):
            dreams = wm.imagine(wm.as_tokens(None), steps, 256, seed=3)
        return (dreams == 1).float().mean().item()

    plain = share_of_de(1.0)
    wm.guide(1.0)
    with wm.conditioned({"language": "de"}):
        assert wm.guided_lanes(4) is None  # scale 1: the very dream of the conditioned model
    guided, free, unguided_free = share_of_de(4.0), share_of_de(0.0), share_of_de(None)
    assert guided > plain + 0.05, (plain, guided)
    assert abs(free - unguided_free) < 0.04 and free < plain, (free, unguided_free, plain)
    with pytest.raises(ValueError, match="0 or more"):
        wm.guide(-1.0)


@pytest.mark.parametrize("heads", [False, True])
def test_with_condition_heads_the_prior_and_forecast_head_read_the_condition_beside_h(heads):
    """condition_heads: at one deterministic state, another condition changes the prior and the forecast; without
    it the condition reaches them only through the GRU, so at one state they are the same."""
    torch.manual_seed(0)
    conf = load_config(["defaults", "tiny"], ["--condition", "language", "--condition_heads", str(heads).lower()])
    wm = Dreamer(conf, 4, 2, 1, conditions=VOCAB[:1]).wm
    deter = torch.randn(3, wm.rssm.deter_dim)
    actions = [wm.null_action(3, "cpu", ids=torch.full((3, 1), i)) for i in (1, 2)]
    priors = [wm.rssm.prior_logits(deter, a) for a in actions]
    forecasts = [wm.predict_tokens(wm.rssm.posterior_step(deter, torch.zeros(3, wm.encoder.out_dim)), a)
                 for a in actions]
    assert (not torch.allclose(*priors)) == heads and (not torch.allclose(*forecasts)) == heads
    assert wm.rssm.condition_dim == (wm.conditioning.dim if heads else 0)


def test_models_without_guidance_say_so():
    conf = load_config(["defaults", "tiny"], ["--world_model", "maskgit", "--condition", "language"])
    assert not Dreamer(conf, 4, 2, 1, conditions=VOCAB[:1]).wm.guide(3.0)
    assert not Dreamer(load_config(["defaults", "tiny"]), 4, 2, 1).wm.guide(3.0)  # unconditioned: nothing to guide


def test_a_checkpoint_rebuilds_the_conditioned_model_with_its_vocabulary(tmp_path):
    conf = load_config(["defaults", "tiny"], ["--condition", "language,voice"])
    model = Dreamer(conf, 8, 2, 1, conditions=VOCAB)
    save_checkpoint(tmp_path / "c.pt", model, None, 3)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    again = build_model(ckpt, load_config(["defaults", "tiny"]))  # today's config need not say it
    assert restore(ckpt, again) == 3 and again.conditions == VOCAB
    assert again.wm.conditioning.ids({"voice": "b"}).tolist() == [0, 2]
    plain = Dreamer(load_config(["defaults", "tiny"]), 8, 2, 1)
    with pytest.raises(ValueError, match="conditions"):
        restore(ckpt, plain)
    with pytest.raises(UnknownCondition, match="trained without conditioning"):
        with plain.wm.conditioned({"language": "de"}):
            pass


def test_a_conditioned_checkpoint_from_before_condition_heads_rebuilds_and_dreams(tmp_path):
    """Bug: checkpoints written before the key existed were refused ("trained as another model: condition_heads
    None"). Without the key they are the model whose condition reaches the heads through the GRU alone."""
    conf = load_config(["defaults", "tiny"], ["--condition", "language"])
    model = Dreamer(conf, 8, 2, 1, conditions=VOCAB[:1])
    save_checkpoint(tmp_path / "c.pt", model, None, 3)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    ckpt["model_args"]["conf"].pop("condition_heads")  # as written before the key
    heads_on = load_config(["defaults", "tiny"], ["--condition", "language", "--condition_heads", "true"])
    again = build_model(ckpt, heads_on)
    assert restore(ckpt, again) == 3 and again.wm.rssm.condition_dim == 0
    assert restore(ckpt, Dreamer(conf, 8, 2, 1, conditions=VOCAB[:1])) == 3
    with pytest.raises(ValueError, match="condition_heads"):
        restore(ckpt, Dreamer(heads_on, 8, 2, 1, conditions=VOCAB[:1]))


def test_bad_condition_names_are_refused_at_load():
    with pytest.raises(ConfigError, match="'condition'.*label names without repeats"):
        load_config(["defaults", "tiny"], ["--condition", "Language"])
    with pytest.raises(ConfigError, match="'condition'"):
        load_config(["defaults", "tiny"], ["--condition", "language,language"])


def _clip(kind: int, seed: int) -> np.ndarray:
    """A log-mel [120, 80] whose energy sits low (kind 0) or high (kind 1) in the bands."""
    rng = np.random.default_rng(seed)
    bands = np.arange(80)
    shape = -((bands - (20 if kind == 0 else 60)) / 10.0) ** 2
    return (shape[None, :] + rng.normal(0, 3, (120, 80)) - 40).astype(np.float32)


def _labelled_mels(root) -> None:
    """40 train clips in de/en and 6 test clips in de/en/fr, each language its own band shape (fr like de)."""
    layout = DataLayout.of(root)
    for split, n in (("train", 40), ("test", 6)):
        with ShardWriter(layout.mels(split)) as w:
            for i in range(n):
                value = i % 2 if split == "train" else i % 3
                db = _clip(value % 2, i + (0 if split == "train" else 500))
                mean, std = float(db.mean()), float(db.std())
                w.add(per_step={"mel": ((db - mean) / std).astype("float16")},
                      per_utterance={"utterance_id": f"u{i}", "mean": mean, "std": std,
                                     "label_language": ("de", "en", "fr")[value]})


def test_the_classifier_hears_the_label_of_clips_like_its_real_ones_and_chance_otherwise(tmp_path):
    _labelled_mels(tmp_path)
    layout = DataLayout.of(tmp_path)
    clf = LabelClassifier.fit(layout, "language", ["de", "en"])
    assert clf.real_accuracy == 1.0 and clf.n_held_out == 8
    assert clf.n_test == 4 and clf.test_accuracy == 1.0  # the test clips in 'fr' (not a train value) left out
    right = alignment(clf, {"de": [_clip(0, 100 + i) for i in range(6)], "en": [_clip(1, 200 + i) for i in range(6)]})
    assert right["acc"] == 1.0 and right["chance"] == 0.5
    swapped = alignment(clf, {"de": [_clip(1, 300 + i) for i in range(6)]})
    assert swapped["acc"] == 0.0 and swapped["per_value"]["de"]["heard_as"] == {"en": 6}
    metrics = alignment_metrics({"language": right})
    assert metrics["dream/condition/language/acc"] == 1.0 and metrics["dream/condition/language/over_chance"] == 2.0
    assert clip_features(_clip(0, 1)).shape == clip_features(_clip(0, 1)[:30]).shape
    with pytest.raises(ValueError, match="carry 1 of the 2 values"):
        LabelClassifier.fit(layout, "language", ["de", "fr"])
    assert np.isnan(clf.tokenized_accuracy) and "dream/condition/language/tokenized_acc" not in metrics


def test_the_classifier_reports_what_perfect_tokens_of_real_clips_score(tmp_path):
    """A tokenizer that keeps the label's cue (a blur across bands) leaves real clips recognised; one that erases
    it (every clip the same shape) takes tokenized clips to chance, while the recorded ones are still named."""
    _labelled_mels(tmp_path)
    layout = DataLayout.of(tmp_path)
    blur = lambda db: np.convolve(db.mean(0), np.ones(5) / 5, "same")[None].repeat(len(db), 0) + db * 0.1
    kept = LabelClassifier.fit(layout, "language", ["de", "en"], roundtrip=blur)
    assert kept.tokenized_accuracy == 1.0 and kept.tokenized_test_accuracy == 1.0 and kept.test_accuracy == 1.0
    erase = lambda db: _clip(0, int(abs(db.sum())) % 1000)
    lost = LabelClassifier.fit(layout, "language", ["de", "en"], roundtrip=erase)
    assert lost.tokenized_accuracy <= 0.75 and lost.real_accuracy == 1.0
    result = alignment(lost, {"de": [_clip(0, 100 + i) for i in range(4)]})
    assert result["tokenized_acc"] == lost.tokenized_accuracy
    metrics = alignment_metrics({"language": result})
    assert metrics["dream/condition/language/tokenized_test_acc"] == lost.tokenized_test_accuracy
    assert "through the tokenizer" in alignment_markdown({"language": result})


def test_completions_are_scored_on_keeping_their_prompts_value(tmp_path):
    _labelled_mels(tmp_path)
    clf = LabelClassifier.fit(DataLayout.of(tmp_path), "language", ["de", "en"])
    de, en = ([_clip(k, 700 + i) for i in range(2)] for k in (0, 1))
    kept = prompt_kept(clf, [("de", de, _clip(0, 800)), ("en", en, None), ("fr", de, _clip(0, 801)),
                             ("en", de, _clip(1, 802))])  # fr: no train value; the last prompt's dreams lost it
    assert kept["n"] == 6 and kept["acc"] == 4 / 6 and kept["true_n"] == 2 and kept["true_acc"] == 1.0
    result = {**alignment(clf, {"de": de}), "completions": kept}
    assert alignment_metrics({"language": result})["dream/condition/language/completion_acc"] == 4 / 6
    assert "Completions of real prompts (dreamt unconditioned) are named as their prompt's language 66.7%" \
        in alignment_markdown({"language": result})
    assert RealClips.read(DataLayout.of(tmp_path), "test").label_of("u2", "language") == "fr"
    few = RealClips.read(DataLayout.of(tmp_path), "train", max_clips=5)  # a large split: a random 5 read, all known
    assert len(few.recorded) == 5 and len(few.labels) == 5 and few.tokenized is None
    assert [few.label_of(f"u{i}", "language") for i in range(4)] == ["de", "en", "de", "en"]
