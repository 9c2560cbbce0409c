"""How far a long command (evaluate, dream) has got, on stderr, in a bounded number of lines.

A terminal gets a tqdm bar redrawn in place; anything else (a log file, launch.py's captured console, a pipe) gets a
line per tenth of the work with the time so far and an estimate of the time left: at most 10 lines however many
steps, so minutes of work are never silent and never a line per step.
"""
from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """Work of a known size done piece by piece: `advance(n)` after each piece, `close()` (or a `with`) at the end."""

    def __init__(self, what: str, total: float, unit: str, stream: IO[str] | None = None, tenths: int = 10):
        self.what, self.total, self.unit, self.done = what, float(total), unit, 0.0
        self.stream = stream or sys.stderr
        self.t0, self.tenths, self.shown = time.monotonic(), tenths, 0
        self.bar = None
        if self.total > 0 and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit, file=self.stream, mininterval=1.0, leave=True)

    def advance(self, n: float = 1) -> None:
        self.done = min(self.total, self.done + n)
        if self.bar is not None:
            self.bar.update(n)
            return
        reached = int(self.done / self.total * self.tenths) if self.total > 0 else 0
        if reached > self.shown:
            self.shown = reached
            self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self.t0
        left = elapsed * (self.total - self.done) / self.done if self.done > 0 else float("nan")
        print(f"{self.what}: {self.done / self.total:4.0%} ({self.done:g}/{self.total:g} {self.unit}), "
              f"{_clock(elapsed)} so far, about {_clock(left)} left", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def say(what: str, text: str, stream: IO[str] | None = None) -> None:
    """One line on stderr between stages of the work (`evaluate: probes of the latent ...`)."""
    print(f"{what}: {text}", file=stream or sys.stderr, flush=True)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan: nothing done yet to estimate from
        return "?"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}" if minutes >= 60 else f"{minutes}:{s:02d}"
