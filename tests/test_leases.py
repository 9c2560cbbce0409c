"""One live writer each: a run's learner, a generator worker id, the stages writing a data_dir (runtime/lease.py).
A second is refused with one line naming the first (exit 2, nothing written); a dead holder blocks no one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pydreamer.replay_layout import ReplayLayout
from runtime.lease import Lease, LeaseHeld


def test_a_lease_names_its_live_holder_and_frees_itself_when_the_holder_dies(tmp_path):
    path = tmp_path / "x.lock"
    with Lease(path, "the thing"):
        held = Lease(path, "the thing")
        assert held.holder()["pid"] == os.getpid()
        with pytest.raises(LeaseHeld, match=f"the thing is held by pid {os.getpid()} on host"):
            held.acquire()
    assert Lease(path, "the thing").holder() is None
    # a holder killed with kill -9 leaves its file; the kernel dropped its lock, so the lease is free
    code = f"from runtime.lease import Lease; import os; Lease({str(path)!r}, 'x').acquire(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
    assert json.loads(path.read_text())["pid"] != os.getpid() and Lease(path, "x").holder() is None
    Lease(path, "x").acquire().release()


def test_a_second_generator_with_the_same_worker_id_is_refused(tmp_path, monkeypatch, capsys):
    from pydreamer.generator import main as generator_main

    store = tmp_path / "replay"
    args = ["--configs", "defaults", "tiny", "--env_id", "ToyTokens-v0", "--replay_dir", str(store),
            "--mlflow_dir", str(tmp_path / "mlruns"), "--worker", "0", "--n_env_steps", "50"]
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with Lease(ReplayLayout.of(store).worker_lease("train", 0), "generator worker 0 of the train split"):
        with pytest.raises(SystemExit) as e:
            generator_main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"held by pid {os.getpid()}" in err and "another --worker" in err and "Traceback" not in err
    assert not list(store.rglob("*.npz"))  # it overwrote nothing
    assert generator_main(args) == 0 and list(store.rglob("*.npz"))  # free again: it writes


def test_a_second_learner_of_a_replay_store_is_refused_before_a_run_is_opened(tmp_path, monkeypatch, capsys):
    import mlflow

    from pydreamer.train import main as learner_main
    from test_learner import learner_args, toy_conf

    conf = toy_conf(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with Lease(ReplayLayout.of(conf.replay_dir).learner_lease, "run abc's learner"):
        with pytest.raises(SystemExit) as e:
            learner_main(learner_args(conf) + ["--n_steps", "10"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"run abc's learner is held by pid {os.getpid()}" in err and "Traceback" not in err
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")  # no run opened


def test_a_second_maker_of_one_data_dir_is_refused(tmp_path, monkeypatch, capsys):
    import launch
    from tokenizer.__main__ import main as tokenizer_main
    from tokenizer.layout import DataLayout

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    with Lease(DataLayout.of(data).stages_lease, "the tokenizer stages"):
        code = tokenizer_main(["prepare", "--configs", "defaults", "audio", "tiny", "--data_dir", str(data),
                               "--mlflow_dir", str(tmp_path / "mlruns")])
        assert code == 2
        assert f"held by pid {os.getpid()}" in capsys.readouterr().err
        with pytest.raises(SystemExit) as e:
            launch.main(["--configs", "defaults", "audio", "tiny", "--data_dir", str(data)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"the tokenizer stages is held by pid {os.getpid()}" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and [p.name for p in data.iterdir()] == ["stages.lock"]
