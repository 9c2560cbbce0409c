"""AudioTokenEnv: the Gymnasium contract, faithful replay of utterances, epochs and worker shares."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.audio_token_env import AudioTokenEnv
from tests.conftest import CODEBOOK, G, corpus_labels, make_token_corpus
from tokenizer.layout import DataLayout
from tokenizer.tokens import MissingTokensError, TokenSplit


def run_episode(env, **reset_kwargs):
    obs, info = env.reset(**reset_kwargs)
    tokens, rewards, infos = [obs["tokens"]], [], [info]
    while True:
        obs, reward, terminated, truncated, info = env.step(0)
        tokens.append(obs["tokens"])
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            return np.stack(tokens), np.array(rewards), terminated, truncated, infos


def test_registered_env_passes_gymnasium_checker(token_dir):
    env = gym.make("AudioTokens-v0", data_dir=token_dir)
    check_env(env.unwrapped)
    assert env.observation_space["tokens"].nvec.tolist() == [CODEBOOK] * G
    assert env.action_space == gym.spaces.Discrete(1)


def test_info_says_the_utterances_labels(labelled_token_dir, token_dir):
    env = gym.make("AudioTokens-v0", data_dir=labelled_token_dir, split="val", order="sequential")
    check_env(env.unwrapped)
    for _ in range(3):
        *_, infos = run_episode(env)
        split, u = infos[0]["utterance_id"].split("-")
        assert all(i["labels"] == corpus_labels(split, int(u)) for i in infos)  # every step; val-000 has no kind
    *_, infos = run_episode(AudioTokenEnv(token_dir))  # a corpus without labels
    assert all(i["labels"] == {} for i in infos)


def test_episode_replays_the_utterance_step_by_step(token_dir):
    env = AudioTokenEnv(token_dir, order="sequential")
    corpus = TokenSplit(DataLayout.of(token_dir), "train")
    for _ in range(3):
        tokens, rewards, terminated, truncated, infos = run_episode(env)
        uid = infos[0]["utterance_id"]
        utt = corpus.utterance(corpus.find(uid))
        assert terminated and not truncated
        np.testing.assert_array_equal(tokens, utt["tokens"])  # one observation per step of the utterance
        np.testing.assert_allclose(rewards, utt["voice"][1:], rtol=1e-6)  # reward = that step's voice activity
        assert [i["step"] for i in infos] == list(range(len(utt["tokens"])))
        assert {i["utterance_id"] for i in infos} == {uid}
        assert tokens.dtype == env.observation_space["tokens"].dtype


def test_reward_none_and_max_steps_truncate(token_dir):
    env = AudioTokenEnv(token_dir, reward="none", max_steps=7)
    tokens, rewards, terminated, truncated, infos = run_episode(env)
    assert truncated and not terminated
    assert len(tokens) == 8 and infos[-1]["step"] == 7
    assert (rewards == 0).all()


def test_one_epoch_visits_every_utterance_once(token_dir):
    ids = TokenSplit(DataLayout.of(token_dir), "train").ids.tolist()
    seq = AudioTokenEnv(token_dir, order="sequential")
    assert [seq.reset()[1]["utterance_id"] for _ in ids] == ids
    shuf = AudioTokenEnv(token_dir, order="shuffle")
    first = [shuf.reset(seed=5 if i == 0 else None)[1]["utterance_id"] for i in range(len(ids))]
    second = [shuf.reset()[1]["utterance_id"] for _ in ids]
    assert sorted(first) == sorted(ids) and sorted(second) == sorted(ids)
    assert first != ids and first != second  # a fresh order every epoch
    again = [shuf.reset(seed=5 if i == 0 else None)[1]["utterance_id"] for i in range(len(ids))]
    assert again == first  # seeded: reproducible


def test_workers_share_the_split_without_duplicates(token_dir):
    ids = set(TokenSplit(DataLayout.of(token_dir), "train").ids.tolist())
    seen = []
    for w in range(3):
        env = AudioTokenEnv(token_dir, worker=w, n_workers=3)
        seen += [env.reset()[1]["utterance_id"] for _ in range(env.n_utterances)]
    assert len(seen) == len(set(seen)) == len(ids) and set(seen) == ids


def test_reset_options_pick_an_utterance(token_dir):
    env = AudioTokenEnv(token_dir, split="val")
    _, info = env.reset(options={"utterance": "val-001"})
    assert info == {"utterance_id": "val-001", "step": 0, "labels": {}}
    with pytest.raises(ValueError, match="nope"):
        env.reset(options={"utterance": "nope"})


def test_step_misuse_is_an_error(token_dir):
    env = AudioTokenEnv(token_dir, max_steps=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset()
    with pytest.raises(ValueError, match="action"):
        env.step(3)
    env.step(0), env.step(0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


@pytest.mark.parametrize("split", ["train", "nosuchsplit"])
def test_missing_tokens_name_the_command_that_makes_them(tmp_path, split):
    (tmp_path / "tokens" / "train").mkdir(parents=True)  # exists but empty
    with pytest.raises(MissingTokensError, match=r"python -m tokenizer prepare\|train\|encode .*--data_dir"):
        AudioTokenEnv(tmp_path, split=split)


def test_without_meta_json_the_shards_and_config_decide(tmp_path):
    make_token_corpus(tmp_path, {"train": 3}, tokens_per_step=2, codebook_size=16, meta=False)
    env = AudioTokenEnv(tmp_path, codebook_size=64)
    assert env.observation_space["tokens"].nvec.tolist() == [64, 64]
    assert AudioTokenEnv(tmp_path).codebook_size <= 16


def test_tokens_outside_the_codebook_are_reported_with_the_shard(tmp_path):
    make_token_corpus(tmp_path, {"train": 2}, codebook_size=32)
    (tmp_path / "tokens" / "meta.json").write_text('{"codebook_size": 8, "tokens_per_step": 4}')
    with pytest.raises(ValueError, match=r"shard-00000\.npz: tokens outside"):
        AudioTokenEnv(tmp_path).reset()


def test_one_shard_in_memory_at_a_time(tmp_path):
    make_token_corpus(tmp_path, {"train": 20}, shard_rows=60)
    env = AudioTokenEnv(tmp_path, order="sequential")
    assert len(env.corpus.shards) > 3
    for _ in range(env.n_utterances):
        env.reset()
        rows = len(env.corpus._cache["tokens"])
        assert rows < 60 + 60  # the cache holds one shard, never the corpus


def test_make_env_builds_the_audio_env_or_any_registered_id(conf, token_dir):
    env = envs.make_env(conf, split="val", worker=1, n_workers=2)
    inner = env.unwrapped
    assert isinstance(inner, AudioTokenEnv)
    assert (inner.split, inner.worker, inner.n_workers, inner.order) == ("val", 1, 2, conf.env_order)
    conf.env_id = "CartPole-v1"
    assert envs.make_env(conf).unwrapped.__class__.__name__ == "CartPoleEnv"


def test_a_bad_shard_is_skipped_and_named_the_rest_is_replayed(tmp_path, caplog):
    make_token_corpus(tmp_path, {"train": 20}, shard_rows=60)
    shards = sorted((tmp_path / "tokens" / "train").glob("shard-*.npz"))
    shards[1].write_bytes(shards[1].read_bytes()[:200])  # unreadable
    with np.load(shards[2]) as z:  # indexes fine, but has no tokens
        np.savez(shards[2], **{k: z[k] for k in z.files if k != "tokens"})
    env = AudioTokenEnv(tmp_path, order="sequential")
    assert list(env.skipped_shards) == [str(shards[1])]
    with caplog.at_level("WARNING", logger="envs.audio_token_env"):
        ids = {env.reset()[1]["utterance_id"] for _ in range(2 * env.n_utterances)}
    assert set(env.skipped_shards) == {str(shards[1]), str(shards[2])}
    assert shards[2].name in caplog.text
    good = set()
    for shard in (shards[0], *shards[3:]):
        with np.load(shard) as z:
            good |= set(z["utterance_id"].tolist())
    assert ids == good
