"""The token corpus owner: spec from meta.json (or the shards), lazy index, validated reads."""
import json

import numpy as np
import pytest

from tests.conftest import make_token_corpus
from tokenizer.layout import DataLayout
from tokenizer.tokens import MissingTokensError, ShardError, TokenSpec, TokenSplit, read_token_spec, write_token_meta


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
