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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


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
        def __init__(self, name):
            self.name = name
            self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            self.pid = self.proc.pid

        def poll(self):
            return self.proc.poll()

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
