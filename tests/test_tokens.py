"""The token corpus owner: spec from meta.json (or the shards), lazy index, validated reads."""
import json

import numpy as np
import pytest

from tests.conftest import corpus_labels, make_token_corpus
from tokenizer.layout import DataLayout
from tokenizer.tokens import (ConditionError, MissingTokensError, ShardError, TokenSpec, TokenSplit, condition_vocabulary,
                              read_token_spec, write_token_meta)


def test_spec_round_trips_through_meta_json(tmp_path):
    layout = DataLayout.of(tmp_path)
    write_token_meta(layout, {"codebook_size": 128, "tokens_per_step": 4, "steps_per_second": 25.0,
                              "mel_mean": -1.5, "mel_std": 2.0, "other": "kept"})
    spec = read_token_spec(layout)
    assert spec == TokenSpec(128, 4, 25.0, -1.5, 2.0)
    assert spec.bits_per_second == 25 * 4 * 7
    assert json.loads(layout.token_meta.read_text())["other"] == "kept"


def test_meta_without_the_required_keys_is_refused(tmp_path):
    with pytest.raises(ValueError, match="steps_per_second"):
        write_token_meta(DataLayout.of(tmp_path), {"codebook_size": 8, "tokens_per_step": 2})


def test_without_meta_the_shards_say_the_spec(tmp_path):
    make_token_corpus(tmp_path, {"train": 3}, tokens_per_step=2, codebook_size=16, meta=False)
    spec = read_token_spec(DataLayout.of(tmp_path), codebook_size=64)
    assert (spec.tokens_per_step, spec.codebook_size) == (2, 64)
    with pytest.raises(MissingTokensError, match="python -m tokenizer"):
        read_token_spec(DataLayout.of(tmp_path / "empty"))


def test_split_index_and_reads(tmp_path):
    make_token_corpus(tmp_path, {"train": 7}, shard_rows=50)
    layout = DataLayout.of(tmp_path)
    corpus = TokenSplit(layout, "train", read_token_spec(layout))
    assert len(corpus) == 7 and len(corpus.shards) > 1
    utts = list(corpus)
    assert [u["utterance_id"] for u in utts] == [f"train-{i:03d}" for i in range(7)]
    for u, n in zip(utts, corpus.lengths):
        assert u["tokens"].shape == (n, 4) and u["tokens"].dtype == np.int64 and u["voice"].shape == (n,)
    assert corpus.utterance(corpus.find("train-004"))["utterance_id"] == "train-004"
    with pytest.raises(ValueError, match="not in split 'train'"):
        corpus.find("nope")


def test_a_bad_shard_is_named_and_the_rest_kept(tmp_path):
    make_token_corpus(tmp_path, {"train": 8}, shard_rows=50)
    layout = DataLayout.of(tmp_path)
    paths = sorted(layout.tokens("train").glob("shard-*.npz"))
    paths[0].write_bytes(b"not a zip")
    corpus = TokenSplit(layout, "train")
    assert str(paths[0]) in corpus.skipped_shards
    assert len(list(corpus)) == len(corpus) > 0


def test_tokens_outside_the_codebook_raise_naming_the_shard(tmp_path):
    make_token_corpus(tmp_path, {"train": 2}, codebook_size=32)
    corpus = TokenSplit(DataLayout.of(tmp_path), "train", TokenSpec(8, 4))
    with pytest.raises(ShardError, match=r"shard-00000\.npz: tokens outside"):
        corpus.utterance(0)


# ---- conditioning labels: listing -> prepare's log-mel shards -> encode's token shards and meta.json ----

def _prepare_with_labels(layout: DataLayout, conf) -> None:
    """Log-mel shards as the prepare stage writes them (its `_keep`), for utterances with and without labels."""
    from tokenizer.corpora import UtteranceSource, label_names, make_labels
    from tokenizer.prepare import _keep
    from tokenizer.shards import ShardWriter

    recs = {"train": [make_labels(language="de", voice="m1", kind="counting"), make_labels(language="en", voice="m2"),
                      make_labels(language="de", voice="m1")],
            "val": [make_labels(language="fr", voice="f9", kind="sentence")], "test": [()]}
    records = [(split, UtteranceSource(f"{split}-{i}", "spk", f"/{split}{i}.wav", labels=labels))
               for split, all_labels in recs.items() for i, labels in enumerate(all_labels)]
    names = label_names(r for _, r in records)
    assert names == ["kind", "language", "voice"]
    rng = np.random.default_rng(0)
    writers = {s: ShardWriter(layout.mels(s), conf["shard_frames"]) for s in recs}
    for i, (split, rec) in enumerate(records):
        n = 40 + 8 * i
        feats = {"mel": rng.standard_normal((n, conf["n_mels"])).astype(np.float32), "voice": np.ones(n, np.float32),
                 "mean": -30.0, "std": 10.0, "band_bins": 80}
        _keep(i, {"ok": True, "rec": rec, "feats": feats, "notes": [], "seconds": n / 100}, {rec.utterance_id: split},
              writers, names)
    for w in writers.values():
        w.close()


