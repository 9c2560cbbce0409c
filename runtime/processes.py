"""The one way a stage starts another process, and how many threads each may use.

Processes share a few cores (two on the CPU demo machine). A child left to PyTorch's
default takes every core, so N children run N times oversubscribed; here each child is
told its thread count through `OMP_NUM_THREADS` and sets it with `set_torch_threads()`.
A child started with `more_threads_later` may be given more while it runs (`Child.grant_threads`, read by
`ThreadGrants.poll`): the learner takes the cores of the generators once they have finished.
"""
from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
from typing import Mapping, Sequence

STOP_GRACE_S = 60.0  # how long a child may take to stop (the learner writes a checkpoint)
THREADS_FD = "PYDREAMER_THREADS_FD"  # the child's end of the pipe its parent grants threads through


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_budget() -> int:
    """The threads this process and its children may use in all: OMP_NUM_THREADS where whoever started it set it
    (two launches on one machine each set it, or their threads stall each other), else every core."""
    return max(1, int(os.environ.get("OMP_NUM_THREADS") or cpu_cores()))


def set_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n`, else to OMP_NUM_THREADS as the parent set it, else all cores."""
    import torch

    n = max(1, int(thread_budget() if n is None else n))
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
                 env: Mapping[str, str] | None = None, more_threads_later: bool = False):
        self.name = name
        self.threads = threads
        self.cmd = [sys.executable, "-m", module, *args]
        child_env = dict(os.environ if env is None else env)
        child_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        child_env.pop(THREADS_FD, None)
        self._grants: int | None = None  # our end of the pipe (a pipe, not a signal: nothing is lost or fatal
        read_end = None                  # before the child is ready to hear it)
        if more_threads_later:
            read_end, self._grants = os.pipe()
            child_env[THREADS_FD] = str(read_end)
        try:
            self.proc = subprocess.Popen(self.cmd, env=child_env, start_new_session=True,
                                         preexec_fn=_die_with(os.getpid()),
                                         pass_fds=(read_end,) if read_end is not None else ())
        finally:
            if read_end is not None:
                os.close(read_end)

    def grant_threads(self, n: int) -> bool:
        """Tell a child started with `more_threads_later` that it may now use `n` threads. False when it cannot
        hear (not started so, or gone)."""
        if self._grants is None or self.proc.poll() is not None:
            return False
        try:
            os.write(self._grants, f"{int(n)}\n".encode())
        except OSError:  # BrokenPipeError: it exited meanwhile
            return False
        self.threads = int(n)
        return True

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
        if self._grants is not None:
            os.close(self._grants)
            self._grants = None
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


class ThreadGrants:
    """The child's side of `Child.grant_threads`: `poll()` between units of work (a training step) returns the
    thread count granted since the last poll, or None. Without the pipe (started otherwise) it is always None."""

    def __init__(self, fd: int | None):
        self.fd = fd

    @classmethod
    def from_env(cls) -> "ThreadGrants":
        """The pipe named in the environment, if it is an open pipe (the variable may have been inherited by a
        process in which that number is some other file, which must not be read)."""
        value = os.environ.get(THREADS_FD, "")
        try:
            return cls(int(value) if value.isdigit() and stat.S_ISFIFO(os.fstat(int(value)).st_mode) else None)
        except OSError:
            return cls(None)

    def poll(self) -> int | None:
        if self.fd is None:
            return None
        try:
            ready, _, _ = select.select([self.fd], [], [], 0)
            data = os.read(self.fd, 4096) if ready else None
        except OSError:  # not an open pipe any more: stop listening, and leave the number alone
            self.fd = None
            return None
        if data is None:
            return None
        if not data:  # the parent closed its end: nothing more will come
            self.close()
            return None
        words = [w for w in data.decode(errors="replace").split() if w.isdigit()]
        return max(1, int(words[-1])) if words else None

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
