"""The learner: streams batches from the replay store, trains the world model and the
actor-critic, evaluates on `episodes_eval`, logs to MLflow, and checkpoints into the run.

    python -m pydreamer.train --configs defaults audio --replay_dir DIR [--key value ...]

    torchrun --standalone --nproc_per_node N -m pydreamer.train --configs ... --replay_dir DIR

launch.py starts it with MLFLOW_RUN_ID set, so it logs into the launcher's run. When
`<replay_dir>/checkpoints/latest.pt` exists the learner continues from it (model,
optimizers, step), which is how `--resume_id` resumes. When the run's artifacts are not the
replay store (a tracking server that proxies them) the learner also uploads each checkpoint
as the artifact `checkpoints/latest.pt` (and `best.pt`), and a replay store without a
checkpoint first gets the run's (a resume on another machine). Exit codes: 0 done, 3 NaN/inf
loss (the last good checkpoint is kept), 4 a checkpoint cannot be written (disk full: the previous
one is intact), 130 interrupted (a checkpoint is saved first).

Under torchrun with N processes it trains with DistributedDataParallel (runtime.distributed):
each rank reads its share of the replay store, the effective batch is batch_size x N, and rank 0
alone logs to MLflow, evaluates and writes checkpoints (the unwrapped model's, so a run continues
on any number of ranks). Every rank stops at the same step, with the same exit code.
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

import torch

from pydreamer.evaluate import evaluate_episodes, load_eval_episodes
from pydreamer.models import Dreamer, NonFiniteLoss, State
from pydreamer.models.checkpoint import checkpoint_path, load_checkpoint, restore, save_checkpoint
from runtime import distributed
from runtime.device import resolve_device
from runtime.distributed import SINGLE, Ranks, weights_digest
from runtime.files import remove_stale_temporaries
from runtime.storage import RemotePath, store_path

log = logging.getLogger("pydreamer.train")

EXIT_NONFINITE = 3
EXIT_CANNOT_SAVE = 4
EXIT_INTERRUPTED = 130


class _Interrupted(Exception):
    pass


class PeerStopped(RuntimeError):
    """Another learner rank could not go on (rank 0 could not write a checkpoint): stop with its exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# ---- the learner -------------------------------------------------------------------------

