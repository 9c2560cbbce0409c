"""MLflow set-up shared by every process: a local SQLite store unless MLFLOW_TRACKING_URI says otherwise."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping
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
    with _first_use(uri):
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            exp_id = mlflow.create_experiment(name, artifact_location=artifact_location(uri, conf))
        else:
            exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextmanager
def _first_use(uri: str) -> Iterator[None]:
    """One process at a time creates or upgrades a local SQLite store and its experiment (bug: two launches into
    one new store at once both ran MLflow's schema migration, and one died on "duplicate column name: step").
    A database server or tracking server orders this itself."""
    db = None
    if urlparse(uri).scheme == "sqlite":
        from sqlalchemy.engine import make_url

        db = make_url(uri).database
    if not db or db == ":memory:":
        yield
        return
    with open(f"{Path(db).resolve()}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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

    The one way every stage opens its run, so a resumed run and a fresh one look the same in MLflow. A new run
    without a name (`run_name` argument or config key) is named after what it is: `run_name_of`.
    """
    setup_mlflow(conf)
    if run_id and find_run(run_id) is None:
        raise RunNotFound(f"no MLflow run '{run_id}' in {tracking_uri(conf)}")
    name = None if run_id else (run_name or conf.get("run_name") or run_name_of(conf, tags))
    run = mlflow.start_run(run_id=run_id or None, run_name=name, nested=nested)
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


# ---- what a person sees of a run in MLflow -------------------------------------------------

UI_PORT = 5000
NOT_A_SIZE = ("defaults",)  # config sections that say nothing of a run's size
SHORT_OBJECTIVE = {"reconstruction": "recon"}


def run_name_of(conf: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str | None:
    """`<world model>-<objective>-<size>-<corpus>-s<seed>` (e.g. `rssm-recon-small-synth-s0`), or
    `<family>-<size>-<corpus>-s<seed>` for a run of another family (a `family` tag, e.g. wavegan), so the runs
    table says what each run is; None for a config without a world model (MLflow then picks a name).

    The size is the config sections given (`--configs`) other than defaults and those that pick the world model,
    objective or observation (`audio small transformer` -> small); the corpus is `synth`, else the name of the
    folder read (`data_root`, else `data_dir`)."""
    if "world_model" not in conf:
        return None
    model_sections = {str(conf.get(k)) for k in ("world_model", "wm_objective", "observation")}
    sizes = [c for c in conf.get("configs", []) if c not in NOT_A_SIZE and c not in model_sections]
    sizes = [c for c in sizes if c != "audio"] or sizes  # audio alone is the full size; with another, that one
    source = str(conf.get("source", ""))
    folder = str(conf.get("data_root") or conf.get("data_dir") or "").rstrip("/")
    corpus = "synth" if source == "synth" else (Path(folder).name or source or "data")
    family = (tags or {}).get("family")
    what = [family] if family else [str(conf["world_model"]),
                                    SHORT_OBJECTIVE.get(conf.get("wm_objective"), conf.get("wm_objective"))]
    parts = [*what, "+".join(sizes), corpus, f"s{conf.get('seed', 0)}"]
    return "-".join(str(p) for p in parts if p not in (None, ""))


def run_url(uri: str, experiment_id: str, run_id: str | None = None, port: int = UI_PORT) -> str:
    """The address that opens the run (or the experiment's runs) in MLflow's machine-learning view: a plain
    `mlflow ui` address opens MLflow 3's GenAI view of an experiment, which shows traces, not runs."""
    base = uri.rstrip("/") if is_server(uri) else f"http://127.0.0.1:{port}"
    page = f"/runs/{run_id}" if run_id else "/runs"
    return f"{base}/#/experiments/{experiment_id}{page}?workflowType=machine_learning"


def metric_url(uri: str, experiment_ids: list[str], run_ids: list[str], key: str, port: int = UI_PORT) -> str:
    """MLflow's page of one metric's history against its step, the runs overlaid: for `test/nll_by_horizon`, NLL
    against horizon (the query is the one MLflow's own links to the page carry)."""
    import json
    from urllib.parse import urlencode

    base = uri.rstrip("/") if is_server(uri) else f"http://127.0.0.1:{port}"
    query = urlencode({"runs": json.dumps(list(run_ids)), "metric": json.dumps(key),
                       "experiments": json.dumps(sorted(set(experiment_ids))), "plot_metric_keys": json.dumps([key]),
                       "plot_layout": "{}", "x_axis": "step", "y_axis_scale": "linear", "line_smoothness": "1",
                       "show_point": "true", "deselected_curves": "[]", "last_linear_y_axis_range": "[]"})
    return f"{base}/#/metric?{query}"


def ui_hint(uri: str, experiment_id: str, run_id: str | None = None, port: int = UI_PORT) -> str:
    """How to see the run: start `mlflow ui` on this store (a tracking server is already up) and open `run_url`."""
    url = run_url(uri, experiment_id, run_id, port)
    if is_server(uri):
        return f"open {url}"
    return f"mlflow ui --backend-store-uri {uri} --port {port}  then open {url}"


def log_curves(run_id: str, curves: Mapping[str, Mapping[int, float]]) -> dict[str, str]:
    """Each curve as one metric whose steps are its x values (e.g. the horizon), so MLflow draws it against x and
    overlays runs; non-finite points are left out. A curve has one value per x: where the run already holds a
    different curve under the key (an earlier evaluation), this one goes to `<key>_2` (then `_3`, ...); the same
    curve again is not logged twice. Returns {key: the key it was logged under} for the keys that moved."""
    import math
    import time

    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    batch, moved = [], {}
    for key, curve in curves.items():
        points = {int(x): float(v) for x, v in curve.items() if math.isfinite(float(v))}
        name, n = key, 1
        while True:
            held = {m.step: m.value for m in client.get_metric_history(run_id, name)}
            if not held or held == points:
                break
            n += 1
            name = f"{key}_{n}"
        if held == points and held:
            continue
        if name != key:
            moved[key] = name
        batch += [Metric(name, v, now, x) for x, v in sorted(points.items())]
    for i in range(0, len(batch), 500):  # MLflow's batch limit is 1000 metrics
        client.log_batch(run_id, metrics=batch[i:i + 500])
    return moved


def log_root_artifact(run, path: Path | str, name: str) -> None:
    """`path` as the run's artifact `name` at the root of its artifacts (where a run's page and MLflow's compare
    view show it first): copied in when the artifact folder is on this disk, else uploaded."""
    import shutil
    import tempfile

    local = local_artifact_dir(run)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
        tmp = local / f".{name}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, local / name)
        return
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(path, Path(folder) / name)
        mlflow.MlflowClient().log_artifact(run.info.run_id, str(Path(folder) / name))
