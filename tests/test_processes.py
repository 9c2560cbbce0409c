"""Child processes: the threads a parent grants a running child (the learner takes the generators' cores once
they are done), end to end through a real pipe and a real process."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from runtime.processes import THREADS_FD, Child, ThreadGrants

ROOT = Path(__file__).resolve().parents[1]


def test_thread_grants_read_the_last_word_and_stop_at_the_parents_close():
    read_end, write_end = os.pipe()
    grants = ThreadGrants(read_end)
    try:
        assert grants.poll() is None  # nothing granted yet: no wait
        os.write(write_end, b"2\n")
        assert grants.poll() == 2 and grants.poll() is None  # each grant heard once
        os.write(write_end, b"1\n3\n")
        assert grants.poll() == 3  # the parent's last word counts
        os.write(write_end, b"0\n")
        assert grants.poll() == 1  # never fewer than one thread
    finally:
        os.close(write_end)
    assert grants.poll() is None and grants.fd is None  # the parent closed its end: the pipe is let go


def test_thread_grants_without_a_pipe_are_always_none(monkeypatch):
    monkeypatch.delenv(THREADS_FD, raising=False)
    assert ThreadGrants.from_env().poll() is None
    monkeypatch.setenv(THREADS_FD, "not-a-number")
    assert ThreadGrants.from_env().poll() is None
    assert ThreadGrants(987).poll() is None  # a number that is no open file: nothing, and no error
    with open(__file__, "rb") as other:  # a number inherited where it is some other file: never read from
        monkeypatch.setenv(THREADS_FD, str(other.fileno()))
        assert ThreadGrants.from_env().fd is None and other.tell() == 0


def test_a_child_hears_the_threads_granted_after_it_started():
    """A real child (this file run as a module) waits for a grant and exits with the number it heard."""
    child = Child("probe", "tests.test_processes", [], threads=1, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                  more_threads_later=True)
    try:
        assert child.threads == 1
        assert child.grant_threads(3) and child.threads == 3
        assert child.wait(timeout=60) == 3
        assert not child.grant_threads(2)  # gone: nothing to tell, and no error
    finally:
        child.stop(grace=5)
    plain = Child("plain", "tests.test_processes", [], threads=1, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert not plain.grant_threads(2)  # not started to hear grants
        assert plain.wait(timeout=60) == 100  # and it found no pipe
    finally:
        plain.stop(grace=5)


@pytest.mark.parametrize("cores, omp, expected", [(2, "", [2]), (1, "", []), (2, "1", [])])
def test_the_launcher_grants_the_learner_every_core_once_the_generators_are_done(monkeypatch, capsys, cores, omp,
                                                                                 expected):
    """Every core, or what OMP_NUM_THREADS allows where the launcher's caller set it (two launches on 2 cores)."""
    import runtime.processes
    from launch import watch

    monkeypatch.setattr(runtime.processes, "cpu_cores", lambda: cores)
    monkeypatch.setenv("OMP_NUM_THREADS", omp)

    class Done:  # a generator that finished its budget
        name, pid, threads = "generator train w0", 1, 1

        def poll(self):
            return 0

    class Learner:  # trains until it has heard a grant (or, on one core, at once)
        name, pid, threads = "learner", 2, 1

        def __init__(self):
            self.granted, self.polls = [], 0

        def poll(self):
            self.polls += 1
            return 0 if self.granted or self.polls > 3 else None

        def grant_threads(self, n):
            self.granted.append(n)
            return True

    learner = Learner()
    assert watch([Done(), Done(), learner], poll_s=0.0) == ("done", 0)
    assert learner.granted == expected
    assert ("the learner may use 2 threads" in capsys.readouterr().out) == bool(expected)


if __name__ == "__main__":  # the child of test_a_child_hears_the_threads_granted_after_it_started
    import select

    grants = ThreadGrants.from_env()
    if grants.fd is None:
        sys.exit(100)
    select.select([grants.fd], [], [], 30)
    sys.exit(grants.poll() or 101)
