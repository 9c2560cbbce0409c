"""The one way a stage starts another process, and how many threads each may use.

Processes share a few cores (two on the CPU demo machine). A child left to PyTorch's
default takes every core, so N children run N times oversubscribed; here each child is
told its thread count through `OMP_NUM_THREADS` and sets it with `set_torch_threads()`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Mapping, Sequence

STOP_GRACE_S = 60.0  # how long a child may take to stop (the learner writes a checkpoint)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n`, else to OMP_NUM_THREADS as the parent set it, else all cores."""
    import torch

    if n is None:
        n = int(os.environ.get("OMP_NUM_THREADS") or cpu_cores())
    n = max(1, int(n))
    torch.set_num_threads(n)
    return n


def rank_threads(local_ranks: int) -> int:
    """Intra-op threads of one of `local_ranks` learner processes on this host: its share of the cores
    (cores // local_ranks, at least one), and no more than OMP_NUM_THREADS when that is set (launch.py
    --learners N sets it to each rank's share of what the generators leave; torchrun sets it to 1 when
    it starts several processes and finds it unset)."""
    n = max(1, cpu_cores() // max(1, int(local_ranks)))
    if os.environ.get("OMP_NUM_THREADS"):
        n = min(n, max(1, int(os.environ["OMP_NUM_THREADS"])))
    return n


def _die_with(parent: int):
    """For the child, between fork and exec: ask Linux for a SIGTERM when the parent dies (PR_SET_PDEATHSIG), so
    a launcher killed with kill -9, or whose terminal closed, leaves no learner or generator running on alone;
    the SIGTERM stops it as the launcher would (the learner saves first). Elsewhere (no prctl) it does nothing."""

    def arm() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the wish was made
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class Child:
    """`python -m <module> <args>` in its own session (so Ctrl-C reaches only the parent, which
    stops children in order), with its thread count set in its environment."""

    def __init__(self, name: str, module: str, args: Sequence[str], threads: int,
                 env: Mapping[str, str] | None = None):
        self.name = name
        self.cmd = [sys.executable, "-m", module, *args]
        child_env = dict(os.environ if env is None else env)
        child_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(self.cmd, env=child_env, start_new_session=True,
                                     preexec_fn=_die_with(os.getpid()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM to the child itself (not its group: the learner's data-loader workers must
        outlive it while it writes its last checkpoint); SIGKILL to the group after `grace` s."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop in {grace:.0f} s; killing it", file=sys.stderr, flush=True)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return self.proc.wait()
