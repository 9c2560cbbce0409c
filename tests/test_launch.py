"""launch.py end to end on the toy env: generators + learner + MLflow, kill -9 of the learner, resume."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from pydreamer.models.checkpoint import load_checkpoint
from runtime.config import split_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_child_overrides_drop_what_the_launcher_decides():
    rest = ["--configs", "defaults", "tiny", "--n_steps", "5", "--resume_id", "abc", "--replay_dir=/x",
            "--batch_size=4", "--seed", "1"]
    assert split_overrides(rest, drop=("resume_id", "replay_dir")) == ["--n_steps", "5", "--batch_size=4", "--seed", "1"]


def _lines(proc: subprocess.Popen) -> "queue.Queue[str | None]":
    """The child's output lines, read by a thread, so a silent child cannot hang the test past its deadline."""
    q: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _launch(tmp_path: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "launch.py"), "--configs", "defaults", "tiny", "--env_id", "ToyTokens-v0",
           "--mlflow_dir", str(tmp_path / "mlruns"), "--batch_size", "4", "--batch_length", "8",
           "--log_interval", "10", "--eval_interval", "50", "--save_interval", "10", "--n_env_steps", "600", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_launch_kill_learner_then_resume_the_same_run(tmp_path):
    proc = _launch(tmp_path, "--n_steps", "100000")
    lines, learner_pid, ckpt = [], None, None
    deadline = time.time() + 120
    out = _lines(proc)
    while True:  # wait until the learner has saved twice, then kill -9 it
        try:
            line = out.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            proc.kill()
            raise AssertionError("no progress within 120 s:\n" + "".join(lines)) from None
        if line is None:
            break
        lines.append(line)
        m = re.search(r"learner \(pid (\d+)\)", line)
        if m:
            learner_pid = int(m[1])
        m = re.search(r"replay store (\S+)", line)
        if m and ckpt is None and line.startswith("launch:"):
            ckpt = Path(m[1]) / "checkpoints" / "latest.pt"
        if re.search(r"step (2|3)0/", line):
            break
    assert learner_pid and ckpt, "".join(lines)
    os.kill(learner_pid, signal.SIGKILL)
    proc.wait(timeout=90)
    rest = []
    while (line := out.get(timeout=30)) is not None:
        rest.append(line)
    rest = "".join(rest)
    assert proc.returncode == 1, "".join(lines) + rest
    assert "learner exited with code -9" in rest
    run_id = re.search(r"run (\w{32})", "".join(lines))[1]
    saved = load_checkpoint(ckpt)["step"]
    assert saved >= 10
    episodes_before = len(list((ckpt.parent.parent / "episodes").rglob("*.npz")))
    eval_before = sorted((ckpt.parent.parent / "episodes_eval").rglob("*.npz"))

    proc = _launch(tmp_path, "--n_steps", str(saved + 20), "--resume_id", run_id)
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    assert f"resuming at step {saved}" in out
    assert load_checkpoint(ckpt)["step"] == saved + 20
    assert len(list((ckpt.parent.parent / "episodes").rglob("*.npz"))) >= episodes_before  # no episode lost
    assert sorted((ckpt.parent.parent / "episodes_eval").rglob("*.npz")) == eval_before  # the eval split not replayed
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "train/loss_tokens"))
    assert steps[-1] == saved + 20 and steps == list(range(10, saved + 30, 10))  # each step once: none logged twice
    assert {"eval/nll_h1", "eval/acc_h1", "eval/loss_tokens", "train/data_wait_frac"} <= set(run.data.metrics)


@pytest.mark.parametrize("gpu", [False, True])
def test_auto_size_trains_the_cpu_demo_without_a_gpu_and_says_why(monkeypatch, gpu):
    import torch

    from runtime.device import size_for_this_machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Test GPU")
    configs, why = size_for_this_machine(["defaults", "audio"])
    if gpu:
        assert configs == ["defaults", "audio"] and "Test GPU" in why
    else:
        assert configs == ["defaults", "audio", "small"] and "no GPU" in why and "`small`" in why
    assert size_for_this_machine(["defaults", "audio", "tiny"])[0] == ["defaults", "audio", "tiny"]


@pytest.mark.parametrize("omp", ["1", ""])
def test_the_tokenizer_stages_use_the_threads_the_caller_allows(monkeypatch, omp):
    """Two launches side by side, each started with OMP_NUM_THREADS=1, must not each take every core for the
    tokenizer (2 threads each on 2 cores trained the VQ-VAE 10x slower, not 2x)."""
    import torch

    import launch
    from runtime.processes import cpu_cores

    seen = []

    def ensure_tokens(conf, layout):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr("tokenizer.stages.ensure_tokens", ensure_tokens)
    before = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            launch.prepare_tokens({}, None, None)
    finally:
        torch.set_num_threads(before)
    assert seen == [int(omp) if omp else cpu_cores()]


def test_a_learner_that_refused_to_start_gets_no_continue_line(tmp_path, capsys):
    import launch
    from pydreamer.replay_layout import checkpoint_path
    from runtime.config import load_config

    ckpt = checkpoint_path(tmp_path)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"damaged")
    conf = load_config(["defaults", "tiny"])
    launch.print_summary(conf, ["defaults", "tiny"], "abc", tmp_path, launch.Ending(status="FAILED", code=2))
    out = capsys.readouterr().out
    assert "refused" in out and "--resume_id" not in out  # resuming would fail the same way
    launch.print_summary(conf, ["defaults", "tiny"], "abc", tmp_path, launch.Ending(status="FAILED", code=1))
    mlruns = Path(conf["mlflow_dir"]).resolve()
    assert f"continue with: python launch.py --resume_id abc --mlflow_dir {mlruns}" in capsys.readouterr().out


def test_the_learners_log_line_says_when_it_will_be_done():
    """The ETA: the steps left at the wall-clock pace since the first log line (evaluations and saves included)."""
    from types import SimpleNamespace

    from pydreamer.learner.loop import Learner

    learner = SimpleNamespace(pace_since=None, step=100)
    window = SimpleNamespace(start=time.perf_counter() - 10.0, n=100)  # 100 steps in 10 s
    eta = Learner._eta(learner, window, 1000)
    assert re.fullmatch(r"ETA 1m3\ds", eta), eta  # 900 steps at 10 steps/s
    learner.step = 1000
    assert Learner._eta(learner, window, 1000) == "ETA 0s"
    assert re.fullmatch(r"ETA \d+h\d\dm", Learner._eta(SimpleNamespace(pace_since=None, step=1), window, 10 ** 6))
