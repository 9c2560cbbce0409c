"""Generator throughput and memory: env steps/s per worker, writing real episode files.

    python bench/generator.py                 # a 120-minute token corpus (like the built-in one)
    python bench/generator.py --scale 10      # a corpus 10x larger: memory should not grow
    python bench/generator.py --workers 2     # N worker processes sharing the corpus

The corpus is written with ShardWriter in the tokenizer's layout (`tokens/{train,val}/`, 50,000
steps per shard, meta.json); utterances have 50..250 steps. Each worker runs the random
policy (the null action) and writes its episodes to a temporary replay store. Memory is the
worker's peak resident set (no torch is loaded on this path).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from tokenizer.shards import ShardWriter  # noqa: E402


def make_corpus(data_dir: Path, minutes: float, seed: int = 0, steps_per_second: float = 25.0) -> int:
    """Train split of `minutes` of token steps (+ a small val split); returns the number of train utterances."""
    rng = np.random.default_rng(seed)
    n_utts = 0
    for split, share in (("train", 1.0), ("val", 0.02)):
        target = int(minutes * 60 * steps_per_second * share)
        rows = 0
        with ShardWriter(data_dir / "tokens" / split, max_rows=50_000) as writer:
            while rows < target:
                T = int(rng.integers(50, 251))
                writer.add(
                    per_step={"tokens": rng.integers(0, 1024, (T, 4)).astype(np.int16),
                              "voice": rng.random(T).astype(np.float32)},
                    per_utterance={"utterance_id": f"{split}-{writer.n_utterances:07d}", "speaker": "s", "source": "bench"},
                )
                rows += T
            if split == "train":
                n_utts = writer.n_utterances
    (data_dir / "tokens" / "meta.json").write_text(
        json.dumps({"codebook_size": 1024, "tokens_per_step": 4, "steps_per_second": steps_per_second})
    )
    return n_utts


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_worker(data_dir: str, replay_dir: str, worker: int, n_workers: int, steps: int) -> dict:
    from envs import make_env
    from pydreamer.generator import run_generator
    from runtime.config import load_config

    conf = load_config(["defaults", "audio"])
    conf.update(data_dir=data_dir, generator_log_interval=1e9)
    before = rss_mb()
    env = make_env(conf, worker=worker, n_workers=n_workers)
    env.reset(seed=0)
    env_mb = rss_mb() - before
    env.close()
    stats = run_generator(conf, replay_dir, worker=worker, n_workers=n_workers, n_steps=steps)
    stats.update(
        worker=worker,
        env_index_mb=round(env_mb, 1),
        rss_mb_end=round(rss_mb(), 1),
        rss_mb_peak=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=120.0, help="train corpus size in minutes of speech")
    p.add_argument("--scale", type=int, default=1, help="multiply the corpus size")
    p.add_argument("--steps", type=int, default=200_000, help="env steps per worker")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data_dir", default="", help="token corpus folder (made if empty; default: a temp folder)")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="generator-bench-"))
    data_dir = Path(args.data_dir) if args.data_dir else tmp / "data"
    try:
        if not (data_dir / "tokens" / "meta.json").exists():
            print(f"writing a {args.minutes * args.scale:.0f}-minute token corpus to {data_dir} ...", file=sys.stderr)
            make_corpus(data_dir, args.minutes * args.scale)
        ctx = mp.get_context("spawn")
        jobs = [(str(data_dir), str(tmp / "replay"), w, args.workers, args.steps) for w in range(args.workers)]
        start = time.perf_counter()
        with ctx.Pool(args.workers) as pool:
            results = pool.starmap(one_worker, jobs)
        wall = time.perf_counter() - start
        for r in results:
            r["seconds"] = round(r["seconds"], 2)
            r["steps_per_s"] = round(r["steps_per_s"])
            print(json.dumps({k: v for k, v in r.items() if k != "folder"}))
        total = sum(r["steps"] for r in results)
        print(f"generator: {min(r['steps_per_s'] for r in results)} env steps/s per worker (slowest of {args.workers}), "
              f"{total / wall:.0f} in all; corpus {args.minutes * args.scale:.0f} min; "
              f"peak RSS per worker {max(r['rss_mb_peak'] for r in results)} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
