"""Entry point: one command from a fresh machine to a trained audio world model.

    python launch.py --configs defaults audio [--auto_size] [--key value ...]
    python launch.py --resume_id RUN_ID --mlflow_dir DIR [--key value ...]   # goes on with the run's own config

1. merges the config sections, starts (or, with --resume_id / MLFLOW_RUN_ID, reopens) the
   MLflow run and logs the merged config as params;
2. prepares the token corpus with the tokenizer stages when `data_dir` has none (a `data_dir` in a
   bucket is worked on in this host's copy, and what the stages made is sent back: tokenizer/bucket.py);
3. starts the generator processes (train and eval workers) and the learner process, all
   logging into the same run, with the replay store in the run's artifact folder (or, when a
   tracking server proxies the artifacts, in `<mlflow_dir>/replay/<run id>`: the learner uploads
   its checkpoints);
4. watches them: the run ends when the learner has done `n_steps`. A child that dies is
   reported with its exit code, the others are stopped and the launcher exits non-zero
   (resume with --resume_id). Ctrl-C, and SIGTERM (what `docker stop`, systemd and Slurm send),
   stop every child cleanly (the learner saves first) and mark the run KILLED;
5. on success, with `evaluate_at_end`, scores the world model on the test split per horizon beside the
   baselines (`pydreamer.evaluate`, artifacts `evaluation/test/`); with `dream_at_end`, writes dreams,
   pictures and the acoustic table into the run (`pydreamer.dream`, artifacts `dreams/`). Both run in
   this process once the children have stopped. It ends by saying where they are and how to open the run.
`--auto_size` (what `make run` passes) adds the CPU demo section `small` when no GPU is present.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.processes import Child, cpu_cores

if TYPE_CHECKING:
    from mlflow.entities import Run

    from runtime.config import Config
    from tokenizer.layout import DataLayout


def needs_tokens(conf) -> bool:
    from envs import AUDIO_TOKENS_ID

    return conf["env_id"] == AUDIO_TOKENS_ID


def learner_threads(conf) -> int:
    """Each learner rank's share of the cores: what the generators and the data-loader processes (one
    core each, `data_workers` per rank) leave, split over the `learners` ranks, at least one. On a busy
    2-core machine more threads than cores stall each other."""
    ranks = conf["learners"]
    others = conf["generator_workers"] + conf["generator_workers_eval"] + ranks * conf["data_workers"]
    return max(1, (cpu_cores() - others) // ranks)


def start_children(conf, configs: list[str], overrides: list[str], replay_dir: Path, env: dict) -> list[Child]:
    """The generators (one thread each), then the learner; the learner is last in the list.

    `learners: N` above 1 starts the learner as N DistributedDataParallel ranks on this host:
    `python -m torch.distributed.run --standalone --nproc_per_node N -m pydreamer.train ...`. torchrun
    passes a SIGTERM on to every rank (rank 0 saves) and waits for them before it kills."""
    from pydreamer.generator import start_generators
    from runtime.processes import STOP_GRACE_S

    children = start_generators(configs, overrides, replay_dir, env=env, conf=conf)
    base = ["--configs", *configs, *overrides, "--replay_dir", str(replay_dir)]
    n = conf["learners"]
    if n > 1:
        args = ["--standalone", "--nproc_per_node", str(n), "-m", "pydreamer.train", *base]
        ranks_env = dict(env, TORCH_ELASTIC_SHUTDOWN_TIMEOUT=str(int(STOP_GRACE_S) - 10))  # before Child.stop kills
        children.append(Child("learner", "torch.distributed.run", args, threads=learner_threads(conf), env=ranks_env))
    else:
        children.append(Child("learner", "pydreamer.train", base, threads=learner_threads(conf), env=env,
                              more_threads_later=True))
    return children


def data_layout(conf, parser: argparse.ArgumentParser):
    """`data_dir`'s layout; of a bucket (`s3://...`), this host's copy of it, fetched first (tokenizer/bucket.py)."""
    from runtime.storage import is_remote
    from tokenizer.layout import DataLayout

    data_dir = str(conf["data_dir"])
    if not is_remote(data_dir):
        return DataLayout.of(data_dir)
    from tokenizer.bucket import fetch_for_launch

    try:
        return DataLayout.of(fetch_for_launch(data_dir), origin=data_dir)
    except FileNotFoundError as e:  # no such bucket: the value is wrong
        parser.exit(2, f"{parser.prog}: error: --data_dir {data_dir}: {e.strerror}\n")
    except OSError as e:  # refused, unreachable: say why, write nothing
        parser.exit(1, f"{parser.prog}: error: --data_dir {data_dir}: {e}\n")


def run_at_end(name: str, main, args: list[str]) -> int:
    """A finished run's follow-up command (`main(args)` of pydreamer.evaluate or .dream) in this process with
    every core: the children have stopped, and no second interpreter has to start. Returns its exit code
    (2: bad input, 1: it crashed); a failure must not hide that the training finished."""
    from runtime.processes import set_torch_threads

    set_torch_threads()  # every core, or OMP_NUM_THREADS where whoever started launch.py set it
    try:
        return main(args)
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:
        print(f"launch: {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


def at_end(conf, run_id: str, command: str, *options: str) -> int:
    """`python -m pydreamer.<command>` (evaluate, dream) of a finished run, sized by the run's own config keys."""
    import importlib

    module = importlib.import_module(f"pydreamer.{command}")
    return run_at_end(command, module.main, ["--run", run_id, "--mlflow_dir", str(conf["mlflow_dir"]), *options])


