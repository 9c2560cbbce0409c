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
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pydreamer.episodes import episode_filename, iter_episode_names, save_episode
from pydreamer.models.checkpoint import checkpoint_path

log = logging.getLogger("pydreamer.generator")

SUBDIRS = {"train": "episodes", "val": "episodes_eval"}


class RandomPolicy:
    """Uniformly random actions: the prefill policy (and the only one that matters for the null action)."""

    def __init__(self, conf: Mapping[str, Any] | None, observation_space: spaces.Space, action_space: spaces.Space,
                 checkpoint_path: Path | str | None = None, seed: int | None = None):
        if not isinstance(action_space, spaces.Discrete):
            raise TypeError(f"generators support Discrete action spaces, not {action_space}")
        self.n = int(action_space.n)
        self.start = int(action_space.start)
        self.rng = np.random.default_rng(seed)
        self._draws = np.zeros(0, np.int64)

    def reset(self) -> None:
        pass

    def reload(self) -> bool:
        return False

    def __call__(self, obs: dict) -> int:
        if self.n == 1:
            return self.start
        if len(self._draws) == 0:  # draw in blocks: one numpy call per 1024 steps
            self._draws = self.rng.integers(self.n, size=1024)
        a, self._draws = int(self._draws[0]), self._draws[1:]
        return self.start + a


class PrefilledNetworkPolicy:
    """The learner's latest checkpoint; cheap random actions until the checkpoint file exists.

    At an episode start, once `reload_interval` env steps have passed, it asks the network
    policy to load a newer checkpoint, so an episode is never acted by two different networks.
    """

    def __init__(self, conf: Mapping[str, Any], observation_space, action_space, checkpoint_path: Path,
                 seed: int | None = None, reload_interval: int = 1000):
        from pydreamer.policy import NetworkPolicy  # torch and the model are loaded only for this policy

        self.checkpoint_path = Path(checkpoint_path)
        self.random = RandomPolicy(conf, observation_space, action_space, seed=seed)
        self.network = NetworkPolicy(conf, observation_space, action_space, self.checkpoint_path)
        self.reload_interval = int(reload_interval)
        self.use_network = False
        self.n_reloads = 0
        self._steps_since_check = self.reload_interval  # look at the first episode start

    def reset(self) -> None:
        if self._steps_since_check >= self.reload_interval:
            self._steps_since_check = 0
            if self.checkpoint_path.exists():
                self.use_network = True
                if self.network.reload():
                    self.n_reloads += 1
                    log.info("policy: loaded %s (reload %d)", self.checkpoint_path, self.n_reloads)
        (self.network if self.use_network else self.random).reset()

    def reload(self) -> bool:
        """Look for a newer checkpoint now; True when one was loaded."""
        self._steps_since_check = self.reload_interval
        before = self.n_reloads
        self.reset()
        return self.n_reloads > before

    def __call__(self, obs: dict) -> int:
        self._steps_since_check += 1
        return int(self.network(obs)) if self.use_network else self.random(obs)


def make_policy(conf: Mapping[str, Any], env: gym.Env, replay_dir: Path | str, seed: int | None = None):
    kind = conf.get("generator_policy", "random")
    if kind == "random":
        return RandomPolicy(conf, env.observation_space, env.action_space, seed=seed)
    if kind == "network":
        return PrefilledNetworkPolicy(conf, env.observation_space, env.action_space, checkpoint_path(replay_dir),
                                      seed=seed, reload_interval=conf.get("policy_reload_interval", 1000))
    raise ValueError(f"generator_policy must be 'random' or 'network', not {kind!r}")


def _next_episode_index(folder: Path) -> int:
    """Continue after the episodes already there, so a restarted worker never overwrites one."""
    indices = [parsed[1] for rel, parsed in iter_episode_names(folder)]
    return max(indices) + 1 if indices else 0


