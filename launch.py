"""Entry point: one command from a fresh machine to a trained audio world model.

    python launch.py --configs defaults audio [--key value ...] [--resume_id RUN_ID]

1. merges the config sections, starts (or, with --resume_id / MLFLOW_RUN_ID, reopens) the
   MLflow run and logs the merged config as params;
2. prepares the token corpus with the tokenizer stages when `data_dir` has none;
3. starts the generator processes (train and eval workers) and the learner process, all
   logging into the same run, with the replay store in the run's artifact folder;
4. watches them: the run ends when the learner has done `n_steps`. A child that dies is
   reported with its exit code, the others are stopped and the launcher exits non-zero
   (resume with --resume_id). Ctrl-C stops every child cleanly (the learner saves first).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_GRACE_S = 60.0  # how long a child may take to stop (the learner writes a checkpoint)


def child_overrides(rest: list[str], drop: tuple[str, ...] = ("resume_id", "replay_dir")) -> list[str]:
    """The user's `--key value` overrides, minus the ones the launcher decides for its children."""
    out, i = [], 0
    while i < len(rest):
        token = rest[i]
        key = token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else None
        width = 1 if (token.startswith("--") and "=" in token) else 2
        if key in drop:
            i += width
            continue
        out += rest[i:i + width]
        i += width
    return out


def needs_tokens(conf) -> bool:
    from envs import AUDIO_TOKENS_ID

    return conf.get("env_id") == AUDIO_TOKENS_ID


class Child:
    """One watched process, in its own session so Ctrl-C reaches only the launcher, which stops it in order."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]):
        self.name = name
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        if self.proc.poll() is not None:
            return self.proc.returncode
        # SIGTERM to the child itself (not its group): the learner's data-loader workers must
        # outlive it while it writes its last checkpoint.
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            print(f"launch: {self.name} did not stop in {grace:.0f} s; killing it", flush=True)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return self.proc.wait()


def start_children(conf, configs: list[str], overrides: list[str], replay_dir: Path, env: dict) -> list[Child]:
    from pydreamer.generator import worker_plan

    base = ["--configs", *configs, *overrides, "--replay_dir", str(replay_dir)]
    children = []
    for entry in worker_plan(conf):
        cmd = [sys.executable, "-m", "pydreamer.generator", *base, "--worker", str(entry["worker"]),
               "--n_workers", str(entry["n_workers"]), "--split", entry["split"]]
        children.append(Child(f"generator {entry['split']} w{entry['worker']}", cmd, env))
    children.append(Child("learner", [sys.executable, "-m", "pydreamer.train", *base], env))
    return children


def watch(children: list[Child], poll_s: float = 1.0) -> tuple[str, int]:
    """Wait until the learner is done or a child fails. Returns (outcome, exit code)."""
    learner = children[-1]
    while True:
        rc = learner.poll()
        if rc is not None:
            if rc == 0:
                return "done", 0
            print(f"launch: the learner exited with code {rc}", file=sys.stderr, flush=True)
            return "failed", 1
        for child in children[:-1]:
            rc = child.poll()
            if rc not in (None, 0):  # a generator that finished its budget (0) is fine
                print(f"launch: {child.name} (pid {child.proc.pid}) exited with code {rc}", file=sys.stderr, flush=True)
                return "failed", 1
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    from runtime.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["defaults"], help="config sections to merge, in order")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        conf = load_config(args.configs, rest)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")

    import mlflow
    from mlflow.exceptions import MlflowException

    from runtime.tracking import log_params, setup_mlflow, tracking_uri

    setup_mlflow(conf)
    resume_id = conf.get("resume_id") or os.environ.get("MLFLOW_RUN_ID") or ""
    previous_replay = None
    if resume_id:
        try:
            previous_replay = mlflow.get_run(resume_id).data.tags.get("replay_dir")
        except MlflowException:
            parser.exit(2, f"{parser.prog}: error: no MLflow run '{resume_id}' in {tracking_uri(conf)}\n")
    os.environ.pop("MLFLOW_RUN_ID", None)  # start_run(run_id=...) below says which run, explicitly
    run = mlflow.start_run(run_id=resume_id or None, run_name=None if resume_id else (conf.get("run_name") or None))
    run_id = run.info.run_id
    log_params(conf)
    from pydreamer.train import local_artifact_dir

    replay_dir = Path(conf.get("replay_dir") or previous_replay or local_artifact_dir(run) or "replay").resolve()
    replay_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tag("replay_dir", str(replay_dir))
    print(f"launch: {'resuming' if resume_id else 'started'} run {run_id} (experiment '{conf.experiment}'), "
          f"replay store {replay_dir}", flush=True)

    status, code, children = "FAILED", 1, []
    try:
        if needs_tokens(conf):
            from tokenizer.stages import ensure_tokens

            folder = ensure_tokens(conf)
            print(f"launch: tokens ready in {folder}", flush=True)
        env = dict(os.environ, MLFLOW_RUN_ID=run_id, MLFLOW_TRACKING_URI=tracking_uri(conf),
                   MLFLOW_EXPERIMENT_ID=run.info.experiment_id)
        children = start_children(conf, list(args.configs), child_overrides(rest), replay_dir, env)
        print("launch: started " + ", ".join(f"{c.name} (pid {c.proc.pid})" for c in children), flush=True)
        outcome, code = watch(children)
        status = "FINISHED" if outcome == "done" else "FAILED"
    except KeyboardInterrupt:
        print("launch: interrupted; stopping the learner (it saves a checkpoint) and the generators", flush=True)
        status, code = "KILLED", 130
    except Exception as e:
        print(f"launch: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        status, code = "FAILED", 1
    finally:
        for child in reversed(children):  # the learner first: it checkpoints while generators still write
            child.stop()
        mlflow.end_run(status=status)
    how = f"python launch.py --configs {' '.join(args.configs)} --resume_id {run_id}"
    print(f"launch: run {run_id} {status.lower()}; checkpoint {replay_dir / 'checkpoints' / 'latest.pt'}"
          + ("" if status == "FINISHED" else f"; continue with: {how}"), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
