"""The learner: streams batches from the replay store, trains the world model and the
actor-critic, evaluates on `episodes_eval`, logs to MLflow, and checkpoints into the run.

    python -m pydreamer.train --configs defaults audio --replay_dir DIR [--key value ...]

launch.py starts it with MLFLOW_RUN_ID set, so it logs into the launcher's run. When
`<replay_dir>/checkpoints/latest.pt` exists the learner continues from it (model,
optimizers, step), which is how `--resume_id` resumes. Exit codes: 0 done, 3 NaN/inf
loss (the last good checkpoint is kept), 130 interrupted (a checkpoint is saved first).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

from pydreamer.models import Dreamer, NonFiniteLoss, State
from pydreamer.models.checkpoint import checkpoint_path, load_checkpoint, restore, save_checkpoint
from pydreamer.models.functions import LN2, categorical_kl
from pydreamer.models.rssm import RSSM
from runtime.device import resolve_device

log = logging.getLogger("pydreamer.train")

EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130


class _Interrupted(Exception):
    pass


# ---- evaluation -------------------------------------------------------------------------

def load_eval_episodes(folder: Path | str, n: int) -> list[dict]:
    """The first `n` readable episodes of the eval store (sorted names, so the set stays fixed as it grows)."""
    from pydreamer.episodes import EpisodeError, list_episodes, load_episode

    out = []
    for path in list_episodes(folder):
        if len(out) >= n:
            break
        try:
            ep = load_episode(path)
        except EpisodeError as e:
            log.warning("eval: skipping %s", e)
            continue
        if len(ep["reward"]) >= 2:
            out.append(ep)
    return out


def discounted_returns(reward: np.ndarray, terminal: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo return of each row: sum_k gamma^(k-1) reward[t+k] up to the episode's end."""
    out = np.zeros(len(reward), np.float64)
    acc = 0.0
    for t in range(len(reward) - 1, -1, -1):
        out[t] = acc
        acc = float(reward[t]) + gamma * acc * (1.0 - float(terminal[t]))
    return out


def unigram_bits(tokens: np.ndarray, n_tokens: int) -> float:
    """Entropy (bits per token) of the tokens' own frequencies: what 'learned nothing' scores."""
    counts = np.bincount(tokens.reshape(-1).astype(np.int64), minlength=n_tokens).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def unigram_pos_bits(tokens: np.ndarray, n_tokens: int) -> float:
    """The same with one frequency table per token position g (a stricter 'learned nothing')."""
    tokens = tokens.reshape(len(tokens), -1)
    return float(np.mean([unigram_bits(tokens[:, g], n_tokens) for g in range(tokens.shape[1])]))


