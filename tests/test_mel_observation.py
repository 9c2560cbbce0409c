"""observation: mel: each step's log-mel frames from the env, into the episodes and the learner's batches."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from envs import env_dims, make_env, mel_dim
from envs.audio_token_env import AudioTokenEnv
from pydreamer.data import make_replay_loader
from pydreamer.episodes import EpisodeError, list_episodes, load_episode, save_episode
from pydreamer.generator import run_generator
from runtime.config import load_config
from tests.conftest import CODEBOOK, corpus_labels, make_token_corpus
from tokenizer.layout import DataLayout
from tokenizer.shards import ShardWriter, iter_rows
from tokenizer.split import SPLITS
from tokenizer.tokens import TokenSplit

DS, N_MELS = 4, 6
MEL_MEAN, MEL_STD = -30.0, 15.0
D = DS * N_MELS


def make_mel_corpus(root: Path, labels: bool = False) -> tuple[Path, dict]:
    """A token corpus, every split's log-mels (z-scored per utterance, F = DS * T - 1 frames: a short last
    step), written in another order and other shards than the tokens; meta.json with time_downsample and
    the corpus' mel_mean, mel_std. Returns the folder and {utterance id: (z [F, n_mels], mean, std)}."""
    data = make_token_corpus(root, {"train": 5, "val": 2, "test": 2}, lengths=(8, 20), labels=labels)
    layout = DataLayout.of(data)
    rng = np.random.default_rng(1)
    mels = {}
    for split in SPLITS:
        corpus = TokenSplit(layout, split)
        with ShardWriter(layout.mels(split), max_rows=100) as w:
            for uid, T in reversed(list(zip(corpus.ids, corpus.lengths))):
                z = rng.standard_normal((DS * int(T) - 1, N_MELS)).astype(np.float16)
                mean, std = float(rng.uniform(-45, -20)), float(rng.uniform(8, 20))
                mels[str(uid)] = (z, mean, std)
                w.add(per_step={"mel": z, "voice": np.ones(len(z), np.float32)},
                      per_utterance={"utterance_id": str(uid), "speaker": "s", "source": "t", "mean": mean, "std": std})
    meta = json.loads(layout.token_meta.read_text())
    layout.token_meta.write_text(json.dumps({**meta, "time_downsample": DS, "mel_mean": MEL_MEAN, "mel_std": MEL_STD}))
    return data, mels


def expected_steps(z: np.ndarray, mean: float, std: float) -> np.ndarray:
    """By hand: dB with the utterance's own statistics, z-scored with the corpus', last frame repeated."""
    c = ((z.astype(np.float32) * std + mean) - MEL_MEAN) / MEL_STD
    c = np.concatenate([c, c[-1:].repeat(-len(c) % DS, 0)])
    return c.reshape(-1, D)


@pytest.fixture(scope="module")
def mel_data(tmp_path_factory):
    return make_mel_corpus(tmp_path_factory.mktemp("mel"))


def mel_conf(data: Path, observation: str = "mel"):
    c = load_config(["defaults", "tiny"])
    c.data_dir, c.codebook_size, c.observation, c.data_workers = str(data), CODEBOOK, observation, 0
    return c


def run_episode(env, **reset_kwargs):
    obs, info = env.reset(**reset_kwargs)
    rows = [obs]
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(0)
        rows.append(obs)
        done = terminated or truncated
    return info["utterance_id"], rows


def test_checker_passes_in_both_modes_and_the_space_says_the_size(mel_data):
    data, _ = mel_data
    for observation in ("tokens", "mel"):
        env = gym.make("AudioTokens-v0", data_dir=data, observation=observation)
        check_env(env.unwrapped)
    box = env.observation_space["mel"]
    assert box.shape == (D,) and box.dtype == np.float32 and np.isfinite(box.low).all() and np.isfinite(box.high).all()
    assert mel_dim(mel_conf(data)) == D and mel_dim(mel_conf(data, "tokens")) is None
    assert env_dims(mel_conf(data)) == env_dims(mel_conf(data, "tokens"))
    with pytest.raises(ValueError, match="observation must be 'tokens' or 'mel', not 'wave'"):
        AudioTokenEnv(data, observation="wave")


