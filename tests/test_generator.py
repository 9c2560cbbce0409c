"""Generator workers: episodes that match their utterances, worker shares, epochs, policies, the CLI."""
from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from pydreamer.episodes import list_episodes, load_episode
from pydreamer.generator import run_generator, worker_plan
import pydreamer.policy
from pydreamer.policy import RandomPolicy
from tokenizer.layout import DataLayout
from tokenizer.tokens import TokenSplit

REPO = Path(__file__).resolve().parents[1]


class EchoTokens(gym.Env):
    """A toy env whose actions matter: the observed token is the action just taken."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 10):
        self.observation_space = spaces.Dict({"tokens": spaces.MultiDiscrete([3])})
        self.action_space = spaces.Discrete(3)
        self.length = length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"tokens": np.array([0])}, {}

    def step(self, action):
        self.t += 1
        return {"tokens": np.array([action])}, float(action == 2), self.t >= self.length, False, {}


if "EchoTokens-v0" not in gym.registry:
    gym.register("EchoTokens-v0", entry_point=EchoTokens)


def episodes_of(replay_dir, subdir="episodes"):
    return [load_episode(p) for p in list_episodes(Path(replay_dir) / subdir)]


def test_episodes_hold_their_utterances(conf, tmp_path, token_dir):
    stats = run_generator(conf, tmp_path, n_episodes=5)
    assert stats["episodes"] == 5
    corpus = TokenSplit(DataLayout.of(token_dir), "train")
    paths = list_episodes(tmp_path / "episodes")
    assert [p.parent.name for p in paths] == ["w0"] * 5
    total = 0
    for path in paths:
        ep = load_episode(path)
        utt = corpus.utterance(corpus.find(str(ep["utterance_id"])))
        T = len(utt["tokens"]) - 1
        assert path.name.endswith(f"-n{T:04d}.npz")
        np.testing.assert_array_equal(ep["tokens"], utt["tokens"])
        np.testing.assert_allclose(ep["reward"][1:], utt["voice"][1:])
        assert ep["reward"][0] == 0 and ep["reset"].tolist() == [True] + [False] * T
        assert ep["terminal"].tolist() == [False] * T + [True]
        assert ep["action"].shape == (T + 1, 1) and ep["action"][0, 0] == 0 and (ep["action"][1:] == 1).all()
        assert str(ep["split"]) == "train" and int(ep["worker"]) == 0
        total += T
    assert stats["steps"] == total


def test_episodes_keep_their_utterances_labels_into_the_batches(conf, tmp_path, labelled_token_dir):
    from pydreamer.data import episode_batch, make_replay_loader, replay_condition
    from tests.conftest import corpus_labels

    conf.update(data_dir=str(labelled_token_dir), condition=["voice", "kind"], data_workers=0, batch_size=4,
                batch_length=12)
    run_generator(conf, tmp_path, n_episodes=6)
    episodes = episodes_of(tmp_path)
    for ep in episodes:
        split, u = str(ep["utterance_id"]).split("-")
        labels = {k[len("label_"):]: str(v) for k, v in ep.items() if k.startswith("label_")}
        assert labels == corpus_labels(split, int(u)) and all(ep[f"label_{k}"].shape == () for k in labels)
    condition = replay_condition(conf)
    assert condition == [("voice", ["m0", "m1", "m2"]), ("kind", ["counting"])]
    arrays, mask = episode_batch(episodes, 100, condition)
    for b, ep in enumerate(episodes):
        labels = corpus_labels("train", int(str(ep["utterance_id"]).split("-")[1]))
        want = [1 + int(labels["voice"][1]), 1 if "kind" in labels else 0]
        assert (arrays["condition"][mask[:, b], b] == want).all()
    batch = next(iter(make_replay_loader(conf, tmp_path)))  # every step holds the ids of one of these episodes
    assert {tuple(c) for c in batch["condition"].reshape(-1, 2).tolist()} <= {tuple(c) for c in arrays["condition"][0]}


def test_workers_share_utterances_and_replay_epoch_after_epoch(conf, tmp_path, token_dir):
    n_train = len(TokenSplit(DataLayout.of(token_dir), "train"))
    seen = {}
    for w in range(2):
        run_generator(conf, tmp_path, worker=w, n_workers=2, n_episodes=3 * (n_train // 2))
        seen[w] = collections.Counter(str(e["utterance_id"]) for e in episodes_of(tmp_path / "episodes", f"w{w}"))
    assert not set(seen[0]) & set(seen[1])  # no utterance in two workers
    assert len(seen[0]) + len(seen[1]) == n_train
    assert set(seen[0].values()) == {3} and set(seen[1].values()) == {3}  # three whole epochs each


def test_step_budget_stops_at_an_episode_end_and_restarts_continue(conf, tmp_path):
    stats = run_generator(conf, tmp_path, n_steps=100)
    assert 100 <= stats["steps"] < 100 + 60
    first = len(list_episodes(tmp_path / "episodes"))
    run_generator(conf, tmp_path, n_steps=100)
    names = [p.name for p in list_episodes(tmp_path / "episodes")]
    assert len(names) > first and len(set(n.split("-n")[0] for n in names)) == len(names)  # nothing overwritten


def test_val_split_goes_to_episodes_eval(conf, tmp_path):
    run_generator(conf, tmp_path, split="val", n_episodes=3)
    eps = episodes_of(tmp_path, "episodes_eval")
    assert sorted(str(e["utterance_id"]) for e in eps) == ["val-000", "val-001", "val-002"]
    assert not (tmp_path / "episodes").exists()


def test_random_policy_on_an_env_whose_actions_matter(conf, tmp_path):
    conf.env_id = "EchoTokens-v0"
    run_generator(conf, tmp_path, n_episodes=20)
    eps = episodes_of(tmp_path)
    actions = np.concatenate([e["action"][1:].argmax(1) for e in eps])
    echoed = np.concatenate([e["tokens"][1:, 0] for e in eps])
    np.testing.assert_array_equal(actions, echoed)  # row t's action is the one that led to row t
    assert np.bincount(actions, minlength=3).min() > 30  # every action is tried
    assert all(e["action"].shape == (11, 3) and (e["action"][1:].sum(1) == 1).all() for e in eps)


def test_random_policy_interface():
    policy = RandomPolicy(None, None, spaces.Discrete(4, start=1), seed=0)
    policy.reset()
    assert policy.reload() is False
    assert {policy({}) for _ in range(200)} == {1, 2, 3, 4}
    with pytest.raises(TypeError, match="Discrete"):
        RandomPolicy(None, None, spaces.Box(0, 1, (2,)))


def test_network_policy_is_random_until_a_checkpoint_then_reloads(conf, tmp_path, monkeypatch):
    calls = []

    class FakeNetworkPolicy:  # stands in for pydreamer.policy.NetworkPolicy: always action 2
        def __init__(self, conf, observation_space, action_space, checkpoint_path):
            self.path = Path(checkpoint_path)

        def reset(self):
            pass

        def reload(self):
            calls.append(self.path)
            return True

        def __call__(self, obs):
            return 2

    monkeypatch.setattr(pydreamer.policy, "NetworkPolicy", FakeNetworkPolicy)
    conf.update(env_id="EchoTokens-v0", generator_policy="network", policy_reload_interval=25)
    run_generator(conf, tmp_path, n_episodes=5)
    before = episodes_of(tmp_path)
    assert not calls and len(set(np.concatenate([e["action"][1:].argmax(1) for e in before]))) > 1
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    run_generator(conf, tmp_path, n_episodes=10)  # 100 steps: looks at steps 0, 30, 60 and 90
    assert calls == [ckpt] * 4
    after = [e for e in episodes_of(tmp_path) if int(e["episode"]) >= 5]
    assert len(after) == 10 and all((e["action"][1:].argmax(1) == 2).all() for e in after)


def test_worker_plan_splits_the_budget(conf):
    conf.update(generator_workers=3, generator_workers_eval=1, n_env_steps=10, n_env_steps_eval=0)
    plan = worker_plan(conf)
    assert [(p["split"], p["worker"]) for p in plan] == [("train", 0), ("train", 1), ("train", 2), ("val", 0)]
    assert [p.get("n_steps") for p in plan[:3]] == [4, 3, 3] and plan[3]["n_episodes"] is None


def test_metrics_go_to_the_active_mlflow_run(conf, tmp_path):
    import mlflow

    from runtime.tracking import setup_mlflow

    conf.mlflow_dir = str(tmp_path / "mlruns")
    previous = mlflow.get_tracking_uri()
    try:
        setup_mlflow(conf)
        with mlflow.start_run() as run:
            run_generator(conf, tmp_path, n_episodes=3, run_id=run.info.run_id)
        metrics = mlflow.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(previous)
    assert metrics["generator/train_w0/env_steps_per_s"] > 0 and metrics["generator/train_w0/episodes"] == 3


def cli(*args, cwd=REPO):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pydreamer.generator", "--configs", "defaults", "tiny", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_runs_train_and_eval_workers(token_dir, tmp_path):
    r = cli("--data_dir", str(token_dir), "--replay_dir", str(tmp_path), "--n_env_steps", "300",
            "--generator_workers", "2", "--codebook_size", "32")
    assert r.returncode == 0, r.stderr
    train = list_episodes(tmp_path / "episodes")
    assert {p.parent.name for p in train} == {"w0", "w1"} and sum(int(p.stem.split("-n")[1]) for p in train) >= 300
    assert len(list_episodes(tmp_path / "episodes_eval")) == 3  # one pass over the val split


def test_cli_missing_tokens_is_one_clear_line(tmp_path):
    r = cli("--data_dir", str(tmp_path / "nothing"), "--replay_dir", str(tmp_path / "replay"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "python -m tokenizer prepare|train|encode" in r.stderr and "nothing" in r.stderr
