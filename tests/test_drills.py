"""Failure drills on launch.py end to end (toy env): SIGTERM of the launcher, a generator killed."""
from __future__ import annotations

import os
import queue
import re
import signal
import time
from pathlib import Path

import mlflow
import pytest

from test_launch import _launch, _lines



def _read_until(proc, out, pattern: str, timeout: float = 120) -> list[str]:
    """Lines up to the first that matches `pattern`; fails (killing the launcher) past `timeout`."""
    lines, deadline = [], time.time() + timeout
    while True:
        try:
            line = out.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            line = ""
        if line is None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(lines))
        lines.append(line)
        if re.search(pattern, line):
            return lines


def _rest(proc, out, timeout: float = 120) -> str:
    proc.wait(timeout=timeout)
    rest = []
    while (line := out.get(timeout=30)) is not None:
        rest.append(line)
    return "".join(rest)


def _pids(lines: list[str]) -> dict[str, int]:
    started = next(line for line in lines if line.startswith("launch: started generator"))
    return {name: int(pid) for name, pid in re.findall(r"(generator \w+ w\d+|learner) \(pid (\d+)\)", started)}


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: an orphan's new parent may not reap it at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_kill_9_of_the_launcher_leaves_no_child_and_a_live_learner_cannot_be_resumed_twice(tmp_path):
    proc = _launch(tmp_path, "--n_steps", "100000")
    out = _lines(proc)
    lines = _read_until(proc, out, r"step 10/")
    text, pids = "".join(lines), _pids(lines)
    run_id = re.search(r"run (\w{32})", text)[1]
    store = Path(re.search(r"replay store (\S+)", text)[1])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")

    second = _launch(tmp_path, "--resume_id", run_id)
    said = second.communicate(timeout=120)[0]
    assert second.returncode == 2, said
    assert f"held by pid {pids['learner']}" in said and "Traceback" not in said
    assert "launch: started" not in said and "resuming" not in said  # refused before any child or the run
    assert mlflow.get_run(run_id).info.status == "RUNNING"

    proc.kill()  # kill -9: nothing runs in the launcher; Linux sends each child a SIGTERM (PR_SET_PDEATHSIG)
    proc.wait(timeout=30)
    deadline = time.time() + 90
    while not all(_gone(pid) for pid in pids.values()):
        assert time.time() < deadline, f"a child outlived its killed launcher: {pids}"
        time.sleep(0.2)
    assert mlflow.get_run(run_id).info.status == "KILLED"  # the learner saved, and said how its run ended
    assert (store / "checkpoints" / "latest.pt").is_file()

    third = _launch(tmp_path, "--resume_id", run_id, "--n_steps", "30")  # no learner now: it continues
    said = third.communicate(timeout=180)[0]
    assert third.returncode == 0, said
    assert "resuming at step" in said and mlflow.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_sigterm_of_the_launcher_stops_children_saves_and_marks_the_run_killed(tmp_path):
    proc = _launch(tmp_path, "--n_steps", "100000")
    out = _lines(proc)
    lines = _read_until(proc, out, r"step 10/")
    os.kill(proc.pid, signal.SIGTERM)  # what docker stop, systemd and Slurm send
    rest = _rest(proc, out)
    text = "".join(lines) + rest
    assert proc.returncode == 143, text
    assert "terminated (SIGTERM)" in rest and "Traceback" not in text
    run_id = re.search(r"run (\w{32})", text)[1]
    assert f"--resume_id {run_id}" in rest
    assert all(_gone(pid) for pid in _pids(lines).values()), "a child outlived the launcher"
    store = Path(re.search(r"replay store (\S+)", text)[1])
    assert (store / "checkpoints" / "latest.pt").is_file()
    assert not list(store.rglob("*.tmp")), "half-written files left in the replay store"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert mlflow.get_run(run_id).info.status == "KILLED"


def test_a_killed_generator_is_named_and_the_launcher_exits_non_zero(capsys):
    """launch.watch on real processes: a generator killed with kill -9 while the learner trains on."""
    import subprocess
    import sys

    from launch import watch

    class Proc:  # the part of runtime.processes.Child that watch() uses
        threads = 1

        def __init__(self, name):
            self.name = name
            self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            self.pid = self.proc.pid

        def poll(self):
            return self.proc.poll()

        def grant_threads(self, n):
            return False

    children = [Proc("generator train w0"), Proc("generator val w0"), Proc("learner")]
    try:
        children[0].proc.kill()
        children[0].proc.wait(timeout=10)
        assert watch(children, poll_s=0.05) == ("failed", 1)
    finally:
        for c in children:
            c.proc.kill()
            c.proc.wait(timeout=10)
    assert f"generator train w0 (pid {children[0].pid}) exited with code -9" in capsys.readouterr().err
