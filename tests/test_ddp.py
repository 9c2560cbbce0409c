"""Distributed learner: 2 gloo ranks under torchrun on the toy store (equal weights, falling loss,
rank 0's checkpoint, resume on 1 rank and from it on 2 again), the replay store's episode shares,
launch.py --learners."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pydreamer.data import ReplayReader, ReplayStoreIndex
from pydreamer.distributed import shard_of
from pydreamer.episodes import episode_filename, save_episode
from pydreamer.generator import run_generator
from pydreamer.models.checkpoint import load_checkpoint
from pydreamer.replay_layout import checkpoint_path
from pydreamer.train import main
from runtime.config import load_config
from runtime.distributed import Ranks, weights_digest

ROOT = Path(__file__).resolve().parents[1]


def _touch_episodes(folder: Path, names: list[tuple[str, int, int, int]]) -> None:
    for sub, w, i, n in names:
        path = folder / sub / episode_filename(w, i, n) if sub else folder / episode_filename(w, i, n)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # the index reads names only


def _share(folder: Path, rank: int, world: int) -> set[str]:
    index = ReplayStoreIndex(folder, (rank, world))
    index.scan()
    return {str(index.path(k).relative_to(folder)) for k in range(len(index))}


def test_episode_shares_are_disjoint_cover_the_store_and_keep_as_it_grows(tmp_path):
    folder = tmp_path / "episodes"
    rng = np.random.default_rng(0)
    first = [(f"w{w}", w, i, int(rng.integers(5, 50))) for w in range(3) for i in range(int(rng.integers(3, 20)))]
    first.append(("", 7, 4, 12))  # an episode at the top of the store
    _touch_episodes(folder, first)
    everything = _share(folder, 0, 1)
    assert len(everything) == len(first)
    for world in (2, 3, 4):
        shares = [_share(folder, r, world) for r in range(world)]
        assert set().union(*shares) == everything
        assert sum(len(s) for s in shares) == len(everything)  # disjoint
        assert max(map(len, shares)) - min(map(len, shares)) <= 4  # consecutive episodes alternate ranks
    before = [_share(folder, r, 3) for r in range(3)]
    _touch_episodes(folder, [(f"w{w}", w, 100 + i, 20) for w in range(4) for i in range(5)])  # generators go on
    after = [_share(folder, r, 3) for r in range(3)]
    for r in range(3):
        assert before[r] <= after[r]  # no episode changes hands as the store grows
    assert set().union(*after) == _share(folder, 0, 1)
    assert shard_of(0, 5, 1) == 0
    with pytest.raises(ValueError):
        ReplayStoreIndex(folder, (2, 2))


def test_a_rank_reads_only_its_share(tmp_path):
    """Episode k holds token k everywhere: a rank's batches show which episodes it read."""
    for k in range(8):
        T = 10
        save_episode(tmp_path / "episodes" / "w0" / episode_filename(0, k, T), {
            "tokens": np.full((T + 1, 2), k, np.int16), "action": np.zeros((T + 1, 1), np.float32),
            "reward": np.zeros(T + 1, np.float32), "terminal": np.eye(T + 1, dtype=bool)[-1],
            "reset": np.eye(T + 1, dtype=bool)[0]})
    seen = {}
    for rank in (0, 1):
        reader = ReplayReader(tmp_path, batch_size=4, batch_length=8, seed=0, rank=rank, world_size=2)
        it = iter(reader)
        seen[rank] = set(np.unique(np.concatenate([next(it)["tokens"].numpy().ravel() for _ in range(20)])).tolist())
    assert seen[0] == {0, 2, 4, 6} and seen[1] == {1, 3, 5, 7}


def test_ranks_from_torchrun_environment():
    r = Ranks.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (r.rank, r.world_size, r.local_rank, r.local_world_size) == (3, 4, 1, 2)
    assert r.distributed and not r.is_main
    single = Ranks.from_env({})
    assert not single.distributed and single.is_main


def test_launch_starts_the_learner_under_torchrun(monkeypatch, tmp_path):
    import launch
    import pydreamer.generator

    started = []

    class FakeChild:
        def __init__(self, name, module, args, threads, env=None, more_threads_later=False):
            started.append((name, module, list(args), threads, env))

    monkeypatch.setattr(launch, "Child", FakeChild)
    monkeypatch.setattr(pydreamer.generator, "start_generators", lambda *a, **k: [])
    monkeypatch.setattr(launch, "cpu_cores", lambda: 8)
    conf = load_config(["defaults", "tiny"], ["--learners", "2", "--data_workers", "1"])
    launch.start_children(conf, ["defaults", "tiny"], ["--learners", "2"], tmp_path, env={"A": "1"})
    name, module, args, threads, env = started[-1]
    assert (name, module) == ("learner", "torch.distributed.run")
    assert args[:5] == ["--standalone", "--nproc_per_node", "2", "-m", "pydreamer.train"]
    assert args[-2:] == ["--replay_dir", str(tmp_path)]
    assert threads == (8 - 1 - 1 - 2) // 2  # what 1 + 1 generators and 2 x 1 data workers leave, per rank
    assert env["A"] == "1" and int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) > 0
    started.clear()
    launch.start_children(load_config(["defaults", "tiny"]), ["defaults", "tiny"], [], tmp_path, env={})
    assert started[-1][1] == "pydreamer.train"  # one learner: the plain process, as before