@torch.no_grad()
def evaluate(model: Dreamer, episodes: list[dict], conf: Mapping[str, Any], device: torch.device,
             amp: bool = False, batch_episodes: int = 16) -> dict[str, float]:
    """eval/* metrics on whole episodes (cut to eval_max_steps), each filtered from a zero state.

    loss_tokens: posterior reconstruction (bits per token). nll_h1: each step's tokens forecast
    one step ahead, as the step's negative ELBO (reconstruction + KL(posterior || prior), an
    upper bound on -log p(tokens_t | steps < t)) per token; nll_h1_sampled and acc_h1: the
    same forecast from `eval_samples` prior draws decoded and averaged (reset rows, which have
    no past, are left out of all three);
    value_error: mean |critic value - discounted Monte-Carlo return of the true rewards|.
    """
    if not episodes:
        return {}
    model.eval()
    max_steps = int(conf["eval_max_steps"])
    gamma = float(conf["gamma"])
    sums = {"rec_bits": 0.0, "h1_bits": 0.0, "h1_sampled_bits": 0.0, "h1_hits": 0.0, "kl": 0.0, "rew_sq": 0.0}
    counts = {"rec": 0, "h1": 0, "steps": 0}
    values, returns = [], []
    all_tokens = []
    for start in range(0, len(episodes), batch_episodes):
        group = episodes[start:start + batch_episodes]
        lengths = [min(len(e["reward"]), max_steps) for e in group]
        T, B = max(lengths), len(group)
        G = group[0]["tokens"].shape[1]
        A = group[0]["action"].shape[1]
        tokens = np.zeros((T, B, G), np.int64)
        action = np.zeros((T, B, A), np.float32)
        reward = np.zeros((T, B), np.float32)
        terminal = np.zeros((T, B), np.float32)
        mask = np.zeros((T, B), bool)
        mc = np.zeros((T, B), np.float64)
        for b, (e, n) in enumerate(zip(group, lengths)):
            tokens[:n, b] = e["tokens"][:n]
            action[:n, b] = e["action"][:n]
            reward[:n, b] = e["reward"][:n]
            terminal[:n, b] = e["terminal"][:n]
            mask[:n, b] = True
            mc[:n, b] = discounted_returns(e["reward"], e["terminal"], gamma)[:n]
            all_tokens.append(e["tokens"][:n])
        reset = np.zeros((T, B), bool)
        reset[0] = True
        batch = {k: torch.from_numpy(v).to(device) for k, v in
                 dict(tokens=tokens, action=action, reward=reward, terminal=terminal, reset=reset).items()}
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else _null()
        with ctx:
            out = model.wm(batch, model.initial_state(B, device))
            probs = model.wm.horizon1_probs(out.states, out.prior_logits, model.eval_samples)
            feats = RSSM.features(out.states)
            value = model.ac.critic(feats).float()
            reward_pred = model.wm.reward_head(feats).float()
        m = torch.from_numpy(mask).to(device)
        logp = torch.log_softmax(out.token_logits.float(), -1).gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1)
        sums["rec_bits"] += float((-logp / LN2).sum(-1)[m].sum())
        counts["rec"] += int(m.sum()) * G
        m1 = m.clone()
        m1[0] = False
        p = probs.float().gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1).clamp_min(1e-12)
        sums["h1_sampled_bits"] += float((-torch.log2(p)).sum(-1)[m1].sum())
        sums["h1_hits"] += float((probs.argmax(-1) == batch["tokens"]).float().sum(-1)[m1].sum())
        counts["h1"] += int(m1.sum()) * G
        kl = categorical_kl(out.post_logits, out.prior_logits)
        sums["kl"] += float(kl[m].sum())
        # The step's negative ELBO bounds -log p(tokens_t | steps < t) from above: the forecast's NLL.
        sums["h1_bits"] += float(((-logp).sum(-1) + kl)[m1].sum() / LN2)
        sums["rew_sq"] += float((reward_pred - batch["reward"]).pow(2)[m].sum())
        counts["steps"] += int(m.sum())
        values.append(value[m].cpu().numpy())
        returns.append(mc[mask])
    model.train()
    v, r = np.concatenate(values), np.concatenate(returns)
    n_tokens = model.dims["n_tokens"]
    metrics = {
        "loss_tokens": sums["rec_bits"] / max(1, counts["rec"]),
        "nll_h1": sums["h1_bits"] / max(1, counts["h1"]),
        "nll_h1_sampled": sums["h1_sampled_bits"] / max(1, counts["h1"]),
        "acc_h1": sums["h1_hits"] / max(1, counts["h1"]),
        "kl": sums["kl"] / max(1, counts["steps"]),
        "loss_reward": 0.5 * sums["rew_sq"] / max(1, counts["steps"]),
        "value_error": float(np.abs(v - r).mean()),
        "return_mc": float(r.mean()),
        "value_mean": float(v.mean()),
        "unigram_nll": unigram_bits(np.concatenate(all_tokens), n_tokens),
        "unigram_pos_nll": unigram_pos_bits(np.concatenate(all_tokens), n_tokens),
        "episodes": float(len(episodes)),
        "steps": float(counts["steps"]),
    }
    if v.std() > 0 and r.std() > 0:
        metrics["value_corr"] = float(np.corrcoef(v, r)[0, 1])
    metrics["nll_h1_vs_unigram"] = metrics["nll_h1"] / max(metrics["unigram_nll"], 1e-9)
    return metrics


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ---- the learner -------------------------------------------------------------------------

