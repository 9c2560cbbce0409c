"""MLflow set-up shared by every process: a local SQLite store unless MLFLOW_TRACKING_URI says otherwise."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlparse

import mlflow


def tracking_uri(conf: Mapping[str, Any]) -> str:
    """MLFLOW_TRACKING_URI when set, else `sqlite:///<mlflow_dir>/mlflow.db` (no server needed)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = Path(conf.get("mlflow_dir", "mlruns")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """A tracking server (http/https): it decides where artifacts go."""
    return urlparse(uri).scheme in ("http", "https")


def artifact_location(uri: str, conf: Mapping[str, Any]) -> str | None:
    """Where a new experiment keeps its artifacts (the replay store, checkpoints): beside the tracking store.

    `sqlite:///PATH/x.db` -> `PATH/artifacts` (so our default `<mlflow_dir>/mlflow.db` -> `<mlflow_dir>/artifacts`);
    a tracking server (http/https), a `file:` store or a plain folder -> None: the server's artifact root, or
    MLflow's own `<store>/<experiment id>/`; another database (postgresql://, mysql://, ...) ->
    `<mlflow_dir>/artifacts`. Never MLflow's fallback `./mlruns` / `./mlartifacts`, which depends on the
    folder a command is started from.
    """
    scheme = urlparse(uri).scheme
    if is_server(uri) or scheme in ("", "file"):
        return None
    if scheme == "sqlite":
        from sqlalchemy.engine import make_url

        db = make_url(uri).database
        if db and db != ":memory:":
            return (Path(db).resolve().parent / "artifacts").as_uri()
    if scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        return (Path(conf.get("mlflow_dir", "mlruns")).resolve() / "artifacts").as_uri()
    return None  # databricks, plugins: their own default


def setup_mlflow(conf: Mapping[str, Any]) -> str:
    """Point MLflow at the configured store and experiment (created, with its artifacts beside the store, when
    missing); returns the experiment id. An experiment that exists keeps the artifact location it was created
    with: to move a project's artifacts, use a new `experiment` name."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri(conf)
    mlflow.set_tracking_uri(uri)
    name = conf.get("experiment", "audio-world-model")
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        exp_id = mlflow.create_experiment(name, artifact_location=artifact_location(uri, conf))
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def params_of(conf: Mapping[str, Any]) -> dict[str, str]:
    """The merged config as MLflow params (values stringified, within MLflow's length limit)."""
    return {k: str(v)[:6000] for k, v in conf.items()}


def log_params(conf: Mapping[str, Any]) -> None:
    """Log the config as params; a resumed run with changed values keeps the first ones."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    mlflow.log_params({k: v for k, v in params_of(conf).items() if k not in existing})


class RunNotFound(LookupError):
    """A run id the tracking store does not know."""


def find_run(run_id: str):
    """The MLflow run `run_id`, or None when the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_run(run_id)
    except MlflowException:
        return None


def start_or_resume_run(conf: Mapping[str, Any], run_id: str | None = None, run_name: str | None = None,
                        nested: bool = False, tags: Mapping[str, str] | None = None):
    """Start a run (params = the config, `tags` set) or reopen `run_id` (params kept, new keys added).

    The one way every stage opens its run, so a resumed run and a fresh one look the same in MLflow.
    """
    setup_mlflow(conf)
    if run_id and find_run(run_id) is None:
        raise RunNotFound(f"no MLflow run '{run_id}' in {tracking_uri(conf)}")
    run = mlflow.start_run(run_id=run_id or None, run_name=None if run_id else (run_name or conf["run_name"] or None),
                           nested=nested)
    if not run_id and tags:
        mlflow.set_tags(dict(tags))
    log_params(conf)
    return run


def local_artifact_dir(run) -> Path | None:
    """The run's artifact folder when it is a path on disk (a local store, or a server started with
    --no-serve-artifacts and a --default-artifact-root folder this machine shares); None when the artifacts are
    proxied by a server (`mlflow-artifacts:/`) or in an object store."""
    parsed = urlparse(run.info.artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def local_replay_dir(mlflow_dir: str | Path, run_id: str) -> Path:
    """This machine's folder for a run whose artifacts are not on its disk: `<mlflow_dir>/replay/<run_id>`
    (its replay store, and the checkpoints fetched from the artifact store)."""
    return Path(mlflow_dir).resolve() / "replay" / run_id


def default_replay_dir(run, conf: Mapping[str, Any]) -> Path:
    """The replay store of a run that names none: its artifact folder when on disk, else `local_replay_dir`."""
    return local_artifact_dir(run) or local_replay_dir(conf.get("mlflow_dir", "mlruns"), run.info.run_id)
