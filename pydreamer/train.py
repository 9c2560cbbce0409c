"""The learner: streams batches from the replay store, trains the world model and the
actor-critic, evaluates on `episodes_eval`, logs to MLflow, and checkpoints into the run.

    python -m pydreamer.train --configs defaults audio --replay_dir DIR [--key value ...]
    torchrun --standalone --nproc_per_node N -m pydreamer.train --configs ... --replay_dir DIR

launch.py starts it with MLFLOW_RUN_ID set, so it logs into the launcher's run. When
`<replay_dir>/checkpoints/latest.pt` exists the learner continues from it (model, optimizers, step), which is how
`--resume_id` resumes. When the run's artifacts are not the replay store (a tracking server that proxies them) the
learner also uploads each checkpoint as the artifact `checkpoints/latest.pt` (and `best.pt`), and a replay store
without a checkpoint first gets the run's (a resume on another machine). Exit codes: 0 done, 3 NaN/inf loss (the last
good checkpoint is kept), 4 a checkpoint cannot be written (disk full: the previous one is intact), 130 interrupted (a
checkpoint is saved first).

Under torchrun with N processes it trains with DistributedDataParallel (runtime.distributed):
each rank reads its share of the replay store, the effective batch is batch_size x N, and rank 0
alone logs to MLflow, evaluates and writes checkpoints (the unwrapped model's, so a run continues
on any number of ranks). Every rank stops at the same step, with the same exit code.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydreamer.replay_layout import ReplayLayout
from pydreamer.runs import learner_lease
from runtime.files import remove_stale_temporaries
from runtime.lease import Lease, LeaseHeld
from runtime.s3 import RemotePath
from runtime.storage import store_path

if TYPE_CHECKING:  # torch and the learner are imported where a learner starts, so --help prints at once
    import torch
    from pydreamer.learner.loop import Learner
    from runtime.distributed import Ranks

log = logging.getLogger("pydreamer.train")
_HELD: list = []  # this learner's lease (runtime/lease.py), held until the process ends
EXIT_NONFINITE, EXIT_CANNOT_SAVE, EXIT_INTERRUPTED = 3, 4, 130  # pydreamer/learner/loop.py's (tests/test_config.py)


def objective_tag(conf: Mapping[str, Any]) -> str:
    """The run's `objective` tag (what trained the latent), so `mlflow ui` can group and filter runs by it.
    A world model without a latent (the Transformer) trains on its next-step cross-entropy: reconstruction."""
    from pydreamer.models import WORLD_MODELS

    return conf["wm_objective"] if WORLD_MODELS[conf["world_model"]].has_latent else "reconstruction"


def main(argv: list[str] | None = None) -> int:
    from runtime.config import parse_args
    from runtime.config_reference import add_config_help
    from runtime.processes import rank_threads, set_torch_threads

    parser = add_config_help(argparse.ArgumentParser(prog="python -m pydreamer.train", description=__doc__))
    conf, _ = parse_args(argv, parser, writes=("replay_dir", "mlflow_dir"))
    from runtime import distributed
    from runtime.device import resolve_device
    from runtime.distributed import Ranks
    ranks = Ranks.from_env()
    prefix = f"[rank {ranks.rank}] " if ranks.distributed else ""
    logging.basicConfig(level=logging.INFO if ranks.is_main else logging.WARNING,
                        format=f"%(asctime)s {prefix}%(name)s %(message)s", datefmt="%H:%M:%S")
    set_torch_threads(rank_threads(ranks.local_world_size) if ranks.distributed else None)
    device = resolve_device(conf["device"])
    if not ranks.distributed:
        if conf["learners"] > 1:
            log.warning("learners: %d is for launch.py; this learner is one process (start it with torchrun "
                        "--nproc_per_node %d -m pydreamer.train ... for several)", conf["learners"], conf["learners"])
        try:
            return _end_run(_main(parser, conf, ranks, device))
        finally:
            _release()
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
        _release()
        distributed.shutdown()


def _setup(conf: Mapping[str, Any]) -> dict:
    """Rank 0's start: the model's dimensions, the MLflow run (started or reopened) and the replay store;
    {"error": ...} when one of them cannot be had."""
    from envs import MissingTokensError, env_dims
    from runtime.tracking import RunNotFound, local_artifact_dir, start_or_resume_run

    from tokenizer.bucket import local_data_dir
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import condition_vocabulary

    try:
        dims = env_dims(conf)
        # the labels it is conditioned on and their train values: checked before a run is opened or resumed
        conditions = condition_vocabulary(DataLayout.of(local_data_dir(conf["data_dir"])), conf["condition"]) \
            if conf["condition"] else []
        run_id = os.environ.get("MLFLOW_RUN_ID") or conf["resume_id"] or None
        lease = learner_lease(conf, run_id)  # one live learner per run: a second is refused, the run untouched
        _HELD.extend([lease.acquire()] if lease else [])
        run = start_or_resume_run(conf, run_id)
    except LeaseHeld as e:
        return {"error": f"{e}: stop it first (or wait for it to finish); two learners of one run would both "
                         f"write its checkpoints and metrics"}
    except (MissingTokensError, RunNotFound, ValueError) as e:
        return {"error": str(e)}
    _record_tokenizer(conf, run)
    artifacts = local_artifact_dir(run)
    if not (conf["replay_dir"] or artifacts):
        return {"error": "set --replay_dir (the run's artifacts are not on this machine)"}
    replay_dir = store_path(conf["replay_dir"] or artifacts)
    if not _HELD and not isinstance(replay_dir, RemotePath):  # a new run's store: held, so a resume meanwhile is refused
        _HELD.append(Lease(ReplayLayout.of(replay_dir).learner_lease, f"run {run.info.run_id}'s learner").acquire())
    # a bucket is the checkpoints' home itself (the run's replay_dir tag names it): they are not copied into the run
    log_artifacts = not isinstance(replay_dir, RemotePath) and (
        artifacts is None or artifacts.resolve() != replay_dir.resolve())
    return {"dims": dict(dims), "replay_dir": str(replay_dir), "log_artifacts": log_artifacts, "conditions": conditions}


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
    from pydreamer.learner.loop import Learner, _Interrupted
    from pydreamer.models.checkpoint import CheckpointError
    from runtime import distributed
    # Rank 0 alone opens the MLflow run; the others learn the dimensions and the store from it.
    setup = _setup(conf) if ranks.is_main else None
    if ranks.distributed:
        setup = distributed.broadcast(setup, device)
    if "error" in setup:
        parser.exit(2, f"{parser.prog}: error: {setup['error']}\n")
    replay_dir, dims = store_path(setup["replay_dir"]), setup["dims"]
    learner = Learner(conf, replay_dir, dims, device, ranks, conditions=setup["conditions"])
    learner.log_artifacts = setup["log_artifacts"]
    if ranks.is_main:
        import mlflow

        remove_stale_temporaries(learner.ckpt_path.parent)  # a checkpoint half-written when the learner was killed
        fetched = learner.fetch_checkpoints(mlflow.active_run())
        if fetched:
            log.info("fetched %s from the run's artifacts into %s", " and ".join(f"checkpoints/{n}" for n in fetched),
                     learner.ckpt_path.parent)
    learner.agree(0)  # the other ranks read the checkpoint once rank 0 has fetched it
    try:
        resumed = learner.try_resume()
    except CheckpointError as e:  # one line and exit 2: a retry, or PyTorch's advice to unpickle it, cannot help
        _stop(f"{parser.prog}: error: {e}. Resume from an earlier save (copy {learner.best_path.name} over "
              f"{learner.ckpt_path.name} in {learner.ckpt_path.parent}) or move it aside to train from step 0; never "
              f"load it with weights_only=False.", 2, ranks)
        return 2
    learner.distribute()
    n_params = sum(p.numel() for p in learner.model.parameters())
    several = (f", {ranks.world_size} ranks: effective batch {ranks.world_size * conf['batch_size']} sequences "
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
    from pydreamer.learner.loop import PeerStopped, _Interrupted
    from pydreamer.learner.tracking import learner_tracking
    from pydreamer.models import NonFiniteLoss

    ranks = learner.ranks
    loader = make_replay_loader(conf, replay_dir, "train", rank=ranks.rank, world_size=ranks.world_size,
                                spec=learner.episode_spec)
    log_fn, eval_episodes, name_skipped = learner_tracking(conf, learner, replay_dir) if ranks.is_main else (None, None, None)
    try:
        try:
            learner.run(loader, conf["n_steps"], log_fn=log_fn, eval_episodes_fn=eval_episodes,
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
    if ranks.is_main and not log_fn.flush():  # type: ignore[union-attr]  # held through a tracking outage
        log.warning("the tracking store is still down: the metrics held since the outage were not logged")
    if ranks.is_main:
        log.info("done: %d steps; checkpoint %s", learner.step, learner.ckpt_path)
    return 0


def _release() -> None:
    """Give the run's learner lease back (the process ending would too; a test calls main() again)."""
    while _HELD:
        _HELD.pop().release()


def _end_run(code: int) -> int:
    """Close this process's MLflow run as its exit code says: a learner stopped by a signal is KILLED, one that
    stopped on an error FAILED (MLflow would call both FINISHED). Under launch.py the launcher closes it again,
    last, with the status of the whole run."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run(status={0: "FINISHED", EXIT_INTERRUPTED: "KILLED"}.get(code, "FAILED"))
    return code


def _write_digest(learner: Learner) -> None:
    """Tests: with PYDREAMER_WEIGHTS_DIGEST=DIR every rank writes DIR/rank<r>.json, the step and a hash of
    its weights, so a test can check that the ranks hold the same weights."""
    folder = os.environ.get("PYDREAMER_WEIGHTS_DIGEST")
    if not folder:
        return
    import json
    from runtime.distributed import weights_digest

    h = weights_digest(learner.model.state_dict())
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank{learner.ranks.rank}.json").write_text(
        json.dumps({"rank": learner.ranks.rank, "world_size": learner.ranks.world_size, "step": learner.step,
                    "saved_step": learner.saved_step, "sha256": h}))


def _stop(msg: str, code: int, ranks: Ranks) -> int:
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
