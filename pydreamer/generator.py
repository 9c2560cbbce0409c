"""Generator workers: step an env with a policy and write episodes into the replay store.

Train-split workers write `<replay_dir>/episodes/w<worker>/`, val-split workers write
`<replay_dir>/episodes_eval/w<worker>/`. N workers of a split share its utterances without
duplicates (worker i replays every N-th one) and go epoch after epoch until their share of
the step budget is done; each stops at the first episode end past its share, so no episode
is ever cut short by the budget.

Run all workers (as processes) and wait:
    python -m pydreamer.generator --configs defaults audio tiny --replay_dir DIR
Run one worker here, e.g. worker 3 of 8 on another machine sharing the store:
    python -m pydreamer.generator --configs defaults audio --replay_dir DIR --worker 3 --n_workers 8
The store may be a bucket shared by machines: `--replay_dir s3://bucket/prefix` (runtime/storage.py).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from pydreamer.episodes import EpisodeBuilder, episode_filename, iter_episode_names, label_members, save_episode
from pydreamer.replay_layout import ReplayLayout
from runtime.files import remove_stale_temporaries
from runtime.lease import Lease, LeaseHeld
from runtime.processes import Child, set_torch_threads
from runtime.s3 import RemotePath

if TYPE_CHECKING:  # gymnasium and torch (the policy) are imported where a worker starts, so --help prints at once
    import gymnasium as gym

log = logging.getLogger("pydreamer.generator")



def _next_episode_index(folder) -> int:
    """Continue after the episodes already there, so a restarted worker never overwrites one."""
    indices = [parsed[1] for rel, parsed in iter_episode_names(folder)]
    return max(indices) + 1 if indices else 0


def _seed(conf: Mapping[str, Any], split: str, worker: int, first_episode: int, what: int) -> int:
    """Distinct per split, worker and use; a restarted worker (first_episode > 0) takes a fresh order."""
    split_no = {"train": 0, "val": 1, "test": 2}[split]
    entropy = [conf["seed"], split_no, worker, first_episode, what]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class _MlflowMetrics:
    """Logs the worker's rate to a run (when there is one) without ending or owning the run."""

    def __init__(self, conf: Mapping[str, Any], run_id: str | None, prefix: str):
        self.client = None
        self.run_id = run_id
        self.prefix = prefix
        if run_id:
            from mlflow import MlflowClient

            from runtime.tracking import tracking_uri

            self.client = MlflowClient(tracking_uri(conf))

    def log(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{self.prefix}/{k}", float(v), now, step) for k, v in values.items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as e:  # tracking trouble never stops data generation
            log.warning("mlflow: cannot log generator metrics (%s)", e)


def run_generator(
    conf: Mapping[str, Any],
    replay_dir: Path | str,
    worker: int = 0,
    n_workers: int = 1,
    split: str = "train",
    n_steps: int | None = None,
    n_episodes: int | None = None,
    run_id: str | None = None,
    make_env: Callable[..., gym.Env] | None = None,
) -> dict:
    """One worker: steps the env with the configured policy and writes every finished episode.

    Stops at the first episode end once `n_steps` env steps (or `n_episodes` episodes) are done.
    Returns {"steps", "episodes", "seconds", "steps_per_s", "folder"}.
    """
    from gymnasium import spaces

    if make_env is None:
        from envs import make_env
    if n_steps is None and n_episodes is None:
        raise ValueError("give n_steps or n_episodes")
    env = make_env(conf, split=split, worker=worker, n_workers=n_workers)
    if not isinstance(env.observation_space, spaces.Dict) or "tokens" not in env.observation_space.spaces:
        raise TypeError(f"{conf['env_id']}: the observation space must be a Dict holding 'tokens'")
    if not isinstance(env.action_space, spaces.Discrete):
        raise TypeError(f"{conf['env_id']}: generators support Discrete action spaces, not {env.action_space}")
    layout = ReplayLayout.of(replay_dir)
    folder = layout.worker_episodes(split, worker)
    folder.mkdir(parents=True, exist_ok=True)
    with _worker_lease(layout, split, worker):
        return _generate(conf, env, replay_dir, folder, worker, split, n_steps, n_episodes, run_id)


def _worker_lease(layout: ReplayLayout, split: str, worker: int) -> contextlib.AbstractContextManager:
    """One live writer per worker id of a local store (LeaseHeld for a second: it would overwrite the episodes of
    the first, which numbers them the same); a bucket has no locks (README: Many machines)."""
    if isinstance(layout.root, RemotePath):
        return contextlib.nullcontext()
    return Lease(layout.worker_lease(split, worker), f"generator worker {worker} of the {split} split of {layout.root}")


def _generate(conf: Mapping[str, Any], env: gym.Env, replay_dir: Path | str, folder: Any, worker: int, split: str,
              n_steps: int | None, n_episodes: int | None, run_id: str | None) -> dict:
    """The worker's loop, holding its lease: episodes until the budget is spent."""
    from pydreamer.policy import make_policy

    n_actions, a0 = int(env.action_space.n), int(env.action_space.start)
    stale = remove_stale_temporaries(folder)  # half-written episodes of a worker killed with kill -9
    if stale:
        log.info("removed %d half-written episode file(s) left in %s by a killed worker", len(stale), folder)
    index = _next_episode_index(folder)
    policy = make_policy(conf, env, replay_dir, seed=_seed(conf, split, worker, index, 1))
    prefix = f"generator/{split}_w{worker}"
    metrics = _MlflowMetrics(conf, run_id, prefix)
    log_interval = conf["generator_log_interval"]

    steps = episodes = 0
    start = last_log = time.monotonic()
    seed: int | None = _seed(conf, split, worker, index, 0)
    while (n_steps is None or steps < n_steps) and (n_episodes is None or episodes < n_episodes):
        obs, info = env.reset(seed=seed)
        seed = None
        policy.reset()
        builder = EpisodeBuilder(obs, n_actions)
        while True:
            a = policy(obs)
            obs, reward, terminated, truncated, info = env.step(a)
            builder.add(a - a0, obs, reward, terminated)
            if terminated or truncated:
                break
        T = builder.length
        episode = builder.finish(utterance_id=str(info.get("utterance_id", "")), worker=worker, episode=index,
                                 split=split, **label_members(info.get("labels") or {}))
        save_episode(folder / episode_filename(worker, index, T), episode)
        index += 1
        episodes += 1
        steps += T
        now = time.monotonic()
        if now - last_log >= log_interval:
            rate = steps / (now - start)
            eta = f", ETA {max(n_steps - steps, 0) / rate:.0f} s" if n_steps else ""
            log.info("%s: %d steps, %d episodes, %.0f env steps/s%s", prefix, steps, episodes, rate, eta)
            metrics.log({"env_steps": steps, "episodes": episodes, "env_steps_per_s": rate}, steps)
            last_log = now
    seconds = time.monotonic() - start
    rate = steps / seconds if seconds > 0 else 0.0
    metrics.log({"env_steps": steps, "episodes": episodes, "env_steps_per_s": rate}, steps)
    env.close()
    return {"steps": steps, "episodes": episodes, "seconds": seconds, "steps_per_s": rate, "folder": str(folder)}


# ---- processes -------------------------------------------------------------------------

def worker_budget(conf: Mapping[str, Any], split: str, worker: int, n_workers: int) -> dict:
    """One worker's entry: split, worker, n_workers and its share of the split's step budget
    (the remainder to the first workers); a val worker with no budget makes one pass (n_episodes None)."""
    total = int(conf["n_env_steps"] if split == "train" else conf["n_env_steps_eval"])
    entry = dict(split=split, worker=worker, n_workers=n_workers)
    if split == "val" and total <= 0:
        entry["n_episodes"] = None
    else:
        entry["n_steps"] = total // n_workers + (1 if worker < total % n_workers else 0)
    return entry


def worker_plan(conf: Mapping[str, Any]) -> list[dict]:
    """One entry per generator process: the train workers, then the val (eval) workers."""
    n_train, n_eval = conf["generator_workers"], conf["generator_workers_eval"]
    return ([worker_budget(conf, "train", w, n_train) for w in range(n_train)]
            + [worker_budget(conf, "val", w, n_eval) for w in range(n_eval)])


def worker_args(entry: Mapping[str, Any]) -> list[str]:
    """The command-line flags that make `python -m pydreamer.generator` run one plan entry."""
    return ["--worker", str(entry["worker"]), "--n_workers", str(entry["n_workers"]), "--split", entry["split"]]


def start_generators(configs: list[str], overrides: list[str], replay_dir: Path | str,
                     env: Mapping[str, str] | None = None, conf: Mapping[str, Any] | None = None) -> list[Child]:
    """Every worker of the plan as its own process (one thread each), through the one spawner."""
    from runtime.config import load_config

    conf = conf or load_config(configs, overrides)
    base = ["--configs", *configs, *overrides, "--replay_dir", str(replay_dir)]
    return [Child(f"generator {e['split']} w{e['worker']}", "pydreamer.generator", base + worker_args(e), threads=1,
                  env=env) for e in worker_plan(conf)]


def run_worker(conf: Mapping[str, Any], replay_dir: Path | str, entry: Mapping[str, Any], run_id: str | None) -> dict:
    entry = dict(entry)
    if "n_episodes" in entry and entry["n_episodes"] is None:
        entry["n_episodes"] = one_pass_episodes(conf, entry["split"], entry["worker"], entry["n_workers"])
    if entry["split"] == "val":  # the eval set is made once: a resumed run does not replay it into the store again
        folder = ReplayLayout.of(replay_dir).worker_episodes("val", entry["worker"])
        have = [parsed[2] for _, parsed in iter_episode_names(folder)]
        budget = "n_episodes" if "n_episodes" in entry else "n_steps"
        entry[budget] -= len(have) if budget == "n_episodes" else sum(have)
        if entry[budget] <= 0:
            log.info("generator val w%d: %s already holds its share of the val split (%d episodes); nothing to do",
                     entry["worker"], folder, len(have))
            return {"steps": 0, "episodes": 0, "seconds": 0.0, "steps_per_s": 0.0, "folder": str(folder)}
    stats = run_generator(conf, replay_dir, run_id=run_id, **entry)
    log.info("generator %s w%d done: %d steps, %d episodes, %.0f env steps/s -> %s", entry["split"],
             entry["worker"], stats["steps"], stats["episodes"], stats["steps_per_s"], stats["folder"])
    return stats


def one_pass_episodes(conf: Mapping[str, Any], split: str, worker: int, n_workers: int) -> int:
    """Episodes in one pass over a worker's share of a split (1 for envs that are not a corpus)."""
    from envs import make_env

    env = make_env(conf, split=split, worker=worker, n_workers=n_workers)
    n = int(getattr(env.unwrapped, "n_utterances", 1))
    env.close()
    return n


def _active_run_id() -> str | None:
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        return run_id
    if "mlflow" in sys.modules:
        run = sys.modules["mlflow"].active_run()
        return run.info.run_id if run else None
    return None


def main(argv: list[str] | None = None) -> int:
    from runtime.config import parse_args
    from runtime.config_reference import add_config_help

    parser = add_config_help(argparse.ArgumentParser(prog="python -m pydreamer.generator", description=__doc__))
    parser.add_argument("--worker", type=int, default=None, help="run only this worker, in this process")
    parser.add_argument("--n_workers", type=int, default=None, help="with --worker: how many workers share the split")
    parser.add_argument("--split", choices=("train", "val"), default="train", help="with --worker: which split")
    conf, args = parse_args(argv, parser, writes=("replay_dir", "mlflow_dir"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    set_torch_threads()
    if not conf["replay_dir"]:
        parser.exit(2, f"{parser.prog}: error: set --replay_dir (the replay store folder)\n")
    from envs import MissingTokensError, make_env

    if args.worker is not None:
        splits = [args.split]
    else:
        splits = ["train"] + (["val"] if conf["generator_workers_eval"] > 0 else [])
    try:  # one clear message when the data is not there, before any process starts
        for split in splits:
            make_env(conf, split=split).close()
    except (MissingTokensError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    run_id = _active_run_id()
    signal.signal(signal.SIGTERM, _on_sigterm)  # stop like Ctrl-C: the episode being written is removed, not left half
    if args.worker is not None:
        default_n = conf["generator_workers"] if args.split == "train" else conf["generator_workers_eval"]
        n_workers = args.n_workers or int(default_n)
        try:
            run_worker(conf, conf["replay_dir"], worker_budget(conf, args.split, args.worker, n_workers), run_id)
        except KeyboardInterrupt:
            log.info("generator %s w%d: stopped", args.split, args.worker)
            return 130
        except LeaseHeld as e:  # two processes given one --worker would number their episodes alike
            parser.exit(2, f"{parser.prog}: error: {e}: give this one another --worker\n")
        except OSError as e:  # disk full, store unwritable: the episodes written so far are intact
            print(f"{parser.prog}: error: {args.split} worker {args.worker}: cannot write to the replay store "
                  f"({e.strerror or e}: {e.filename or conf['replay_dir']}); the episodes written before are intact",
                  file=sys.stderr, flush=True)
            return 1
        return 0
    procs = start_generators(list(conf["configs"]), overrides_of(argv), conf["replay_dir"], conf=conf)
    log.info("started %d generator processes writing to %s", len(procs), conf["replay_dir"])
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.stop()
        return 130
    failed = [p.name for p, rc in zip(procs, codes) if rc != 0]
    if failed:
        print(f"{parser.prog}: error: {', '.join(failed)} failed (see above)", file=sys.stderr)
        return 1
    return 0


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt()


def overrides_of(argv: list[str] | None) -> list[str]:
    """The `--key value` overrides of a command line, without `--configs` and this module's own flags."""
    from runtime.config import split_overrides

    return split_overrides(list(sys.argv[1:] if argv is None else argv), drop=("replay_dir", "worker", "n_workers", "split"))


if __name__ == "__main__":
    sys.exit(main())
