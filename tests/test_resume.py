"""`launch.py --resume_id RUN`: the run goes on with its own config; what it cannot take is refused with the run
untouched; a finished run is only taken up again with a larger n_steps; the printed continue line works as printed."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pydreamer.resume import ResumeRefused, _children_command, continue_command, plan_resume, record_resumed, \
    run_own_config
from runtime.config import load_config
from test_drills import _read_until, _rest
from test_launch import ROOT, _launch, _lines

TOY = ["--env_id", "ToyTokens-v0", "--n_steps", "40"]


def test_fixed_keys_hold_every_key_a_checkpoint_or_the_tokens_are_shaped_by():
    from pydreamer.models import WORLD_MODELS
    from pydreamer.models.dreamer import ACTOR_CRITIC_KEYS
    from pydreamer.resume import fixed_keys
    from tokenizer.records import STAGE_KEYS

    shaped = {k for m in WORLD_MODELS.values() for k in m.arch_keys} | set(ACTOR_CRITIC_KEYS)
    shaped |= {k for keys in STAGE_KEYS.values() for k in keys} | {"world_model", "wm_objective", "data_dir"}
    assert shaped <= set(fixed_keys()), shaped - set(fixed_keys())
    assert not {"n_steps", "replay_dir", "device", "learners", "adam_lr"} & set(fixed_keys())  # these may change


def test_the_childrens_command_line_makes_the_same_config():
    conf = load_config(["defaults", "tiny", "contrastive"], ["--condition", "language", "--run_name", "",
                                                            "--adam_lr", "1e-5", "--amp", "false", "--data_dir", "/x y"])
    configs, overrides = _children_command(conf)
    assert configs == ["defaults", "tiny", "contrastive"]
    assert load_config(configs, overrides) == conf
    assert all(o.startswith("--") and "=" in o for o in overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A FINISHED contrastive run (`--configs defaults tiny contrastive`) in a fresh local store: (run id, store)."""
    store = tmp_path_factory.mktemp("resume") / "mlruns"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        from runtime.tracking import start_or_resume_run

        conf = load_config(["defaults", "tiny", "contrastive"], [*TOY, "--mlflow_dir", str(store)])
        run = start_or_resume_run(conf)
        mlflow.end_run(status="FINISHED")
        yield run.info.run_id, store


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def test_a_resume_goes_on_with_the_runs_own_config(finished_run, no_env):
    run_id, store = finished_run
    plan = plan_resume(run_id, None, ["--resume_id", run_id, "--mlflow_dir", str(store), "--n_steps", "80"])
    assert plan.conf["wm_objective"] == "contrastive" and plan.conf["env_id"] == "ToyTokens-v0"
    assert plan.conf["n_steps"] == 80 and plan.conf["deter_dim"] == load_config(["defaults", "tiny"]).deter_dim
    assert plan.configs == ["defaults", "tiny", "contrastive"] and not plan.finished
    assert load_config(plan.configs, plan.overrides) == plan.conf  # what the generators and the learner load
    assert plan_resume(run_id, ["defaults", "tiny", "contrastive"], ["--mlflow_dir", str(store), "--n_steps", "80"])


@pytest.mark.parametrize("configs, rest, said", [
    (["defaults", "tiny"], [], "wm_objective 'contrastive' -> 'reconstruction'"),  # the issue's command
    (None, ["--wm_objective", "reconstruction"], "trained with wm_objective 'contrastive'"),
    (None, ["--deter_dim", "64"], "trained with deter_dim 32"),
    (None, ["--codebook_size", "64"], "its token corpus depend on it"),
])
def test_a_change_the_run_cannot_take_is_refused(finished_run, no_env, configs, rest, said):
    run_id, store = finished_run
    with pytest.raises(ResumeRefused, match=re.escape(said)) as e:
        plan_resume(run_id, configs, ["--mlflow_dir", str(store), "--n_steps", "80", *rest])
    assert "\n" not in str(e.value) and f"python launch.py --resume_id {run_id} --mlflow_dir" in str(e.value)


@pytest.mark.parametrize("n_steps", ["40", "10"])
def test_a_finished_run_is_only_taken_up_with_a_larger_n_steps(finished_run, no_env, n_steps):
    run_id, store = finished_run
    plan = plan_resume(run_id, None, ["--mlflow_dir", str(store), "--n_steps", n_steps])
    assert "is finished: it trained its n_steps=40" in plan.finished and "--n_steps 80" in plan.finished