def test_each_step_holds_its_frames_on_the_corpus_scale_and_the_same_tokens(mel_data):
    data, mels = mel_data
    mel_env = AudioTokenEnv(data, order="sequential", observation="mel")
    token_env = AudioTokenEnv(data, order="sequential")
    for _ in range(3):
        uid, rows = run_episode(mel_env)
        uid_t, token_rows = run_episode(token_env)
        assert uid == uid_t and all(set(r) == {"tokens"} for r in token_rows)
        want = expected_steps(*mels[uid])
        assert len(rows) == len(want)  # the last, short step included (padded with its last frame)
        for t, (row, token_row) in enumerate(zip(rows, token_rows)):
            assert row["mel"].shape == (D,) and row["mel"].dtype == np.float32
            np.testing.assert_allclose(row["mel"], want[t], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(row["tokens"], token_row["tokens"])
    uid, rows = run_episode(mel_env, options={"utterance": "train-003"})
    np.testing.assert_allclose(np.stack([r["mel"] for r in rows]), expected_steps(*mels[uid]), rtol=1e-5, atol=1e-5)


def test_the_mel_env_says_the_utterances_labels_too(tmp_path):
    data, _ = make_mel_corpus(tmp_path / "d", labels=True)
    env = AudioTokenEnv(data, order="sequential", observation="mel")
    for u in range(5):
        _, info = env.reset(options={"utterance": f"train-{u:03d}"})
        assert info["labels"] == corpus_labels("train", u) and env.step(0)[4]["labels"] == info["labels"]


def test_missing_log_mels_or_statistics_are_clear_errors(tmp_path):
    data, _ = make_mel_corpus(tmp_path / "d")
    layout = DataLayout.of(data)
    shutil.rmtree(layout.mels("val"))
    with pytest.raises(ValueError, match=r"no log-mel shards .* in .*mels/val"):
        AudioTokenEnv(data, split="val", observation="mel")
    AudioTokenEnv(data, split="val")  # the tokens alone need none
    rows = [r for r in iter_rows(layout.mels("test")) if r[1]["utterance_id"] != "test-001"]
    shutil.rmtree(layout.mels("test"))
    with ShardWriter(layout.mels("test")) as w:
        for per_step, per_utterance in rows:
            w.add(per_step, per_utterance)
    with pytest.raises(ValueError, match=r"mels/test: no log-mel for utterance 'test-001'"):
        AudioTokenEnv(data, split="test", observation="mel")
    meta = json.loads(layout.token_meta.read_text())
    layout.token_meta.write_text(json.dumps({**meta, "time_downsample": DS + 1}))
    with pytest.raises(ValueError, match=r"log-mel frames for \d+ token steps"):
        AudioTokenEnv(data, observation="mel")
    layout.token_meta.write_text(json.dumps({k: v for k, v in meta.items() if k != "time_downsample"}))
    assert AudioTokenEnv(data, observation="mel").mel.ds == DS  # then from ceil(F / ds) == T
    assert mel_dim(mel_conf(data)) == D
    layout.token_meta.write_text(json.dumps({k: v for k, v in meta.items() if k != "mel_mean"}))
    for make in (lambda: AudioTokenEnv(data, observation="mel"), lambda: mel_dim(mel_conf(data))):
        with pytest.raises(ValueError, match=r"tokens/meta\.json: no usable mel_mean"):
            make()


@pytest.fixture(scope="module")
def replay(mel_data, tmp_path_factory):
    """A store with mel episodes (worker 0) and token-only ones (worker 1, as observation: tokens writes them)."""
    data, _ = mel_data
    root = tmp_path_factory.mktemp("replay")
    run_generator(mel_conf(data), root, n_episodes=4)
    run_generator(mel_conf(data, "tokens"), root, worker=1, n_workers=2, n_episodes=3)
    return root


def test_generator_episodes_hold_float16_mel_and_load_as_float32(mel_data, replay):
    data, mels = mel_data
    paths = list_episodes(replay / "episodes" / "w0")
    assert len(paths) == 4
    for path in paths:
        with np.load(path) as z:
            T = len(z["reward"]) - 1
            assert z["mel"].dtype == np.float16 and z["mel"].shape == (T + 1, D)
        ep = load_episode(path)
        assert ep["mel"].dtype == np.float32
        np.testing.assert_allclose(ep["mel"], expected_steps(*mels[str(ep["utterance_id"])]), atol=2e-2)
        assert "mel" in load_episode(path, keys=("mel",)) and "mel" not in load_episode(path, keys=("tokens",))
    assert all("mel" not in load_episode(p) for p in list_episodes(replay / "episodes" / "w1"))


@pytest.mark.parametrize("damage, words", [
    (lambda m: np.where(np.arange(len(m))[:, None] == 2, np.nan, m).astype(np.float16), "NaN or infinite values"),
    (lambda m: m[:, :, None], "must be floating-point frames"),
    (lambda m: m.astype(np.int16), "must be floating-point frames"),
    (lambda m: m[:-1], "must be floating-point frames"),
])
def test_a_damaged_mel_is_refused_naming_the_key(replay, tmp_path, damage, words):
    path = list_episodes(replay / "episodes" / "w0")[0]
    with np.load(path) as z:
        ep = {k: z[k] for k in z.files}
    ep["mel"] = damage(ep["mel"])
    bad = tmp_path / path.name
    np.savez(bad, **ep)
    with pytest.raises(EpisodeError, match=f"{bad.name}: 'mel' .*{words}"):
        load_episode(bad)
    if ep["mel"].ndim >= 1 and len(ep["mel"]) == len(ep["reward"]):
        save_episode(tmp_path / "again.npz", ep)  # the writer checks rows only; the reader refuses it
    else:
        with pytest.raises(EpisodeError, match="'mel' has shape"):
            save_episode(tmp_path / "again.npz", ep)


def batches(conf, replay: Path, n: int) -> list[dict]:
    conf.batch_size, conf.batch_length, conf.learner_wait_s = 4, 12, 5.0
    it = iter(make_replay_loader(conf, replay))
    return [next(it) for _ in range(n)]


def test_reader_for_mel_yields_aligned_frames_and_skips_episodes_without(mel_data, replay):
    data, _ = mel_data
    rows: dict[bytes, list[np.ndarray]] = {}
    for path in list_episodes(replay / "episodes" / "w0"):
        ep = load_episode(path)
        for tokens, mel in zip(ep["tokens"].astype(np.int64), ep["mel"]):
            rows.setdefault(tokens.tobytes(), []).append(mel)
    got = batches(mel_conf(data), replay, 12)
    skipped = [line for b in got for line in b.get("skipped", [])]
    assert len(skipped) == 3 and all("no 'mel'" in line and "/w1/" in line for line in skipped)
    for b in got:
        assert b["mel"].shape == (12, 4, D) and b["mel"].dtype == torch.float32 and b["tokens"].shape[:2] == (12, 4)
        tokens, mel = b["tokens"].numpy(), b["mel"].numpy()
        for t in range(12):
            for col in range(4):
                candidates = rows[tokens[t, col].tobytes()]  # the mel episodes' rows with these tokens
                assert any(np.array_equal(mel[t, col], m) for m in candidates)


def test_reader_for_tokens_has_no_mel_and_skips_nothing(mel_data, replay):
    data, _ = mel_data
    got = batches(mel_conf(data, "tokens"), replay, 6)
    assert all("mel" not in b and "skipped" not in b for b in got)
    assert all(b["tokens"].shape == (12, 4, 4) for b in got)


def test_make_env_passes_the_observation_and_old_configs_mean_tokens(mel_data):
    data, _ = mel_data
    assert "mel" in make_env(mel_conf(data)).observation_space.spaces
    old = mel_conf(data)
    del old["observation"]
    assert set(make_env(old).observation_space.spaces) == {"tokens"} and mel_dim(old) is None