class Learner:
    """Owns the model, its optimizers, the step counter and the carried recurrent states."""

    def __init__(self, conf: Mapping[str, Any], replay_dir: Path | str, dims: Mapping[str, int],
                 device: torch.device | str = "cpu", ranks: Ranks = SINGLE):
        self.conf = conf
        self.replay_dir = store_path(replay_dir)  # a folder, or s3://bucket/prefix
        self.device = torch.device(device)
        self.ranks = ranks  # this process among the learner ranks (one, unless started by torchrun)
        self.amp = bool(conf["amp"]) and self.device.type == "cuda"
        torch.manual_seed(int(conf["seed"]))  # the same initial weights on every rank
        self.model = Dreamer(conf, **dims).to(self.device)
        if ranks.rank:  # ... and each rank its own random draws (latents, imagination starts, dropout)
            torch.manual_seed(int(conf["seed"]) * 100_003 + ranks.rank)
        self.optimizers = self.model.make_optimizers(conf)
        self.step = 0
        self.states: dict[int, State] = {}  # one carried state per replay-reader worker
        self.ckpt_path = checkpoint_path(self.replay_dir)
        self.best_path = checkpoint_path(self.replay_dir, "best")
        self.best_nll = math.inf  # the lowest val eval/nll_h1 so far, whose weights are in best_path
        self.saved_step: int | None = None
        self.resumed_at: int | None = None  # the checkpoint's step when this learner continued a run
        self.log_artifacts = False  # True when the run's artifacts live elsewhere (a server)
        self.waiting_for_data = False  # blocked on the replay store: a stop signal must not wait for the next batch
        self.skipped_episodes: list[str] = []  # "path: reason" of every unusable episode file the reader met

    # checkpoints
    def try_resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        ckpt = load_checkpoint(self.ckpt_path, map_location=self.device)
        self.step = restore(ckpt, self.model, self.optimizers)
        self.saved_step = self.resumed_at = self.step
        if self.best_path.exists():
            self.best_nll = float(load_checkpoint(self.best_path)["extra"].get("val_nll_h1", math.inf))
        log.info("resumed from %s at step %d", self.ckpt_path, self.step)
        return True

    def distribute(self) -> None:
        """With several ranks: check that every rank continues from the same step, then wrap the model
        in DistributedDataParallel (which starts every rank from rank 0's weights). One rank: nothing."""
        if not self.ranks.distributed:
            return
        first = distributed.broadcast(self.step, self.device)
        if first != self.step:
            raise RuntimeError(f"learner rank {self.ranks.rank} resumed at step {self.step}, rank 0 at step {first}: "
                               f"the ranks read different checkpoints (is {self.ckpt_path} on a shared disk?)")
        kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
        self.model.distribute(self.agree, **kwargs)

    def agree(self, code: int) -> int:
        """The largest of the ranks' codes (one all-reduce every rank must reach); `code` alone on one rank."""
        return distributed.agree(code, self.device) if self.ranks.distributed else int(code)

    def fetch_checkpoints(self, run) -> list[str]:
        """A replay store without a checkpoint, of a run whose artifacts are not the replay store (a resume on another
        machine than the last, the artifacts proxied by a server): the run's artifact checkpoints, downloaded into it
        so that try_resume finds them. Returns the names fetched."""
        if not self.log_artifacts or self.ckpt_path.exists():
            return []
        from pydreamer.runs import fetch_checkpoints

        return fetch_checkpoints(run, self.replay_dir)

    def save(self) -> None:
        if not self.ranks.is_main:  # rank 0 writes the checkpoints: every rank holds the same weights
            return
        save_checkpoint(self.ckpt_path, self.model, self.optimizers, self.step)
        self.saved_step = self.step
        if self.log_artifacts:
            import mlflow

            mlflow.log_artifact(str(self.ckpt_path), "checkpoints")

    def save_agreed(self) -> None:
        """`save`, then (several ranks) tell every rank whether rank 0 could: all stop when it could not."""
        failed: OSError | None = None
        try:
            self.save()
        except OSError as e:
            if not self.ranks.distributed:
                raise
            failed = e
        if self.ranks.distributed and self.agree(int(failed is not None)):
            if failed is not None:
                raise failed
            raise PeerStopped(EXIT_CANNOT_SAVE, f"learner rank 0 could not write the checkpoint at step {self.step} "
                                                f"(its log says why)")

    def keep_if_best(self, val_nll: float) -> bool:
        """Model selection on val: keep these weights as best.pt when their one-step forecast is the best yet."""
        if not val_nll < self.best_nll:
            return False
        self.best_nll = val_nll
        save_checkpoint(self.best_path, self.model, None, self.step, extra={"val_nll_h1": val_nll})
        if self.log_artifacts:
            import mlflow

            mlflow.log_artifact(str(self.best_path), "checkpoints")
        return True

    # training
    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=nb) for k, v in batch.items() if k not in ("worker", "skipped")}

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        worker = int(batch["worker"]) if "worker" in batch else 0
        batch = self._to_device(batch)
        B = batch["tokens"].shape[1]
        state = self.states.get(worker)
        if state is None or self.model.state_batch_size(state) != B:
            state = self.model.initial_state(B, self.device)
        self.states[worker], metrics = self.model.training_step(batch, state, self.optimizers, self.step + 1, self.amp)
        self.step += 1
        return metrics

    def run(self, batches: Iterable[Mapping[str, torch.Tensor]], n_steps: int,
            log_fn=None, eval_episodes_fn=None, stop_flag=None, skip_fn=None) -> dict[str, float]:
        """Train until `n_steps`; log train/* every log_interval, eval/* every eval_interval, save every save_interval.

        Episode files the reader skipped are counted (`replay/skipped_episodes`, with the train metrics)
        and handed to `skip_fn(lines, step)`, which names them in MLflow.

        With several ranks every rank runs this loop in step: each step they agree whether to stop (a
        signal on any rank stops all), train/* metrics are averaged over the ranks, and rank 0 alone
        evaluates (give the others no eval_episodes_fn) and saves."""
        conf = self.conf
        log_interval, eval_interval, save_interval = (int(conf["log_interval"]), int(conf["eval_interval"]),
                                                      int(conf["save_interval"]))
        log_fn = log_fn or (lambda metrics, step: None)
        it: Iterator = iter(batches)
        sums: dict[str, float] = {}
        n_in_window, wait, window_start = 0, 0.0, time.perf_counter()
        first = True
        last_eval: dict[str, float] = {}
        several = self.ranks.distributed
        while self.step < n_steps:
            stopping = stop_flag is not None and stop_flag()
            if not stopping:
                t0 = time.perf_counter()
                self.waiting_for_data = True
                try:
                    batch = next(it)
                except _Interrupted:
                    if not several:
                        raise
                    stopping = True  # a signal while waiting for data: the other ranks must hear of it
                finally:
                    self.waiting_for_data = False
                t1 = time.perf_counter()
            if several:  # every rank stops at the same step, or none does
                stopping = bool(self.agree(int(stopping)))
            if stopping:
                raise _Interrupted()
            if first:  # waiting for the generators' first episodes is start-up, not data wait
                log_fn({"train/first_batch_wait_s": t1 - t0}, self.step)
                first, window_start = False, t1
            else:
                wait += t1 - t0
            if batch.get("skipped"):
                self.skipped_episodes += list(batch["skipped"])
                if skip_fn is not None:
                    skip_fn(list(batch["skipped"]), self.step)
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
                out["replay/skipped_episodes"] = len(self.skipped_episodes)
                if several:  # the mean over the effective batch; skipped files of every rank's share
                    out = distributed.mean_over_ranks(out, self.device, sums=("replay/skipped_episodes",))
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
                    last_eval = evaluate_episodes(self.model, episodes, conf, self.device, self.amp)
                    log_fn({f"eval/{k}": v for k, v in last_eval.items()}, self.step)
                    best = self.keep_if_best(last_eval["nll_h1"])
                    log.info("eval at step %d: nll_h1 %.3f bits (per-position unigram %.3f), acc_h1 %.3f%s",
                             self.step, last_eval["nll_h1"], last_eval["unigram_pos_nll"], last_eval["acc_h1"],
                             "  (best so far: kept as best.pt)" if best else "")
                else:
                    log.info("eval at step %d: no eval episodes yet", self.step)
                window_start += time.perf_counter() - t_eval  # evaluation is not training time
            if self.step % save_interval == 0 or self.step == n_steps:
                t_save = time.perf_counter()
                self.save_agreed()
                window_start += time.perf_counter() - t_save
        return last_eval


