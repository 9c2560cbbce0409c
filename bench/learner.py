"""Learner throughput: gradient steps per second and the fraction of time spent waiting for data.

    python bench/learner.py --configs defaults audio small --steps 40
    python bench/learner.py --configs defaults audio --steps 10 --store REPLAY_DIR
    python bench/learner.py --configs defaults audio --steps 5 --profile   # where a step's time goes
    torchrun --standalone --nproc_per_node 2 bench/learner.py --configs defaults audio small --steps 40

It trains the configured model on batches from the real replay reader (make_replay_loader,
with `data_workers` processes) exactly as the learner does, after a few warm-up steps.
Without --store it first writes a store of synthetic utterance-like episodes (tokens that
hold for a few steps, then change) with the codebook size and G of
`<data_dir>/tokens/meta.json` (or the config). Prints one JSON line per run.

Under torchrun every rank trains as the distributed learner does (DDP, its own share of the
store, the per-step stop agreement); rank 0 makes the synthetic store and prints the line,
with the samples (sequence steps) per second of all ranks together and of each rank.
`bench/ddp.py` alternates 1-rank and N-rank runs on one store.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime.config import parse_args  # noqa: E402


def synthetic_store(folder: Path, n_episodes: int, n_tokens: int, G: int, seed: int = 0) -> None:
    from pydreamer.episodes import episode_filename, save_episode

    rng = np.random.default_rng(seed)
    for i in range(n_episodes):
        T = int(rng.integers(75, 250))  # 3..10 s at 25 steps/s
        hold = rng.integers(1, 6, size=T + 1).cumsum()
        change = np.searchsorted(hold, np.arange(T + 1))
        codes = rng.integers(n_tokens, size=(change.max() + 1, G))
        tokens = codes[change].astype(np.int16)
        reset = np.zeros(T + 1, bool)
        reset[0] = True
        action = np.zeros((T + 1, 1), np.float32)
        action[1:] = 1.0
        terminal = np.zeros(T + 1, bool)
        terminal[-1] = True
        save_episode(folder / "episodes" / "w0" / episode_filename(0, i, T), {
            "tokens": tokens, "action": action, "reward": rng.random(T + 1).astype(np.float32),
            "terminal": terminal, "reset": reset})


PHASES = ("learner/world_model", "world_model/observe", "world_model/decoder", "world_model/overshoot",
          "learner/actor_critic", "learner/backward", "learner/optimizer")


def phase_profiler(device: torch.device):
    """torch.profiler over the timed steps: the learner labels its phases with record_function."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=activities)


def phase_shares(profiler, elapsed: float) -> dict[str, float]:
    """Each labelled phase's wall time as a fraction of the timed steps (nested phases overlap their parent;
    on CUDA the host-side time, which is what a launch-bound step loop costs)."""
    totals = {e.key: e.cpu_time_total / 1e6 for e in profiler.key_averages() if e.key in PHASES}
    return {k: round(totals.get(k, 0.0) / elapsed, 3) for k in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/learner.py", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed gradient steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=200, help="synthetic episodes when no --replay_dir")
    parser.add_argument("--store", default="", help="an existing replay store to read instead of a synthetic one")
    parser.add_argument("--profile", action="store_true",
                        help="also report each phase's share of the step (torch.profiler, the learner's labels)")
    conf, args = parse_args(None, parser)
    from runtime import distributed
    from pydreamer.data import make_replay_loader
    from pydreamer.learner.loop import Learner
    from runtime.device import resolve_device
    from runtime.processes import rank_threads, set_torch_threads
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import MissingTokensError, read_token_spec

    try:  # the corpus' own dimensions when data_dir has one, else the config's (synthetic store)
        spec = read_token_spec(DataLayout.of(conf.data_dir), conf.codebook_size)
        dims = {"n_tokens": spec.codebook_size, "tokens_per_step": spec.tokens_per_step, "action_dim": 1}
    except MissingTokensError:
        dims = {"n_tokens": conf.codebook_size, "tokens_per_step": conf.tokens_per_step, "action_dim": 1}
    ranks = distributed.Ranks.from_env()
    device = resolve_device(conf.device)
    set_torch_threads(rank_threads(ranks.local_world_size) if ranks.distributed else None)
    if ranks.distributed:
        device = distributed.rank_device(device, ranks)
        distributed.init(ranks, device)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store or tmp)
        if not args.store and ranks.is_main:
            synthetic_store(store, args.episodes, dims["n_tokens"], dims["tokens_per_step"])
        if ranks.distributed:  # rank 0's store (all ranks on one host), made before anyone reads it
            store = Path(distributed.broadcast(str(store), device))
        learner = Learner(conf, store, dims, device, ranks)
        learner.distribute()
        loader = iter(make_replay_loader(conf, store, rank=ranks.rank, world_size=ranks.world_size))
        for _ in range(args.warmup):
            learner.agree(0)
            learner.train_step(next(loader))
        if device.type == "cuda":
            torch.cuda.synchronize()
        wait = 0.0
        profiler = phase_profiler(device) if args.profile else contextlib.nullcontext()
        with profiler:
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                t0 = time.perf_counter()
                batch = next(loader)
                wait += time.perf_counter() - t0
                learner.agree(0)  # the learner's per-step stop agreement (a no-op on one rank)
                learner.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
        # cpu_frac: this process's CPU seconds (all its threads) per wall second: below its thread count
        # when other work on the machine takes the cores.
        mine = {"elapsed": elapsed, "wait": wait / elapsed, "cpu_frac": cpu / elapsed}
        every = [mine]
        if ranks.distributed:
            import torch.distributed as dist

            every = [None] * ranks.world_size
            dist.all_gather_object(every, mine)
            distributed.agree(0, device)  # rank 0's temporary store outlives every reader
            distributed.shutdown()
    if not ranks.is_main:
        return
    params = sum(p.numel() for p in learner.model.parameters())
    elapsed = max(r["elapsed"] for r in every)
    samples = args.steps * conf.batch_size * conf.batch_length
    print(json.dumps({
        "configs": conf.configs, "device": str(device), "ranks": ranks.world_size,
        "threads": torch.get_num_threads(),
        "params_M": round(params / 1e6, 2), "batch": [conf.batch_size, conf.batch_length],
        "data_workers": conf.data_workers, "amp": learner.amp, "steps": args.steps,
        "grad_steps_per_sec": round(args.steps / elapsed, 3),
        "data_wait_frac": round(mine["wait"], 4),
        "data_wait_frac_ranks": [round(r["wait"], 4) for r in every],
        "cpu_frac_ranks": [round(r["cpu_frac"], 2) for r in every],
        "train_steps_per_sec": round(samples / elapsed, 1),  # per rank (sequence steps per second)
        "samples_per_sec_total": round(ranks.world_size * samples / elapsed, 1),
        **({"phases": phase_shares(profiler, elapsed)} if args.profile else {}),
    }))


if __name__ == "__main__":
    main()