class Learner:
    """Owns the model, its optimizers, the step counter and the carried recurrent states."""

    def __init__(self, conf: Mapping[str, Any], replay_dir: Path | str, dims: Mapping[str, int],
                 device: torch.device | str = "cpu"):
        self.conf = conf
        self.replay_dir = Path(replay_dir)
        self.device = torch.device(device)
        self.amp = bool(conf["amp"]) and self.device.type == "cuda"
        torch.manual_seed(int(conf.get("seed", 0)))
        self.model = Dreamer(conf, **dims).to(self.device)
        self.optimizers = self.model.make_optimizers(conf)
        self.step = 0
        self.states: dict[int, State] = {}  # one carried state per replay-reader worker
        self.ckpt_path = checkpoint_path(self.replay_dir)
        self.saved_step: int | None = None
        self.log_artifacts = False  # True when the run's artifacts live elsewhere (a server)

    # checkpoints
    def try_resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        ckpt = load_checkpoint(self.ckpt_path, map_location=self.device)
        self.step = restore(ckpt, self.model, self.optimizers)
        self.saved_step = self.step
        log.info("resumed from %s at step %d", self.ckpt_path, self.step)
        return True

    def save(self) -> None:
        save_checkpoint(self.ckpt_path, self.model, self.optimizers, self.step)
        self.saved_step = self.step
        if self.log_artifacts:
            import mlflow

            mlflow.log_artifact(str(self.ckpt_path), "checkpoints")

    # training
    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=nb) for k, v in batch.items() if k != "worker"}

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        worker = int(batch["worker"]) if "worker" in batch else 0
        batch = self._to_device(batch)
        B = batch["tokens"].shape[1]
        state = self.states.get(worker)
        if state is None or state.deter.shape[0] != B:
            state = self.model.initial_state(B, self.device)
        self.states[worker], metrics = self.model.training_step(batch, state, self.optimizers, self.step + 1, self.amp)
        self.step += 1
        return metrics

    def run(self, batches: Iterable[Mapping[str, torch.Tensor]], n_steps: int,
            log_fn=None, eval_episodes_fn=None, stop_flag=None) -> dict[str, float]:
        """Train until `n_steps`; log train/* every log_interval, eval/* every eval_interval, save every save_interval."""
        conf = self.conf
        log_interval, eval_interval, save_interval = (int(conf["log_interval"]), int(conf["eval_interval"]),
                                                      int(conf["save_interval"]))
        log_fn = log_fn or (lambda metrics, step: None)
        it: Iterator = iter(batches)
        sums: dict[str, float] = {}
        n_in_window, wait, window_start = 0, 0.0, time.perf_counter()
        first = True
        last_eval: dict[str, float] = {}
        while self.step < n_steps:
            if stop_flag is not None and stop_flag():
                raise _Interrupted()
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            if first:  # waiting for the generators' first episodes is start-up, not data wait
                log_fn({"train/first_batch_wait_s": t1 - t0}, self.step)
                first, window_start = False, t1
            else:
                wait += t1 - t0
            metrics = self.train_step(batch)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n_in_window += 1
            if self.step % log_interval == 0 or self.step == n_steps:
                now = time.perf_counter()
                elapsed = max(now - window_start, 1e-9)
                out = {f"train/{k}": v / n_in_window for k, v in sums.items()}
                out["train/grad_steps_per_sec"] = n_in_window / elapsed
                out["train/data_wait_frac"] = wait / elapsed
                log_fn(out, self.step)
                log.info("step %d/%d  loss_tokens %.3f bits  kl %.2f  %.2f steps/s  data wait %.1f%%",
                         self.step, n_steps, out.get("train/loss_tokens", math.nan), out.get("train/kl", math.nan),
                         out["train/grad_steps_per_sec"], 100 * out["train/data_wait_frac"])
                sums, n_in_window, wait = {}, 0, 0.0
                window_start = time.perf_counter()
            if eval_episodes_fn is not None and (self.step % eval_interval == 0 or self.step == n_steps):
                t_eval = time.perf_counter()
                episodes = eval_episodes_fn()
                if episodes:
                    last_eval = evaluate(self.model, episodes, conf, self.device, self.amp)
                    log_fn({f"eval/{k}": v for k, v in last_eval.items()}, self.step)
                    log.info("eval at step %d: nll_h1 %.3f bits (unigram %.3f), acc_h1 %.3f, value_error %.3f",
                             self.step, last_eval["nll_h1"], last_eval["unigram_nll"], last_eval["acc_h1"],
                             last_eval["value_error"])
                else:
                    log.info("eval at step %d: no eval episodes yet", self.step)
                window_start += time.perf_counter() - t_eval  # evaluation is not training time
            if self.step % save_interval == 0 or self.step == n_steps:
                t_save = time.perf_counter()
                self.save()
                window_start += time.perf_counter() - t_save
        return last_eval