def watch(children: list[Child], poll_s: float = 1.0) -> tuple[str, int]:
    """Wait until the learner is done or a child fails. Returns (outcome, exit code). Once every generator has
    finished its budget (seconds, for a corpus), the learner is granted every core (OMP_NUM_THREADS caps it): its
    data-loader workers mostly wait, and 2 threads train `small` 1.45x faster than 1 (bench/learner.py)."""
    from runtime.processes import thread_budget

    learner, generators = children[-1], children[:-1]
    granted = not generators or thread_budget() <= learner.threads
    while True:
        rc = learner.poll()
        if rc is not None:
            if rc == 0:
                return "done", 0
            print(f"launch: the learner exited with code {rc}", file=sys.stderr, flush=True)
            return ("refused", 2) if rc == 2 else ("failed", 1)  # 2: it refused to start (its one line says why)
        for child in children[:-1]:
            rc = child.poll()
            if rc not in (None, 0):  # a generator that finished its budget (0) is fine
                print(f"launch: {child.name} (pid {child.pid}) exited with code {rc}", file=sys.stderr, flush=True)
                return "failed", 1
        if not granted and all(child.poll() == 0 for child in generators):
            granted = True
            if learner.grant_threads(thread_budget()):
                print(f"launch: the generators are done; the learner may use {thread_budget()} threads", flush=True)
        time.sleep(poll_s)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into what Ctrl-C raises so both take the same clean way out."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean stop short
    raise Terminated()


@dataclass
class Ending:
    """How the run ended: its MLflow status, the exit code, and where the follow-ups put what they made. Filled
    in as the run goes, so an interruption keeps what was done before it for the closing lines."""

    status: str = "FAILED"
    code: int = 1
    evaluation_out: Path | None = None
    dreams_out: Path | None = None


def read_config(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str], Config]:
    """The command line and the merged config (a resumed run's own: pydreamer/resume.py); a bad value, or a change
    a resumed run cannot take, exits 2 here, before anything is written. Returns (parser, args, the `--key=value`
    pairs for the children, config)."""
    from pydreamer.resume import read_launch_config

    return read_launch_config(sys.argv[1:] if argv is None else argv, "\n\n".join(__doc__.split("\n\n")[:2]))