# ---- command line -------------------------------------------------------------------------

def objective_tag(conf: Mapping[str, Any]) -> str:
    """The run's `objective` tag (what trained the latent), so `mlflow ui` can group and filter runs by it.
    The Transformer has no latent: its objective is its next-step cross-entropy, i.e. reconstruction."""
    return "reconstruction" if conf["world_model"] == "transformer" else str(conf["wm_objective"])


def main(argv: list[str] | None = None) -> int:
    from runtime.config import parse_args
    from runtime.processes import rank_threads, set_torch_threads

    parser = argparse.ArgumentParser(prog="python -m pydreamer.train", description=__doc__.split("\n")[0])
    conf, _ = parse_args(argv, parser)
    ranks = Ranks.from_env()
    prefix = f"[rank {ranks.rank}] " if ranks.distributed else ""
    logging.basicConfig(level=logging.INFO if ranks.is_main else logging.WARNING,
                        format=f"%(asctime)s {prefix}%(name)s %(message)s", datefmt="%H:%M:%S")
    set_torch_threads(rank_threads(ranks.local_world_size) if ranks.distributed else None)
    device = resolve_device(conf["device"])
    if not ranks.distributed:
        if int(conf["learners"]) > 1:
            log.warning("learners: %d is for launch.py; this learner is one process (start it with torchrun "
                        "--nproc_per_node %d -m pydreamer.train ... for several)", conf["learners"], conf["learners"])
        return _main(parser, conf, ranks, device)
    device = distributed.rank_device(device, ranks)
    distributed.init(ranks, device)
    try:
        code = _main(parser, conf, ranks, device)
        # Every rank ended at the same agreed step with the same code. torchrun stops all ranks as soon as
        # one exits with an error: wait for the others here (rank 0 may still be saving), and let the
        # SIGTERM that may follow not cut short what is left (closing the group, MLflow ending the run).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        distributed.agree(0, device)
        return code
    finally:
        distributed.shutdown()


def _setup(conf: Mapping[str, Any]) -> dict:
    """Rank 0's start: the model's dimensions, the MLflow run (started or reopened) and the replay store;
    {"error": ...} when one of them cannot be had."""
    from envs import MissingTokensError, env_dims
    from runtime.tracking import RunNotFound, local_artifact_dir, start_or_resume_run

    try:
        dims = env_dims(conf)
        run = start_or_resume_run(conf, os.environ.get("MLFLOW_RUN_ID") or conf["resume_id"] or None)
    except (MissingTokensError, RunNotFound, ValueError) as e:
        return {"error": str(e)}
    _record_tokenizer(conf, run)
    artifacts = local_artifact_dir(run)
    if not (conf["replay_dir"] or artifacts):
        return {"error": "set --replay_dir (the run's artifacts are not on this machine)"}
    replay_dir = store_path(conf["replay_dir"] or artifacts)
    # a bucket is the checkpoints' home itself (the run's replay_dir tag names it): they are not copied into the run
    log_artifacts = not isinstance(replay_dir, RemotePath) and (
        artifacts is None or artifacts.resolve() != replay_dir.resolve())
    return {"dims": dict(dims), "replay_dir": str(replay_dir), "log_artifacts": log_artifacts}