def _seed(conf: Mapping[str, Any], split: str, worker: int, first_episode: int, what: int) -> int:
    """Distinct per split, worker and use; a restarted worker (first_episode > 0) takes a fresh order."""
    split_no = {"train": 0, "val": 1, "test": 2}[split]
    entropy = [int(conf.get("seed", 0)), split_no, worker, first_episode, what]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _token_dtype(tokens: np.ndarray):
    if tokens.size == 0 or tokens.dtype.kind not in "iu":
        return tokens.dtype
    lo, hi = tokens.min(), tokens.max()
    for dt in (np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return dt
    return tokens.dtype


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
    if make_env is None:
        from envs import make_env
    if n_steps is None and n_episodes is None:
        raise ValueError("give n_steps or n_episodes")
    if split not in SUBDIRS:
        raise ValueError(f"split must be one of {', '.join(SUBDIRS)}, not {split!r}")
    env = make_env(conf, split=split, worker=worker, n_workers=n_workers)
    if not isinstance(env.observation_space, spaces.Dict) or "tokens" not in env.observation_space.spaces:
        raise TypeError(f"{conf['env_id']}: the observation space must be a Dict holding 'tokens'")
    if not isinstance(env.action_space, spaces.Discrete):
        raise TypeError(f"{conf['env_id']}: generators support Discrete action spaces, not {env.action_space}")
    n_actions, a0 = int(env.action_space.n), int(env.action_space.start)
    folder = Path(replay_dir) / SUBDIRS[split] / f"w{worker}"
    folder.mkdir(parents=True, exist_ok=True)
    index = _next_episode_index(folder)
    policy = make_policy(conf, env, replay_dir, seed=_seed(conf, split, worker, index, 1))
    prefix = f"generator/{split}_w{worker}"
    metrics = _MlflowMetrics(conf, run_id, prefix)
    log_interval = float(conf.get("generator_log_interval", 10.0))

    steps = episodes = 0
    start = last_log = time.monotonic()
    seed: int | None = _seed(conf, split, worker, index, 0)
    obs_keys = list(env.observation_space.spaces)
    eye = np.eye(n_actions, dtype=np.float32)
    while (n_steps is None or steps < n_steps) and (n_episodes is None or episodes < n_episodes):
        obs, info = env.reset(seed=seed)
        seed = None
        policy.reset()
        rows = {k: [obs[k]] for k in obs_keys}
        actions, rewards, terminals = [-1], [0.0], [False]
        while True:
            a = policy(obs)
            obs, reward, terminated, truncated, info = env.step(a)
            for k in obs_keys:
                rows[k].append(obs[k])
            actions.append(a - a0)
            rewards.append(reward)
            terminals.append(terminated)
            if terminated or truncated:
                break
        T = len(rewards) - 1
        action = np.zeros((T + 1, n_actions), np.float32)
        action[1:] = eye[np.asarray(actions[1:])]
        episode = {k: np.stack(v) for k, v in rows.items()}
        episode["tokens"] = episode["tokens"].astype(_token_dtype(episode["tokens"]))
        reset = np.zeros(T + 1, bool)
        reset[0] = True
        episode.update(
            action=action,
            reward=np.asarray(rewards, np.float32),
            terminal=np.asarray(terminals, bool),
            reset=reset,
            utterance_id=np.asarray(str(info.get("utterance_id", ""))),
            worker=np.asarray(worker),
            episode=np.asarray(index),
            split=np.asarray(split),
        )
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

def _share(total: int, worker: int, n_workers: int) -> int:
    """Worker `worker`'s part of `total` steps (the remainder goes to the first workers)."""
    return total // n_workers + (1 if worker < total % n_workers else 0)


def worker_plan(conf: Mapping[str, Any]) -> list[dict]:
    """One entry per generator process: split, worker, n_workers and its step (or episode) budget."""
    plan = []
    n_train = int(conf.get("generator_workers", 1))
    for w in range(n_train):
        plan.append(dict(split="train", worker=w, n_workers=n_train, n_steps=_share(int(conf["n_env_steps"]), w, n_train)))
    n_eval = int(conf.get("generator_workers_eval", 0))
    eval_steps = int(conf.get("n_env_steps_eval", 0))
    for w in range(n_eval):
        entry = dict(split="val", worker=w, n_workers=n_eval)
        if eval_steps > 0:
            entry["n_steps"] = _share(eval_steps, w, n_eval)
        else:
            entry["n_episodes"] = None  # one pass over this worker's share of the val split
        plan.append(entry)
    return plan


def _process_main(conf: dict, replay_dir: str, entry: dict, run_id: str | None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from runtime.config import Config

    conf = Config(conf)
    entry = dict(entry)
    if "n_episodes" in entry and entry["n_episodes"] is None:
        entry["n_episodes"] = one_pass_episodes(conf, entry["split"], entry["worker"], entry["n_workers"])
    stats = run_generator(conf, replay_dir, run_id=run_id, **entry)
    log.info("generator %s w%d done: %d steps, %d episodes, %.0f env steps/s -> %s", entry["split"],
             entry["worker"], stats["steps"], stats["episodes"], stats["steps_per_s"], stats["folder"])


def one_pass_episodes(conf: Mapping[str, Any], split: str, worker: int, n_workers: int) -> int:
    """Episodes in one pass over a worker's share of a split (1 for envs that are not a corpus)."""
    from envs import make_env

    env = make_env(conf, split=split, worker=worker, n_workers=n_workers)
    n = int(getattr(env.unwrapped, "n_utterances", 1))
    env.close()
    return n


def start_generators(conf: Mapping[str, Any], replay_dir: Path | str, run_id: str | None = None) -> list:
    """Start every generator of `worker_plan(conf)` as a process (spawned: no inherited threads or handles)."""
    ctx = mp.get_context("spawn")
    procs = []
    for entry in worker_plan(conf):
        p = ctx.Process(target=_process_main, args=(dict(conf), str(replay_dir), entry, run_id),
                        name=f"generator-{entry['split']}-w{entry['worker']}", daemon=True)
        p.start()
        procs.append(p)
    return procs


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

    parser = argparse.ArgumentParser(prog="python -m pydreamer.generator", description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=int, default=None, help="run only this worker, in this process")
    parser.add_argument("--n_workers", type=int, default=None, help="with --worker: how many workers share the split")
    parser.add_argument("--split", choices=("train", "val"), default="train", help="with --worker: which split")
    conf, args = parse_args(argv, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not conf.get("replay_dir"):
        parser.exit(2, f"{parser.prog}: error: set --replay_dir (the replay store folder)\n")
    from envs import MissingTokensError, make_env

    if args.worker is not None:
        splits = [args.split]
    else:
        splits = ["train"] + (["val"] if int(conf.get("generator_workers_eval", 0)) > 0 else [])
    try:  # one clear message when the data is not there, before any process starts
        for split in splits:
            make_env(conf, split=split).close()
    except (MissingTokensError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    run_id = _active_run_id()
    if args.worker is not None:
        n_workers = args.n_workers or int(conf.get("generator_workers", 1))
        budget = int(conf["n_env_steps"] if args.split == "train" else conf.get("n_env_steps_eval", 0))
        entry = dict(split=args.split, worker=args.worker, n_workers=n_workers)
        if budget > 0:
            entry["n_steps"] = _share(budget, args.worker, n_workers)
        else:
            entry["n_episodes"] = None
        _process_main(dict(conf), conf.replay_dir, entry, run_id)
        return 0
    procs = start_generators(conf, conf.replay_dir, run_id)
    log.info("started %d generator processes writing to %s", len(procs), conf.replay_dir)
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 130
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        print(f"{parser.prog}: error: {', '.join(failed)} failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