def check_before_writing(conf: Config, configs: list[str], parser: argparse.ArgumentParser) -> DataLayout | None:
    """Refuse (exit 2, nothing written) a bucket as the replay store and tokens made with other settings.
    Returns the data layout when the env trains on tokens (of a bucket, this host's copy), else None."""
    from runtime.storage import is_remote

    if is_remote(str(conf["replay_dir"])):  # one machine's launcher: a shared store is for the per-host commands
        parser.exit(2, f"{parser.prog}: error: --replay_dir {conf['replay_dir']}: launch.py runs every process on this "
                       f"machine and keeps its replay store in a local folder; with a bucket, start "
                       f"python -m pydreamer.generator and python -m pydreamer.train on each host (README: Many machines)\n")
    layout = None
    if needs_tokens(conf):  # tokens made with other settings are refused before anything is written
        from tokenizer.records import StaleOutput, check_stages

        from tokenizer.stages import stages_busy

        layout = data_layout(conf, parser)
        busy = None if layout.has_tokens() else stages_busy(layout)  # two makers would both train a VQ-VAE
        if busy:
            parser.exit(2, f"{parser.prog}: error: {busy}: wait for it, then run again (its tokens are then used)\n")
        try:
            check_stages(conf, layout, ("prepare", "train", "encode"))
        except StaleOutput as e:
            parser.exit(2, f"{parser.prog}: error: {layout.show(e.output)} was made with other settings ({'; '.join(e.changed)}): "
                           f"use another --data_dir, or remake the tokens with python -m tokenizer all --force "
                           f"--configs {' '.join(configs)} --data_dir {conf['data_dir']} ...\n")
        from tokenizer.tokens import ConditionError, condition_vocabulary

        try:  # labels to condition on: checked here when the tokens exist, else by the learner once they do
            condition_vocabulary(layout, conf["condition"] if layout.token_meta.is_file() else [])
        except ConditionError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
    return layout


def open_run(conf: Config, parser: argparse.ArgumentParser) -> tuple[Run, Path]:
    """Start the MLflow run, or reopen the one to resume (exit 2 when there is none), and make its replay store:
    the folder it had, when that is on this machine, else a new one here. Returns (run, replay folder)."""
    import mlflow

    from pydreamer.resume import record_resumed
    from runtime.tracking import RunNotFound, default_replay_dir, start_or_resume_run

    # MLflow must not pick a run up from the environment (read_config took and checked it: pydreamer/resume.py)
    from_env = os.environ.pop("MLFLOW_RUN_ID", "")
    resume_id = conf["resume_id"] or from_env
    try:
        run = start_or_resume_run(conf, resume_id or None)
    except RunNotFound as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    run_id = run.info.run_id
    if resume_id:  # what this resume changed, for the next one to start from (pydreamer/resume.py)
        record_resumed(run, conf)
    previous_replay = run.data.tags.get("replay_dir") if resume_id else None
    here = default_replay_dir(run, conf)
    if previous_replay and not (conf["replay_dir"] or Path(previous_replay).is_dir() or Path(previous_replay) == here):
        # another machine's folder (artifacts proxied by a server): a new replay store here, and the
        # learner continues from the checkpoint it uploaded to the run's artifacts
        print(f"launch: run {run_id}'s replay store {previous_replay} is not on this machine: its episodes start "
              f"again in {here}; the learner continues from the run's artifact checkpoints/latest.pt", flush=True)
        previous_replay = None
    replay_dir = Path(conf["replay_dir"] or previous_replay or here).resolve()
    replay_dir.mkdir(parents=True, exist_ok=True)
    from pydreamer.train import objective_tag

    mlflow.set_tags({"replay_dir": str(replay_dir), "objective": objective_tag(conf)})
    print(f"launch: {'resuming' if resume_id else 'started'} run {run_id} (experiment '{conf.experiment}'), "
          f"replay store {replay_dir}", flush=True)
    return run, replay_dir


