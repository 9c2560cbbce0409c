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


def setup_mlflow(conf: Mapping[str, Any]) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri(conf)
    mlflow.set_tracking_uri(uri)
    name = conf.get("experiment", "audio-world-model")
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            artifacts = (Path(conf.get("mlflow_dir", "mlruns")).resolve() / "artifacts").as_uri()
        exp_id = mlflow.create_experiment(name, artifact_location=artifacts)
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
    """The run's artifact folder when it is on this machine's disk; None for a server or object store."""
    parsed = urlparse(run.info.artifact_uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None