def test_labels_survive_prepare_and_encode_and_meta_lists_the_train_values(tmp_path, conf):
    import torch

    from tokenizer.encode import encode
    from tokenizer.shards import iter_utterances
    from tokenizer.vqvae import VQVAE, save_vqvae

    layout = DataLayout.of(tmp_path)
    conf.min_steps, conf.device = 2, "cpu"
    _prepare_with_labels(layout, conf)
    mels = {u["utterance_id"]: u for s in ("train", "val", "test") for u in iter_utterances(layout.mels(s))}
    assert mels["train-1"]["label_kind"] == "" and mels["train-1"]["label_language"] == "en"
    assert {k for k in mels["test-0"] if k.startswith("label_")} == {"label_kind", "label_language", "label_voice"}
    torch.manual_seed(0)
    save_vqvae(layout.vqvae, VQVAE(channels=16, code_dim=8, codebook_size=32, tokens_per_step=2, time_downsample=4,
                                   res_blocks=1, n_mels=conf["n_mels"]))
    meta = encode(conf, layout)

    # the vocabulary is the train split's: fr, f9 and sentence are heard in val only
    assert meta["labels"] == {"kind": ["counting"], "language": ["de", "en"], "voice": ["m1", "m2"]}
    assert json.loads(layout.token_meta.read_text())["labels"] == meta["labels"]
    val = TokenSplit(layout, "val")
    assert val.utterance(0)["labels"] == {"kind": "sentence", "language": "fr", "voice": "f9"}
    train = TokenSplit(layout, "train")
    assert list(train.labels["kind"]) == ["counting", "", ""]
    assert train.utterance(train.find("train-1"))["labels"] == {"language": "en", "voice": "m2"}
    assert TokenSplit(layout, "test").utterance(0)["labels"] == {}
    assert condition_vocabulary(layout, ["voice", "language"]) == [("voice", ["m1", "m2"]), ("language", ["de", "en"])]


def test_condition_vocabulary_refuses_unknown_labels_in_one_line(tmp_path, labelled_token_dir):
    layout = DataLayout.of(labelled_token_dir)
    assert condition_vocabulary(layout, []) == []
    assert condition_vocabulary(DataLayout.of(tmp_path / "nowhere"), ()) == []  # nothing read
    assert condition_vocabulary(layout, ["kind"]) == [("kind", ["counting"])]
    with pytest.raises(ConditionError) as e:
        condition_vocabulary(layout, ["language", "gender"])
    msg = str(e.value)
    assert "\n" not in msg and str(labelled_token_dir) in msg and "'gender'" in msg and "kind, language, voice" in msg

    old = make_token_corpus(tmp_path / "old", {"train": 3})  # prepared before labels were kept
    with pytest.raises(ConditionError) as e:
        condition_vocabulary(DataLayout.of(old), ["language"])
    msg = str(e.value)
    assert "\n" not in msg and str(old) in msg and "no labels" in msg and "mels/ and tokens/" in msg
    with pytest.raises(ConditionError, match="python -m tokenizer"):
        condition_vocabulary(DataLayout.of(tmp_path / "nowhere"), ["language"])


def test_a_corpus_without_labels_still_reads(tmp_path, labelled_token_dir):
    make_token_corpus(tmp_path, {"train": 3})
    corpus = TokenSplit(DataLayout.of(tmp_path), "train")
    assert corpus.labels == {} and corpus.utterance(0)["labels"] == {}
    labelled = TokenSplit(DataLayout.of(labelled_token_dir), "val")
    assert [labelled.utterance(u)["labels"] for u in range(len(labelled))] == [corpus_labels("val", u) for u in range(3)]
