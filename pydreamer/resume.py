"""Resuming a run (`launch.py --resume_id RUN`): the run goes on with its own config, not today's command's.

The base is the run's config as recorded (its MLflow params, plus the keys earlier resumes changed, kept in the
tag `config.resumed`: MLflow params cannot change); the command line's `--key value` pairs are applied over it.
A change of a key the checkpoint's shapes or its token corpus depend on (`fixed_keys`) is refused, and so are
sections (`--configs`) other than the run's own: one line, exit 2, before the run is reopened, so its status,
params and replay store stay as they were. A FINISHED run is only taken up again with a larger `n_steps`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from runtime.config import Config

RESUMED_TAG = "config.resumed"  # JSON of the keys resumes changed from the run's params (and their values)

# What the checkpoint's weights are shaped by: every world model's `arch_keys` and the actor-critic's (the model_args
# a checkpoint carries; tests/test_resume.py keeps this list complete), what the model reads and is trained for.
MODEL_KEYS = ("world_model", "observation", "env_id", "wm_objective", "condition", "condition_dim", "condition_heads", "token_embed_dim",
              "hidden_dim", "embed_dim", "deter_dim", "stoch_dim", "stoch_discrete", "token_head", "forecast_head",
              "contrastive_dim", "contrastive_temperature", "context_steps", "transformer_dim", "transformer_heads",
              "transformer_layers", "transformer_dropout", "maskgit_block", "maskgit_layers", "maskgit_iterations",
              "unimix", "time_downsample", "n_mels")
_NOT_RECORDED = ("configs", "resume_id", "mlflow_dir")  # where the run is found, not what it is


def fixed_keys() -> tuple[str, ...]:
    """The keys a resume may not change: MODEL_KEYS, what the token corpus is made with (tokenizer/records.py),
    where it is, and where the run is filed."""
    from tokenizer.records import STAGE_KEYS

    return tuple(dict.fromkeys(MODEL_KEYS + ("data_dir", "experiment") + sum(STAGE_KEYS.values(), ())))


class ResumeRefused(ValueError):
    """A resume that would change what the run is (or finds no run): one line, exit 2, the run untouched."""


@dataclass
class Resume:
    """What a resume goes on with: the run's sections and the `--key=value` pairs that make its config from them
    (the children's command line), the config itself, and, when the run has done its n_steps, the line saying so."""

    run_id: str
    configs: list[str]
    overrides: list[str]
    conf: Config
    finished: str = ""


def continue_command(conf: Mapping[str, Any], run_id: str) -> str:
    """The command that continues run `run_id`: complete, since a resumed run takes its config from the run. The
    store is `--mlflow_dir`'s, else MLFLOW_TRACKING_URI's (named unless it holds a password)."""
    from urllib.parse import urlparse

    local = f"sqlite:///{Path(conf['mlflow_dir']).resolve() / 'mlflow.db'}"  # runtime/tracking.py tracking_uri
    uri = os.environ.get("MLFLOW_TRACKING_URI") or local  # MLflow exports it once a run is open: compared, not trusted
    if uri == local:
        return f"python launch.py --resume_id {run_id} --mlflow_dir {shlex.quote(str(Path(conf['mlflow_dir']).resolve()))}"
    if urlparse(uri).password:
        return f"python launch.py --resume_id {run_id}  (with MLFLOW_TRACKING_URI set as now)"
    return f"MLFLOW_TRACKING_URI={shlex.quote(uri)} python launch.py --resume_id {run_id}"


def run_own_config(run) -> Config:
    """The run's config as it last trained: its params, then what resumes changed (the `config.resumed` tag)."""
    from pydreamer.runs import run_config
    from runtime.config import Config

    conf = Config(run_config(run))
    conf.update(json.loads(run.data.tags.get(RESUMED_TAG) or "{}"))
    return conf


def record_resumed(run, conf: Mapping[str, Any]) -> None:
    """Tag the active run with every key whose value differs from its params, so the next resume starts from the
    config this one trained with (a larger n_steps, a moved replay store) and not from the first one."""
    import mlflow

    from pydreamer.runs import run_config

    params = run_config(run)
    changed = {k: v for k, v in conf.items() if k not in _NOT_RECORDED and params.get(k) != v}
    if changed or run.data.tags.get(RESUMED_TAG):
        mlflow.set_tag(RESUMED_TAG, json.dumps(changed))


def plan_resume(resume_id: str, configs: Sequence[str] | None, rest: Sequence[str]) -> Resume:
    """The run `resume_id` with the command line's `--key value` pairs `rest` over its own config; `configs` (the
    sections given, None when none were) must be its own. ResumeRefused or ConfigError says why not; nothing is
    written here."""
    from runtime.config import Config, apply_overrides, load_config, load_sections, merge_sections, validate

    given = apply_overrides(merge_sections(load_sections(), ["defaults"]), list(rest))  # unknown keys, bad values
    run = _find_run(resume_id, given["mlflow_dir"])
    own = run_own_config(run)
    conf = apply_overrides(Config(own), list(rest))
    conf.update(resume_id=resume_id, mlflow_dir=given["mlflow_dir"])
    validate(conf)
    fixed = fixed_keys()
    for key in _given_keys(rest):
        if key in fixed and not _same(key, conf[key], own[key]):
            raise ResumeRefused(f"--{key} {as_text(conf[key])}: run {resume_id} was trained with {key} {own[key]!r}, and its "
                                f"checkpoint or its token corpus depend on it: a resumed run keeps it (start a new run "
                                f"to change it; {continue_command(conf, resume_id)} goes on as it was)")
    if configs is not None and "configs" in run.data.params and list(configs) != list(own["configs"]):
        would = load_config(configs, rest)
        changes = [f"{k} {own[k]!r} -> {would[k]!r}" for k in fixed if not _same(k, would[k], own[k])]
        raise ResumeRefused(f"--configs {' '.join(configs)}: run {resume_id} was made with --configs "
                            f"{' '.join(own['configs'])}" + (f" (these would change {', '.join(changes)})" if changes else "")
                            + f"; a resumed run keeps its own config: leave --configs out ({continue_command(conf, resume_id)}"
                            " and any --key value to change)")
    _check_no_learner(conf, resume_id)
    finished = ""
    if run.info.status == "FINISHED" and conf["n_steps"] <= own["n_steps"]:
        finished = (f"run {resume_id} is finished: it trained its n_steps={own['n_steps']}, so there is nothing to do; "
                    f"to train it further: {continue_command(conf, resume_id)} --n_steps {2 * own['n_steps']}")
    return Resume(resume_id, *_children_command(conf), conf, finished)


def _find_run(run_id: str, mlflow_dir: str):
    """The run, read without writing: a local store that does not exist yet is not made (that would be a new one)."""
    from mlflow.exceptions import MlflowException

    from runtime.tracking import tracking_uri

    if not os.environ.get("MLFLOW_TRACKING_URI") and not (Path(mlflow_dir) / "mlflow.db").is_file():
        raise ResumeRefused(f"--resume_id {run_id}: --mlflow_dir {mlflow_dir} holds no tracking store (mlflow.db): "
                            "give the --mlflow_dir the run was started with")
    import logging

    import mlflow

    for name in ("alembic", "mlflow"):  # as runtime/tracking.py setup_mlflow: no store chatter on the console
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri({"mlflow_dir": mlflow_dir})
    try:
        return mlflow.MlflowClient(uri).get_run(run_id)
    except MlflowException:
        raise ResumeRefused(f"--resume_id {run_id}: no such run in {uri}") from None


def _check_no_learner(conf: Config, run_id: str) -> None:
    """Refuse a resume while the run's learner lives (an orphan of a killed launcher, another terminal)."""
    from pydreamer.runs import learner_lease
    from runtime.lease import describe

    lease = learner_lease(conf, run_id)
    holder = lease.holder() if lease else None
    if holder:
        raise ResumeRefused(f"{describe(lease.what, holder)}: stop it first; the run is untouched")


def _given_keys(rest: Sequence[str]) -> list[str]:
    """The config keys a (well-formed, already parsed) override list names."""
    keys, i = [], 0
    while i < len(rest):
        keys.append(rest[i][2:].split("=", 1)[0].replace("-", "_"))
        i += 1 if "=" in rest[i] else 2
    return keys


def _same(key: str, a: Any, b: Any) -> bool:
    """Equal values; for data_dir, the same folder however it is written."""
    if key == "data_dir" and "://" not in f"{a}{b}":
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    return a == b


def _children_command(conf: Config) -> tuple[list[str], list[str]]:
    """(sections, `--key=value` pairs) that make `conf` when the generators and the learner load them: the run's
    sections and what differs from them (`defaults` and all that differs, when a section is no longer there)."""
    from runtime.config import ConfigError, load_config

    configs = list(conf["configs"])
    try:
        base = load_config(configs)
    except ConfigError:
        configs, base = ["defaults"], load_config(["defaults"])
    return configs, [f"--{k}={as_text(v)}" for k, v in conf.items() if k != "configs" and base.get(k) != v]


def as_text(value: Any) -> str:
    """A config value as the command line writes it (runtime/config.py `coerce` reads it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def pin_data_dir(conf: Config, rest: list[str]) -> list[str]:
    """A new run's relative `data_dir` made absolute (in `conf` and, for the children, in the overrides returned),
    so the run's params name the very folder and a resume from another folder trains on the same tokens."""
    data_dir = str(conf["data_dir"])
    if "://" in data_dir or Path(data_dir).is_absolute():
        return rest
    conf["data_dir"] = str(Path(data_dir).resolve())
    return [*rest, f"--data_dir={conf['data_dir']}"]


class Finished(Exception):
    """The run to resume has done its n_steps already: nothing to do (the message says so, and how to go on)."""


def launch_config(configs: list[str] | None, rest: list[str], auto_size: bool = False) -> tuple[list[str], list[str], Config]:
    """launch.py's (sections, `--key=value` pairs for its children, config): a new run's from the command line
    (`configs` None: `defaults`; `auto_size`: the CPU demo size without a GPU), a resumed run's from the run
    (`plan_resume`). Raises ConfigError or ResumeRefused (exit 2), Finished (exit 0); writes nothing."""
    from runtime.config import load_config

    resume_id = resume_id_of(rest)
    if auto_size and (configs or not resume_id):  # a resumed run keeps its own sections: only given ones are sized
        from runtime.device import size_for_this_machine

        configs, why = size_for_this_machine(list(configs or ["defaults"]))
        print(f"launch: {why}", flush=True)
    if not resume_id:
        configs = configs or ["defaults"]
        conf = load_config(configs, rest)
        return configs, pin_data_dir(conf, rest), conf
    plan = plan_resume(resume_id, configs, rest)
    if plan.finished:
        raise Finished(plan.finished)
    return plan.configs, plan.overrides, plan.conf


def resume_id_of(rest: Sequence[str]) -> str:
    """The run a command line resumes: its --resume_id, else MLFLOW_RUN_ID, else ''."""
    from runtime.config import apply_overrides, load_sections, merge_sections

    return apply_overrides(merge_sections(load_sections(), ["defaults"]), list(rest))["resume_id"] or \
        os.environ.get("MLFLOW_RUN_ID", "")


def read_launch_config(argv: list[str], description: str) -> tuple[argparse.ArgumentParser, argparse.Namespace,
                                                                   list[str], Config]:
    """launch.py's command line: (parser, args, the `--key=value` pairs for its children, config). Bad input, or a
    change a resumed run cannot take, exits 2 with one line, a finished run's resume exits 0: before anything is
    written."""
    from runtime.config import ConfigError, check_writable
    from runtime.config_reference import add_config_help

    parser = argparse.ArgumentParser(prog="launch.py", description=description)
    parser.add_argument("--configs", nargs="+", metavar="SECTION", help="config sections to merge, in order "
                        "(default: defaults; with --resume_id the run's own, and only those are accepted)")
    parser.add_argument("--auto_size", action="store_true",
                        help="add the CPU demo section `small` when no GPU is present (what `make run` does)")
    args, rest = add_config_help(parser).parse_known_args(argv)
    try:  # every value checked before anything is written
        args.configs, rest, conf = launch_config(args.configs, rest, args.auto_size)
        check_writable(conf)  # data_dir, replay_dir, mlflow_dir: tried before any run is opened
    except (ConfigError, ResumeRefused) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except Finished as e:  # nothing to do: said on stdout, as a success
        print(f"launch: {e}", flush=True)
        parser.exit(0)
    return parser, args, rest, conf