# ---- command line -------------------------------------------------------------------------

def env_dims(conf: Mapping[str, Any]) -> dict[str, int]:
    """Codebook size, tokens per step and action count, from the env the generators run."""
    from envs import make_env

    from pydreamer.policy import space_dims

    env = make_env(conf, split="train", worker=0, n_workers=1)
    try:
        return space_dims(env.observation_space, env.action_space)
    finally:
        env.close()


def _start_run(conf: Mapping[str, Any]):
    import mlflow

    from runtime.tracking import log_params, setup_mlflow

    setup_mlflow(conf)
    run_id = os.environ.get("MLFLOW_RUN_ID") or conf.get("resume_id") or None
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else (conf.get("run_name") or None))
    if not run_id:
        log_params(conf)
    return run


def local_artifact_dir(run) -> Path | None:
    from urllib.parse import unquote, urlparse

    uri = run.info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def main(argv: list[str] | None = None) -> int:
    from runtime.config import parse_args

    parser = argparse.ArgumentParser(prog="python -m pydreamer.train", description=__doc__.split("\n")[0])
    conf, _ = parse_args(argv, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    import mlflow

    run = _start_run(conf)
    artifacts = local_artifact_dir(run)
    replay_dir = Path(conf.get("replay_dir") or artifacts or "")
    if not str(conf.get("replay_dir") or artifacts or ""):
        parser.exit(2, f"{parser.prog}: error: set --replay_dir (the run's artifacts are not on this machine)\n")
    device = resolve_device(conf.get("device", "auto"))
    dims = env_dims(conf)
    learner = Learner(conf, replay_dir, dims, device)
    learner.log_artifacts = artifacts is None or artifacts.resolve() != replay_dir.resolve()
    resumed = learner.try_resume()
    n_params = sum(p.numel() for p in learner.model.parameters())
    log.info("learner on %s: %s, %.2fM parameters, replay store %s%s", device, dims, n_params / 1e6, replay_dir,
             f", resuming at step {learner.step}" if resumed else "")
    mlflow.set_tags({"learner/device": str(device), "replay_dir": str(replay_dir)})
    mlflow.log_metrics({"train/model_params": float(n_params)}, step=learner.step)

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _train(conf, learner, replay_dir, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train(conf: Mapping[str, Any], learner: Learner, replay_dir: Path, stop: dict) -> int:
    import mlflow

    from pydreamer.data import make_replay_loader

    loader = make_replay_loader(conf, replay_dir, "episodes")
    eval_folder = replay_dir / "episodes_eval"
    eval_cache: dict[str, list] = {"episodes": []}

    def eval_episodes() -> list[dict]:
        want = int(conf["eval_episodes"])
        if len(eval_cache["episodes"]) < want:  # the eval set grows until it is full, then stays fixed
            eval_cache["episodes"] = load_eval_episodes(eval_folder, want)
        return eval_cache["episodes"]

    def log_fn(metrics: dict[str, float], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        mlflow.log_metrics(metrics, step=step)

    try:
        learner.run(loader, int(conf["n_steps"]), log_fn=log_fn, eval_episodes_fn=eval_episodes,
                    stop_flag=lambda: stop["flag"])
    except NonFiniteLoss as e:
        kept = f"the last good checkpoint (step {learner.saved_step}) is kept at {learner.ckpt_path}" \
            if learner.saved_step is not None else "no checkpoint was saved before it"
        msg = f"learner stopped: {e}; {kept}. Lower adam_lr or grad_clip, or resume with --resume_id."
        log.error(msg)
        mlflow.set_tag("stop_reason", msg[:5000])
        print(msg, file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    except (_Interrupted, KeyboardInterrupt):
        learner.save()
        log.info("interrupted at step %d: checkpoint saved to %s", learner.step, learner.ckpt_path)
        return EXIT_INTERRUPTED
    log.info("done: %d steps; checkpoint %s", learner.step, learner.ckpt_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
