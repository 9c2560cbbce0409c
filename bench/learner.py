"""Learner throughput: gradient steps per second and the fraction of time spent waiting for data.

    python bench/learner.py --configs defaults audio small --steps 40
    python bench/learner.py --configs defaults audio --steps 10 --store REPLAY_DIR
    python bench/learner.py --configs defaults audio --steps 5 --profile   # where a step's time goes

It trains the configured model on batches from the real replay reader (make_replay_loader,
with `data_workers` processes) exactly as the learner does, after a few warm-up steps.
Without --store it first writes a store of synthetic utterance-like episodes (tokens that
hold for a few steps, then change) with the codebook size and G of
`<data_dir>/tokens/meta.json` (or the config). Prints one JSON line per run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
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
    from pydreamer.data import make_replay_loader
    from pydreamer.train import Learner
    from runtime.device import resolve_device
    from runtime.processes import set_torch_threads
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import MissingTokensError, read_token_spec

    try:  # the corpus' own dimensions when data_dir has one, else the config's (synthetic store)
        spec = read_token_spec(DataLayout.of(conf.data_dir), conf.codebook_size)
        dims = {"n_tokens": spec.codebook_size, "tokens_per_step": spec.tokens_per_step, "action_dim": 1}
    except MissingTokensError:
        dims = {"n_tokens": conf.codebook_size, "tokens_per_step": conf.tokens_per_step, "action_dim": 1}
    device = resolve_device(conf.device)
    set_torch_threads()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store or tmp)
        if not args.store:
            synthetic_store(store, args.episodes, dims["n_tokens"], dims["tokens_per_step"])
        learner = Learner(conf, store, dims, device)
        loader = iter(make_replay_loader(conf, store))
        for _ in range(args.warmup):
            learner.train_step(next(loader))
        if device.type == "cuda":
            torch.cuda.synchronize()
        wait = 0.0
        profiler = phase_profiler(device) if args.profile else contextlib.nullcontext()
        with profiler:
            start = time.perf_counter()
            for _ in range(args.steps):
                t0 = time.perf_counter()
                batch = next(loader)
                wait += time.perf_counter() - t0
                learner.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in learner.model.parameters())
    print(json.dumps({
        "configs": conf.configs, "device": str(device), "threads": torch.get_num_threads(),
        "params_M": round(params / 1e6, 2), "batch": [conf.batch_size, conf.batch_length],
        "data_workers": conf.data_workers, "amp": learner.amp, "steps": args.steps,
        "grad_steps_per_sec": round(args.steps / elapsed, 3),
        "data_wait_frac": round(wait / elapsed, 4),
        "train_steps_per_sec": round(args.steps * conf.batch_size * conf.batch_length / elapsed, 1),
        **({"phases": phase_shares(profiler, elapsed)} if args.profile else {}),
    }))


if __name__ == "__main__":
    main()