@pytest.fixture
def toy_store(tmp_path):
    conf = load_config(["defaults", "tiny"])
    conf.update(env_id="ToyTokens-v0", mlflow_dir=str(tmp_path / "mlruns"), replay_dir=str(tmp_path / "replay"),
                eval_episodes=4)
    run_generator(conf, conf.replay_dir, split="train", n_steps=480)
    run_generator(conf, conf.replay_dir, split="val", n_episodes=4)
    return conf


def _args(conf) -> list[str]:
    return ["--configs", "defaults", "tiny", "--env_id", "ToyTokens-v0", "--mlflow_dir", conf.mlflow_dir,
            "--replay_dir", conf.replay_dir, "--log_interval", "10", "--eval_interval", "20", "--save_interval", "20",
            "--eval_episodes", "4", "--batch_size", "4", "--batch_length", "8", "--data_workers", "0"]


@pytest.mark.slow
def test_two_gloo_ranks_train_one_model_and_the_run_resumes_on_one_then_two(toy_store, tmp_path, monkeypatch):
    conf = toy_store
    digests = tmp_path / "digests"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    env.update(PYDREAMER_WEIGHTS_DIGEST=str(digests), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pydreamer.train", *_args(conf), "--n_steps", "40"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the ranks hold the same weights, which trained (they are not the initial ones) ...
    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [d["step"] for d in ranks] == [40, 40]
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # ... and rank 0 alone wrote the checkpoint, of those weights
    assert ranks[0]["saved_step"] == 40 and ranks[1]["saved_step"] is None
    ckpt = load_checkpoint(checkpoint_path(conf.replay_dir))
    assert ckpt["step"] == 40 and weights_digest(ckpt["model"]) == ranks[0]["sha256"]
    assert sorted(p.name for p in Path(conf.replay_dir, "checkpoints").iterdir()) == ["best.pt", "latest.pt"]

    # one MLflow run (rank 1 opened none); the loss, averaged over the ranks, fell
    mlflow.set_tracking_uri(f"sqlite:///{Path(conf.mlflow_dir).resolve() / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert runs[0].data.tags["learner/ranks"] == "2"
    client = mlflow.MlflowClient()
    loss = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss_tokens")]
    assert [s for s, _ in loss] == [10, 20, 30, 40]
    assert loss[-1][1] < loss[0][1] - 0.1, loss
    assert "eval/nll_h1" in runs[0].data.metrics

    # the 2-rank checkpoint continues on one rank, from its step, into the same run
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert main(_args(conf) + ["--n_steps", "60"]) == 0
    mlflow.end_run()
    assert load_checkpoint(checkpoint_path(conf.replay_dir))["step"] == 60
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_tokens")]
    assert steps == [10, 20, 30, 40, 50, 60]

    # ... and the 1-rank checkpoint goes on on 2 ranks again: both load it, and train on in step
    shutil.rmtree(digests)
    cmd[-1] = "70"
    proc = subprocess.run(cmd, env={**env, "MLFLOW_RUN_ID": run_id}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming at step 60" in proc.stdout + proc.stderr
    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [d["step"] for d in ranks] == [70, 70] and ranks[0]["sha256"] == ranks[1]["sha256"]
    assert weights_digest(load_checkpoint(checkpoint_path(conf.replay_dir))["model"]) == ranks[0]["sha256"]
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_tokens")]
    assert steps == [10, 20, 30, 40, 50, 60, 70]  # each step logged once, by rank 0


def test_rank_threads_share_the_cores(monkeypatch):
    import runtime.processes as processes

    monkeypatch.setattr(processes, "cpu_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert processes.rank_threads(4) == 4 and processes.rank_threads(32) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # launch.py's share (or torchrun's default of 1) caps it
    assert processes.rank_threads(4) == 2


def test_shutdown_lets_what_holds_the_group_go_while_the_group_is_up(monkeypatch):
    """A rank's last step: objects in reference cycles (DistributedDataParallel wrappers are) are
    finalized before the gloo group is destroyed, not at the interpreter's exit, where a finished rank
    died of SIGABRT in 4 of 20 two-rank runs ("terminate called without an active exception")."""
    import gc
    import socket

    import torch.distributed as dist

    from runtime import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    seen = []

    class Wrapper:  # stands for a DDP wrapper: in a cycle, so only the cycle collector frees it
        def __init__(self):
            self.me = self

        def __del__(self):
            seen.append(dist.is_initialized())

    gc.disable()  # as when the collector has not run since the model was dropped
    try:
        Wrapper()
        distributed.shutdown()
    finally:
        gc.enable()
    assert seen == [True] and not dist.is_initialized()
