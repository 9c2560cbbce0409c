"""Replay reader throughput and memory: batches/s of 32 x 48 steps from a store of 10,000 episodes.

    python bench/replay.py                        # 10,000 episodes, 1 DataLoader worker
    python bench/replay.py --scale 10             # a store 10x larger: memory should not grow
    python bench/replay.py --store /tmp/store     # keep (and reuse) the store there

Episodes have 50..250 steps (2..10 s of speech at 25 steps/s) and are written by the same
`save_episode` the generators use. Memory is the proportional set size (PSS) of the learner
process plus its DataLoader workers, sampled while batches stream.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pydreamer.data import make_replay_loader  # noqa: E402
from pydreamer.episodes import episode_filename, list_episodes, save_episode  # noqa: E402
from runtime.config import load_config  # noqa: E402


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (torch's libraries, forked workers) are counted once in a sum."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def make_store(folder: Path, n_episodes: int, n_workers: int = 4, tokens_per_step: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(n_episodes):
        w = i % n_workers
        T = int(rng.integers(50, 251))
        reset = np.zeros(T + 1, bool)
        reset[0] = True
        terminal = np.zeros(T + 1, bool)
        terminal[-1] = True
        action = np.ones((T + 1, 1), np.float32)
        action[0] = 0
        episode = dict(
            tokens=rng.integers(0, 1024, size=(T + 1, tokens_per_step)).astype(np.int16),
            action=action,
            reward=rng.random(T + 1).astype(np.float32),
            terminal=terminal,
            reset=reset,
            utterance_id=np.asarray(f"utt-{i:07d}"),
            worker=np.asarray(w),
            episode=np.asarray(i // n_workers),
            split=np.asarray("train"),
        )
        save_episode(folder / f"w{w}" / episode_filename(w, i // n_workers, T), episode)
        if (i + 1) % 10000 == 0:
            print(f"  wrote {i + 1} episodes ({time.perf_counter() - start:.0f} s)", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=10_000)
    p.add_argument("--scale", type=int, default=1, help="multiply the store size")
    p.add_argument("--store", default="", help="replay store folder (made if it has no episodes; default: a temp folder)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batch_length", type=int, default=48)
    p.add_argument("--data_workers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0, help="measure for this long")
    args = p.parse_args()

    n = args.episodes * args.scale
    tmp = None if args.store else tempfile.mkdtemp(prefix="replay-bench-")
    replay_dir = Path(args.store or tmp)
    try:
        have = len(list_episodes(replay_dir / "episodes"))
        if have < n:
            print(f"writing {n - have} episodes to {replay_dir}/episodes ...", file=sys.stderr)
            make_store(replay_dir / "episodes", n - have, seed=have)
        n_files = len(list_episodes(replay_dir / "episodes"))

        conf = load_config(["defaults"])
        conf.update(batch_size=args.batch_size, batch_length=args.batch_length, data_workers=args.data_workers)
        torch.set_num_threads(1)
        loader = make_replay_loader(conf, replay_dir)
        it = iter(loader)
        t0 = time.perf_counter()
        next(it)
        first_batch_s = time.perf_counter() - t0
        for _ in range(20):  # warm up: workers started, lanes filled
            next(it)
        me = os.getpid()
        mem = []
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            batch = next(it)
            assert batch["tokens"].shape == (args.batch_length, args.batch_size, 4)
            count += 1
            if count % 100 == 0:
                mem.append(pss_mb(me) + sum(pss_mb(c) for c in children(me)))
        elapsed = time.perf_counter() - start
        mem.append(pss_mb(me) + sum(pss_mb(c) for c in children(me)))
        del it, loader
        result = {
            "episodes_in_store": n_files,
            "batch": f"{args.batch_size} x {args.batch_length}",
            "data_workers": args.data_workers,
            "batches_per_s": round(count / elapsed, 1),
            "steps_per_s": round(count * args.batch_size * args.batch_length / elapsed),
            "first_batch_s": round(first_batch_s, 2),
            "pss_mb_start": round(mem[0], 1),
            "pss_mb_end": round(mem[-1], 1),
            "pss_mb_max": round(max(mem), 1),
        }
        print(json.dumps(result))
        print(f"reader: {result['batches_per_s']} batches/s of {result['batch']} steps "
              f"({n_files} episodes, {args.data_workers} data workers, memory (PSS, learner + workers) {result['pss_mb_max']} MB)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