def prepare_tokens(conf: Config, layout: DataLayout, run: Run) -> bool:
    """Run the tokenizer stages the corpus still needs and log the run's tokenizer. Returns whether the run's
    dreams can be decoded (a tokenizer checkpoint was there to log)."""
    from pydreamer.runs import record_tokenizer
    from runtime.processes import set_torch_threads
    from tokenizer.stages import ensure_tokens

    set_torch_threads()  # every core, or OMP_NUM_THREADS where set (two launches at 2 threads each on 2 cores thrash)
    folder = ensure_tokens(conf, layout)
    if layout.origin:  # a bucket's data_dir: what the stages made here goes there (nothing when none ran)
        from tokenizer.bucket import send_back

        print(f"launch: {send_back(layout.root, layout.origin)}", flush=True)
    print(f"launch: tokens ready in {layout.show(folder)}", flush=True)
    if not layout.vqvae.is_file():
        print(f"launch: WARNING: no tokenizer checkpoint at {layout.vqvae}: this run's dreams cannot be decoded",
              flush=True)
        return False
    # the tokenizer the run trains on, as its artifact (see pydreamer.runs), so dreams need only the run id
    print(f"launch: {record_tokenizer(run, layout.vqvae, layout.token_meta)}", flush=True)
    return True


def run_children(conf: Config, configs: list[str], rest: list[str], run: Run, replay_dir: Path,
                 layout: DataLayout | None) -> Ending:
    """Make the tokens, start the generators and the learner, watch them, and after a success do the follow-ups.
    Whatever happens (an error, Ctrl-C, SIGTERM), every child is stopped, the learner first, and the MLflow run
    is closed with the status."""
    import mlflow

    from runtime.config import split_overrides
    from runtime.tracking import tracking_uri

    end, children = Ending(), []
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)  # a closed ssh session: the same clean stop
    can_dream = False
    try:
        if needs_tokens(conf):
            can_dream = prepare_tokens(conf, layout, run)
        env = dict(os.environ, MLFLOW_RUN_ID=run.info.run_id, MLFLOW_TRACKING_URI=tracking_uri(conf),
                   MLFLOW_EXPERIMENT_ID=run.info.experiment_id)
        overrides = split_overrides(rest, drop=("resume_id", "replay_dir"))
        children = start_children(conf, list(configs), overrides, replay_dir, env)
        print("launch: started " + ", ".join(f"{c.name} (pid {c.pid})" for c in children), flush=True)
        outcome, end.code = watch(children)
        end.status = "FINISHED" if outcome == "done" else "FAILED"
        follow_up(conf, run, replay_dir, children, outcome, can_dream, end)
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"launch: {how}; stopping the learner (it saves a checkpoint) and the generators", flush=True)
        end.status, end.code = "KILLED", 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    except Exception as e:
        print(f"launch: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        end.status, end.code = "FAILED", 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping the children is not to be cut short
        for child in reversed(children):  # the learner first: it checkpoints while generators still write
            child.stop()
        mlflow.end_run(status=end.status)
        signal.signal(signal.SIGTERM, previous_sigterm)
    return end


def follow_up(conf: Config, run: Run, replay_dir: Path, children: list[Child], outcome: str, can_dream: bool,
              end: Ending) -> None:
    """After a finished training, `evaluate_at_end` and `dream_at_end` (`at_end`), with every core (the generators stop
    first). A failed one sets exit code 1 but keeps the trained run; `end` notes where each put its output."""
    from runtime.tracking import local_artifact_dir

    run_id = run.info.run_id
    if outcome == "done" and (conf["evaluate_at_end"] or conf["dream_at_end"]):
        for child in reversed(children):  # the generators: evaluation and dreams get every core
            child.stop()
    if outcome == "done" and conf["evaluate_at_end"] and needs_tokens(conf):
        samples = conf["evaluate_samples"] or "the world model's fair number of"
        print(f"launch: evaluating on the test split (h = 1..{conf['evaluate_horizons']}, {samples} samples, "
              "beside the baselines)", flush=True)
        rc = at_end(conf, run_id, "evaluate", "--split", "test")
        if rc == 0:
            end.evaluation_out = replay_dir / "evaluation" / "test"
        else:
            print(f"launch: the evaluation failed (exit code {rc}); the trained run is kept: retry with "
                  f"python -m pydreamer.evaluate --run {run_id}", file=sys.stderr, flush=True)
            end.code = 1
    if outcome == "done" and conf["dream_at_end"] and can_dream:
        dreams_out = end.dreams_out = (local_artifact_dir(run) or replay_dir) / "dreams"
        print(f"launch: dreaming ({conf['dream_unconditional']} dreams from nothing, {conf['dream_test_prompts']} "
              f"test completions, {conf['dream_seconds']:g} s each) -> {dreams_out}", flush=True)
        rc = at_end(conf, run_id, "dream", "--as_run_dreams", "--out", str(dreams_out))
        if rc != 0:
            print(f"launch: the dreams failed (exit code {rc}); the trained run is kept: retry with "
                  f"python -m pydreamer.dream --run {run_id} --as_run_dreams", file=sys.stderr, flush=True)
            end.dreams_out, end.code = None, 1


def print_summary(conf: Config, configs: list[str], run_id: str, replay_dir: Path, end: Ending) -> None:
    """The closing lines: how the run ended, its checkpoint (and how to resume), where the metrics and the dreams
    are, and how to open the run in MLflow."""
    import json

    from pydreamer.replay_layout import checkpoint_path
    from pydreamer.resume import continue_command
    from runtime.tracking import find_run, tracking_uri, ui_hint

    ckpt = checkpoint_path(replay_dir)
    line = f"launch: run {run_id} {end.status.lower()}"
    if ckpt.exists():
        line += f"; checkpoint {ckpt}"
        if end.code == 2:
            line += "; the learner refused to continue it (the line above says why): fix that first"
        elif end.status != "FINISHED":
            line += f"; continue with: {continue_command(conf, run_id)}"
    elif end.status != "FINISHED":
        line += "; no checkpoint was saved, so there is nothing to resume: fix the error above and start again"
    print(line, flush=True)
    if end.evaluation_out is not None:
        files = ", ".join(sorted(p.name for p in Path(end.evaluation_out).glob("*.*"))) or "nothing"
        print(f"launch: metrics: {end.evaluation_out} ({files}; the run's artifacts evaluation/test/ and its test/* "
              f"metrics)", flush=True)
    if end.dreams_out is not None:  # only what was written, and why a measure is missing
        dreams = Path(end.dreams_out)
        written = [n for n in ("unconditional/", "warm/", "completions/", "conditioned/", "interpolation.wav",
                               "acoustics.md") if (dreams / n.rstrip("/")).exists()]
        summary = json.loads((dreams / "summary.json").read_text()) if (dreams / "summary.json").is_file() else {}
        missing = "".join(f"; no {what}: {why}" for what, why in summary.get("not_measured", {}).items())
        print(f"launch: dreams: wavs and PNGs in {dreams} ({', '.join(written) or 'nothing'}{missing}); also the "
              f"run's artifacts dreams/ and listen.html", flush=True)
        page = dreams / "index.html"
        if page.is_file():
            print(f"launch: listen: open {page.resolve().as_uri()} in a browser (real, round-trip and dreamed audio "
                  "side by side)", flush=True)
    if end.status == "FINISHED":  # the run's own page, in MLflow's machine-learning view (not its GenAI one)
        found = find_run(run_id)
        how = ui_hint(tracking_uri(conf), found.info.experiment_id, run_id) if found else \
            f"mlflow ui --backend-store-uri {tracking_uri(conf)}"
        print(f"launch: open the run in MLflow: {how}  (experiment '{conf.experiment}', run {run_id})", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Check everything, open the run, train, follow up, and say how it went; returns the exit code."""
    parser, args, rest, conf = read_config(argv)
    layout = check_before_writing(conf, args.configs, parser)
    run, replay_dir = open_run(conf, parser)
    end = run_children(conf, args.configs, rest, run, replay_dir, layout)
    print_summary(conf, args.configs, run.info.run_id, replay_dir, end)
    return end.code


if __name__ == "__main__":
    sys.exit(main())
