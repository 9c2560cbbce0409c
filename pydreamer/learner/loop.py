"""The learner's loop: owns the model, its optimizers, the step counter and the carried states; trains on
batches from the replay store, evaluates on `episodes_eval` every eval_interval (keeping the best val weights
as best.pt), and checkpoints every save_interval. With several ranks every rank runs it in step."""
from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from pydreamer.episodes import EpisodeSpec
from pydreamer.learner.eval_metrics import evaluate_episodes
from pydreamer.models import Dreamer
from pydreamer.models.checkpoint import args_differ, build_model, load_checkpoint, restore, save_checkpoint
from pydreamer.models.conditioning import Vocabulary
from pydreamer.replay_layout import CHECKPOINTS, checkpoint_path
from runtime import distributed
from runtime.distributed import SINGLE, Ranks
from runtime.processes import ThreadGrants, set_torch_threads
from runtime.storage import store_path

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

    pace_since: tuple[float, int] | None = None  # (time, step) of the first logged window: the ETA's wall-clock pace

    def __init__(self, conf: Mapping[str, Any], replay_dir: Path | str, dims: Mapping[str, int],
                 device: torch.device | str = "cpu", ranks: Ranks = SINGLE, conditions: Vocabulary = ()):
        self.conf = conf
        self.replay_dir = store_path(replay_dir)  # a folder, or s3://bucket/prefix
        self.device = torch.device(device)
        self.ranks = ranks  # this process among the learner ranks (one, unless started by torchrun)
        self.amp = bool(conf["amp"]) and self.device.type == "cuda"
        torch.manual_seed(conf["seed"])  # the same initial weights on every rank
        self.model = Dreamer(conf, **dims, conditions=conditions).to(self.device)
        if ranks.rank:  # ... and each rank its own random draws (latents, imagination starts, dropout)
            torch.manual_seed(conf["seed"] * 100_003 + ranks.rank)
        self.optimizers = self.model.make_optimizers(conf)
        self.step = 0
        self.states: dict[int, Any] = {}  # one carried state per replay-reader worker
        self.ckpt_path = checkpoint_path(self.replay_dir)
        self.best_path = checkpoint_path(self.replay_dir, "best")
        self.best_nll = math.inf  # the lowest val eval/nll_h1 so far, whose weights are in best_path
        self.saved_step: int | None = None
        self.resumed_at: int | None = None  # the checkpoint's step when this learner continued a run
        self.log_artifacts = False  # True when the run's artifacts live elsewhere (a server)
        self.waiting_for_data = False  # blocked on the replay store: a stop signal must not wait for the next batch
        self.skipped_episodes: list[str] = []  # "path: reason" of every unusable episode file the reader met
        self.threads = _GrantedThreads(ThreadGrants.from_env())  # the generators' cores, once they are done

    @property
    def episode_spec(self) -> EpisodeSpec:
        """What every episode it trains or is evaluated on must be: this model's dimensions, not the first file's."""
        dims = self.model.dims
        return EpisodeSpec(dims["n_tokens"], dims["tokens_per_step"], dims["action_dim"],
                           getattr(self.model.wm, "mel_dim", None))

    # checkpoints
    def try_resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        ckpt = load_checkpoint(self.ckpt_path, map_location=self.device)
        differ = args_differ(ckpt, self.model)
        if differ:  # the run goes on as the model it is, whatever this command's config says of its architecture
            log.warning("resuming as the checkpoint's model, not this config's: %s", differ)
            self.model = build_model(ckpt, self.conf).to(self.device)
            self.optimizers = self.model.make_optimizers(self.conf)
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

            mlflow.log_artifact(str(self.ckpt_path), CHECKPOINTS)

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

            mlflow.log_artifact(str(self.best_path), CHECKPOINTS)
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
        log_interval, eval_interval, save_interval = conf["log_interval"], conf["eval_interval"], conf["save_interval"]
        log_fn = log_fn or (lambda metrics, step: None)
        it: Iterator = iter(batches)
        window = _Window()
        first = True
        last_eval: dict[str, float] = {}
        while self.step < n_steps:
            batch, t0, t1 = self._next_batch(it, stop_flag)
            if first:  # waiting for the generators' first episodes is start-up, not data wait
                log_fn({"train/first_batch_wait_s": t1 - t0}, self.step)
                first, window.start = False, t1
            else:
                window.wait += t1 - t0
            if batch.get("skipped"):
                self.skipped_episodes += list(batch["skipped"])
                if skip_fn is not None:
                    skip_fn(list(batch["skipped"]), self.step)
            started = time.perf_counter()
            window.add(self.train_step(batch))
            self.threads.step_took(time.perf_counter() - started, self.step)
            if self.step % log_interval == 0 or self.step == n_steps:
                log_fn(self._train_metrics(window, n_steps), self.step)
                window = _Window()
            if eval_episodes_fn is not None and (self.step % eval_interval == 0 or self.step == n_steps):
                with window.paused():  # evaluation is not training time
                    last_eval = self._evaluate(eval_episodes_fn(), log_fn) or last_eval
            if self.step % save_interval == 0 or self.step == n_steps:
                with window.paused():
                    self.save_agreed()
        return last_eval

    def _next_batch(self, it: Iterator, stop_flag) -> tuple[Mapping[str, torch.Tensor], float, float]:
        """The next batch and when the wait for it began and ended; _Interrupted when any rank must stop."""
        several = self.ranks.distributed
        stopping = stop_flag is not None and stop_flag()
        batch, t0, t1 = {}, 0.0, 0.0
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
        return batch, t0, t1

    def _train_metrics(self, window: "_Window", n_steps: int) -> dict[str, float]:
        """train/* of the steps since the last log line (averaged over the ranks), and that line."""
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        out = {f"train/{k}": v / window.n for k, v in window.sums.items()}
        out["train/grad_steps_per_sec"] = window.n / elapsed
        out["train/data_wait_frac"] = window.wait / elapsed
        out["replay/skipped_episodes"] = len(self.skipped_episodes)
        if self.ranks.distributed:  # the mean over the effective batch; skipped files of every rank's share
            out = distributed.mean_over_ranks(out, self.device, sums=("replay/skipped_episodes",))
        kl = f"  kl {out['train/kl']:.2f}" if "train/kl" in out else ""  # only a model with a latent has one
        loss = ("loss_mel %.3f nats/dim" % out["train/loss_mel"] if "train/loss_mel" in out  # a log-mel model
                else "loss_tokens %.3f bits" % out.get("train/loss_tokens", math.nan))
        log.info("step %d/%d  %s%s  %.2f steps/s  data wait %.1f%%  %s", self.step, n_steps, loss, kl,
                 out["train/grad_steps_per_sec"], 100 * out["train/data_wait_frac"], self._eta(window, n_steps))
        return out

    def _eta(self, window: "_Window", n_steps: int) -> str:
        """`ETA 1h05m`: the steps left at the pace since the first log line, evaluations and saves included (they
        are part of the wait), so the time it says is the time the run takes."""
        if self.pace_since is None:
            self.pace_since = (window.start, self.step - window.n)
        start, first = self.pace_since
        done, left = self.step - first, n_steps - self.step
        if left <= 0 or done <= 0:
            return "ETA 0s" if left <= 0 else "ETA ?"
        s = int(round(left * (time.perf_counter() - start) / done))
        return f"ETA {s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"ETA {s // 60}m{s % 60:02d}s" if s >= 60 else f"ETA {s}s")

    def _evaluate(self, episodes: list[dict], log_fn) -> dict[str, float]:
        """eval/* on the eval episodes, logged; the weights kept as best.pt when their nll_h1 is the best yet."""
        if not episodes:
            log.info("eval at step %d: no eval episodes yet", self.step)
            return {}
        metrics = evaluate_episodes(self.model, episodes, self.conf, self.device, self.amp)
        log_fn({f"eval/{k}": v for k, v in metrics.items()}, self.step)
        best = self.keep_if_best(metrics["nll_h1"])
        kept = "  (best so far: kept as best.pt)" if best else ""
        if "acc_h1" not in metrics:  # a model of log-mel steps: a density per dimension, no tokens to hit
            log.info("eval at step %d: nll_h1 %.3f nats/dim, mse_h1 %.3f%s", self.step, metrics["nll_h1"],
                     metrics.get("mse_h1", math.nan), kept)
            return metrics
        log.info("eval at step %d: nll_h1 %.3f bits (per-position unigram %.3f), acc_h1 %.3f%s",
                 self.step, metrics["nll_h1"], metrics["unigram_pos_nll"], metrics["acc_h1"], kept)
        return metrics


class _GrantedThreads:
    """More threads when launch.py grants them, kept only if they make steps faster: on a machine that something
    else keeps busy, threads that wait for each other make every step slower (seen: 40x at `tiny`), so the median
    step time of the next TRIAL steps is compared with that of the TRIAL before (a step 3x slower ends it at once)."""

    TRIAL = 10

    def __init__(self, grants: ThreadGrants):
        self.grants = grants
        self.recent: list[float] = []  # the last TRIAL steps' seconds, at the current thread count
        self.pending: int | None = None  # granted, waiting for a reference to compare with
        self.trial: tuple[int, float] | None = None  # (the former thread count, its median step time)

    def step_took(self, seconds: float, step: int) -> None:
        self.recent = (self.recent + [seconds])[-self.TRIAL:]
        if self.trial is not None:
            former, before = self.trial
            if seconds > 3 * before or len(self.recent) == self.TRIAL:
                self._decide(former, before, step)
            return
        granted = self.grants.poll()
        self.pending = granted if granted is not None else self.pending
        now = torch.get_num_threads()
        if self.pending is None or self.pending == now or len(self.recent) <= self.TRIAL // 2:
            return  # the reference: a few steps at the former count (the median leaves the slow first one out)
        self.trial, self.recent = (now, statistics.median_high(self.recent)), []
        log.info("the generators are done: %d threads from step %d on", set_torch_threads(self.pending), step)
        self.pending = None

    def _decide(self, former: int, before: float, step: int) -> None:
        after = statistics.median_high(self.recent)
        self.trial, self.recent = None, []
        if after < before:
            log.info("%d threads: %.3f s per step (%d threads: %.3f s)", torch.get_num_threads(), after, former, before)
            return
        log.info("%d threads were slower (%.3f s per step against %.3f s: a busy machine?): back to %d from step %d",
                 torch.get_num_threads(), after, before, set_torch_threads(former), step)


class _Window:
    """The train metrics summed since the last log line, and the time spent waiting for data meanwhile."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n, self.wait, self.start = 0, 0.0, time.perf_counter()

    def add(self, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside is not training time: the window's start moves on by it."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - t