def _record_tokenizer(conf: Mapping[str, Any], run) -> None:
    """The tokenizer of the tokens trained on, as the run's artifact (launch.py does it too; a learner started
    on its own, on another host, does it here), so the run's dreams decode with it wherever they are made."""
    from envs import AUDIO_TOKENS_ID
    from pydreamer.runs import record_tokenizer
    from tokenizer.bucket import local_data_dir
    from tokenizer.layout import DataLayout

    if conf["env_id"] != AUDIO_TOKENS_ID:
        return
    try:
        layout = DataLayout.of(local_data_dir(conf["data_dir"], parts=("tokens/meta.json", "tokenizer/vqvae.pt")))
        if layout.vqvae.is_file():
            log.info(record_tokenizer(run, layout.vqvae, layout.token_meta))
        else:
            log.warning("no tokenizer checkpoint at %s: this run's dreams need one there", layout.vqvae)
    except Exception as e:  # the training does not depend on it
        log.warning("the tokenizer could not be recorded with the run (%s: %s)", type(e).__name__, e)


def _main(parser: argparse.ArgumentParser, conf: Mapping[str, Any], ranks: Ranks, device: torch.device) -> int:
    # Rank 0 alone opens the MLflow run; the others learn the dimensions and the store from it.
    setup = _setup(conf) if ranks.is_main else None
    if ranks.distributed:
        setup = distributed.broadcast(setup, device)
    if "error" in setup:
        parser.exit(2, f"{parser.prog}: error: {setup['error']}\n")
    replay_dir, dims = store_path(setup["replay_dir"]), setup["dims"]
    learner = Learner(conf, replay_dir, dims, device, ranks)
    learner.log_artifacts = setup["log_artifacts"]
    if ranks.is_main:
        import mlflow

        remove_stale_temporaries(learner.ckpt_path.parent)  # a checkpoint half-written when the learner was killed
        fetched = learner.fetch_checkpoints(mlflow.active_run())
        if fetched:
            log.info("fetched %s from the run's artifacts into %s", " and ".join(f"checkpoints/{n}" for n in fetched),
                     learner.ckpt_path.parent)
    learner.agree(0)  # the other ranks read the checkpoint once rank 0 has fetched it
    resumed = learner.try_resume()
    learner.distribute()
    n_params = sum(p.numel() for p in learner.model.parameters())
    several = (f", {ranks.world_size} ranks: effective batch {ranks.world_size * int(conf['batch_size'])} sequences "
               f"({ranks.world_size} x batch_size {conf['batch_size']})" if ranks.distributed else "")
    log.info("learner on %s: %s, %.2fM parameters, replay store %s%s%s", device, dims, n_params / 1e6, replay_dir,
             several, f", resuming at step {learner.step}" if resumed else "")
    if ranks.is_main:
        import mlflow

        mlflow.set_tags({"learner/device": str(device), "learner/ranks": str(ranks.world_size),
                         "replay_dir": str(replay_dir), "objective": objective_tag(conf)})
        mlflow.log_metrics({"train/model_params": float(n_params)}, step=learner.step)

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True
        if learner.waiting_for_data:  # e.g. no episodes yet: stop now, not when a batch comes
            raise _Interrupted()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _train(conf, learner, replay_dir, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train(conf: Mapping[str, Any], learner: Learner, replay_dir: Path, stop: dict) -> int:
    from pydreamer.data import make_replay_loader

    ranks = learner.ranks
    n_tokens = learner.model.dims["n_tokens"]
    loader = make_replay_loader(conf, replay_dir, "episodes", n_tokens=n_tokens, rank=ranks.rank,
                                world_size=ranks.world_size)
    log_fn, eval_episodes, name_skipped = _tracking(conf, learner, replay_dir) if ranks.is_main else (None, None, None)
    try:
        try:
            learner.run(loader, int(conf["n_steps"]), log_fn=log_fn, eval_episodes_fn=eval_episodes,
                        stop_flag=lambda: stop["flag"], skip_fn=name_skipped)
        except (_Interrupted, KeyboardInterrupt):
            learner.save()
            if ranks.is_main:
                log.info("interrupted at step %d: checkpoint saved to %s", learner.step, learner.ckpt_path)
            return EXIT_INTERRUPTED
    except NonFiniteLoss as e:
        kept = f"the last good checkpoint (step {learner.saved_step}) is kept at {learner.ckpt_path}" \
            if learner.saved_step is not None else "no checkpoint was saved before it"
        if not ranks.is_main:
            kept = f"rank 0 keeps the last good checkpoint at {learner.ckpt_path}"
        msg = (f"learner stopped: {e}; {kept}. The episodes were checked when read (finite, token ids in range), "
               "so this is the optimisation: lower adam_lr or grad_clip, and resume with --resume_id.")
        return _stop(msg, EXIT_NONFINITE, ranks)
    except OSError as e:  # disk full while writing a checkpoint: the previous one was never touched
        kept = f"the previous checkpoint (step {learner.saved_step}) is intact at {learner.ckpt_path}" \
            if learner.saved_step is not None else "no checkpoint was saved before it"
        msg = (f"learner stopped at step {learner.step}: cannot write a checkpoint ({e.strerror or e}: "
               f"{e.filename or learner.ckpt_path.parent}); {kept}. Free space, then resume with --resume_id.")
        return _stop(msg, EXIT_CANNOT_SAVE, ranks)
    except PeerStopped as e:
        return _stop(f"learner stopped at step {learner.step}: {e}", e.code, ranks)
    _write_digest(learner)
    if ranks.is_main:
        log.info("done: %d steps; checkpoint %s", learner.step, learner.ckpt_path)
    return 0


def _tracking(conf: Mapping[str, Any], learner: Learner, replay_dir: Path):
    """Rank 0's MLflow side of the loop: (log_fn, eval_episodes_fn, skip_fn)."""
    import mlflow

    n_tokens = learner.model.dims["n_tokens"]
    eval_folder = replay_dir / "episodes_eval"
    eval_cache: dict[str, list] = {"episodes": []}
    run_id = mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    named: dict[str, None] = {}  # every unusable episode file met, in order, named once

    def name_skipped(lines: list[str], step: int) -> None:
        new = [line for line in lines if line not in named]
        if new:
            named.update(dict.fromkeys(new))
            mlflow.log_text("\n".join(named) + "\n", "replay/skipped_episodes.txt")

    def eval_episodes() -> list[dict]:
        want = int(conf["eval_episodes"])
        if len(eval_cache["episodes"]) < want:  # the eval set grows until it is full, then stays fixed
            skipped: list[str] = []
            eval_cache["episodes"] = load_eval_episodes(eval_folder, want, n_tokens=n_tokens, skipped=skipped)
            name_skipped(skipped, learner.step)
        return eval_cache["episodes"]

    # A resumed learner redoes the steps after its checkpoint; their metrics are in the run already.
    logged_upto: dict[str, int] = {}

    def already_logged(key: str, step: int) -> bool:
        if learner.resumed_at is None:
            return False
        if key not in logged_upto:
            logged_upto[key] = max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
        return step <= logged_upto[key]

    def log_fn(metrics: dict[str, float], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v)) and not already_logged(k, step)}
        if metrics:
            mlflow.log_metrics(metrics, step=step)

    return log_fn, eval_episodes, name_skipped


def _write_digest(learner: Learner) -> None:
    """Tests: with PYDREAMER_WEIGHTS_DIGEST=DIR every rank writes DIR/rank<r>.json, the step and a hash of
    its weights, so a test can check that the ranks hold the same weights."""
    folder = os.environ.get("PYDREAMER_WEIGHTS_DIGEST")
    if not folder:
        return
    import json

    h = weights_digest(learner.model.state_dict())
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank{learner.ranks.rank}.json").write_text(
        json.dumps({"rank": learner.ranks.rank, "world_size": learner.ranks.world_size, "step": learner.step,
                    "saved_step": learner.saved_step, "sha256": h}))


def _stop(msg: str, code: int, ranks: Ranks = SINGLE) -> int:
    """Say why the learner stopped: the log, the run's `stop_reason` tag (rank 0), stderr (the launcher's console)."""
    log.error(msg)
    if ranks.is_main:
        import mlflow

        try:
            mlflow.set_tag("stop_reason", msg[:5000])
        except Exception:  # the tracking store may be on the full disk too
            pass
    prefix = f"[rank {ranks.rank}] " if ranks.distributed else ""
    print(prefix + msg, file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