def test_a_store_or_run_that_is_not_there_is_refused_and_nothing_is_made(finished_run, no_env, tmp_path):
    run_id, store = finished_run
    with pytest.raises(ResumeRefused, match="holds no tracking store"):
        plan_resume(run_id, None, ["--mlflow_dir", str(tmp_path / "elsewhere")])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ResumeRefused, match="no such run"):
        plan_resume("0" * 32, None, ["--mlflow_dir", str(store)])


def test_what_a_resume_changed_is_where_the_next_one_starts(finished_run, no_env):
    run_id, store = finished_run
    plan = plan_resume(run_id, None, ["--mlflow_dir", str(store), "--n_steps", "80", "--adam_lr", "1e-4"])
    with mlflow.start_run(run_id=run_id) as run:
        record_resumed(run, plan.conf)
    own = run_own_config(mlflow.get_run(run_id))
    assert (own["n_steps"], own["adam_lr"], own["wm_objective"]) == (80, 1e-4, "contrastive")
    assert mlflow.get_run(run_id).data.params["n_steps"] == "40"  # params stay the first values


def test_the_continue_line_is_complete(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    conf = {"mlflow_dir": str(tmp_path / "my runs")}
    assert continue_command(conf, "abc") == f"python launch.py --resume_id abc --mlflow_dir '{tmp_path}/my runs'"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/my runs/mlflow.db")  # as MLflow exports it
    assert continue_command(conf, "abc").endswith("--mlflow_dir '" + f"{tmp_path}/my runs'")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert continue_command(conf, "abc") == "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python launch.py --resume_id abc"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://user:secret@db/mlflow")
    assert "secret" not in continue_command(conf, "abc")


def _state(run_id: str, store: Path) -> tuple:
    """What a refused or finished resume must leave as it was: status, params, end time, tags, episodes."""
    run = mlflow.get_run(run_id)
    return (run.info.status, run.info.end_time, run.data.params, run.data.tags,
            sorted((p.name, p.stat().st_mtime_ns) for p in store.rglob("*") if p.is_file()))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A contrastive toy run (`--configs defaults tiny contrastive`, n_steps 40) stopped with SIGTERM at step 20 or
    30: (run id, its replay store, the continue command it printed, the launch folder, a clean environment)."""
    tmp_path = tmp_path_factory.mktemp("stopped")
    proc = _launch(tmp_path, "--configs", "defaults", "tiny", "contrastive", "--n_steps", "40")
    out = _lines(proc)
    lines = _read_until(proc, out, r"step (2|3)0/")
    os.kill(proc.pid, signal.SIGTERM)
    text = "".join(lines) + _rest(proc, out)
    command = shlex.split(re.search(r"continue with: (.*)$", text, re.M)[1])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return (re.search(r"run (\w{32})", text)[1], Path(re.search(r"replay store (\S+)", text)[1]), command,
            tmp_path, env)


def _resume(args: list[str], cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_the_issues_resume_without_the_contrastive_section_is_refused_with_the_run_untouched(stopped_run):
    run_id, store, command, tmp_path, env = stopped_run
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    before = _state(run_id, store)
    forgot = _resume(["--configs", "defaults", "tiny", "--resume_id", run_id, "--mlflow_dir", str(tmp_path / "mlruns")],
                     tmp_path, env)
    assert forgot.returncode == 2 and "wm_objective 'contrastive' -> 'reconstruction'" in forgot.stderr, forgot
    assert len(forgot.stderr.splitlines()) == 1 and not forgot.stdout
    assert _state(run_id, store) == before  # status, params, tags, replay store: as they were


@pytest.mark.slow
def test_the_printed_continue_line_goes_on_with_the_run_as_it_was_then_says_it_is_finished(stopped_run):
    run_id, store, command, tmp_path, env = stopped_run
    assert command[:2] == ["python", "launch.py"] and "--configs" not in command, command
    elsewhere = tmp_path / "elsewhere"  # the line is complete: no config, no folder to start from
    elsewhere.mkdir()
    go_on = _resume(command[2:], elsewhere, env, timeout=180)
    assert go_on.returncode == 0 and "resuming at step" in go_on.stderr, go_on.stdout + go_on.stderr
    from pydreamer.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(store / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 40 and ckpt["model_args"]["conf"]["wm_objective"] == "contrastive"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["objective"] == "contrastive"

    before = _state(run_id, store)
    again = _resume(command[2:], elsewhere, env)
    assert again.returncode == 0 and "is finished" in again.stdout, again.stdout + again.stderr
    assert _state(run_id, store) == before and list(elsewhere.iterdir()) == []
