"""Where a run's artifacts go for each tracking store: beside a SQLite or file store the user chose
(MLFLOW_TRACKING_URI), never in the folder a command is started from; an experiment that exists keeps
its location; a checkpoint that is not on this machine is fetched from the run's artifacts (evaluate,
dream, a resumed learner). A real tracking server: tests/test_mlflow_server.py."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from runtime.tracking import artifact_location, local_artifact_dir, setup_mlflow, start_or_resume_run

K = 32


def _conf(**kw) -> dict:
    return {"mlflow_dir": "mlruns", "experiment": "where-artifacts-go", "run_name": "", **kw}


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def chosen(tmp_path_factory) -> str:
    """MLFLOW_TRACKING_URI of a SQLite store somewhere the user chose (one for the module: each new store
    costs seconds of schema migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('somewhere') / 'other.db'}"


def test_artifacts_land_beside_a_sqlite_store_the_user_chose(chosen, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    with start_or_resume_run(_conf()) as run:
        mlflow.log_text("weights", "checkpoints/latest.txt")
    assert _files(tmp_path) == []  # no ./mlruns, ./mlartifacts, ./mlruns/artifacts
    folder = local_artifact_dir(run)
    store = Path(chosen.removeprefix("sqlite:///")).parent
    assert folder.is_relative_to(store / "artifacts") and (folder / "checkpoints" / "latest.txt").is_file()


def test_an_experiment_that_exists_keeps_its_artifact_location(chosen, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    mlflow.set_tracking_uri(chosen)
    mlflow.create_experiment("made-before", artifact_location=(tmp_path / "old").as_uri())
    setup_mlflow(_conf(experiment="made-before"))
    assert mlflow.get_experiment_by_name("made-before").artifact_location == (tmp_path / "old").as_uri()


def test_a_file_store_keeps_artifacts_in_its_folder(tmp_path, monkeypatch):
    store, cwd = tmp_path / "filestore", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores unless told
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    with start_or_resume_run(_conf()) as run:
        mlflow.log_text("x", "a.txt")
    assert local_artifact_dir(run).is_relative_to(store) and _files(cwd) == []


def test_artifact_location_per_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = _conf(mlflow_dir=str(tmp_path / "m"))
    assert artifact_location("http://127.0.0.1:5000", conf) is None  # the server decides
    assert artifact_location("https://mlflow.example", conf) is None
    assert artifact_location("file:///x/store", conf) is None  # MLflow's <store>/<experiment id>/
    assert artifact_location("sqlite:////data/t/x.db?timeout=20", conf) == "file:///data/t/artifacts"
    assert artifact_location("sqlite:///rel/x.db", conf) == (tmp_path / "rel" / "artifacts").as_uri()
    assert artifact_location("postgresql+psycopg2://u@h/db", conf) == (tmp_path / "m" / "artifacts").as_uri()


def test_a_checkpoint_not_on_this_machine_is_fetched_from_the_runs_artifacts(chosen, tmp_path, monkeypatch):
    """The learner uploads its checkpoints when the run's artifacts are not its replay store; evaluate and dream
    (run_checkpoint) and a resumed learner (fetch_checkpoints) get them back when the replay store is elsewhere."""
    from pydreamer.models import Dreamer
    from pydreamer.models.checkpoint import load_checkpoint, save_checkpoint
    from pydreamer.replay_layout import checkpoint_path
    from pydreamer.runs import RunError, run_checkpoint, run_config
    from runtime.config import load_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    gone = tmp_path / "another-machine" / "replay"
    with start_or_resume_run(_conf(), tags={"replay_dir": str(gone)}) as run:
        pass
    run = mlflow.get_run(run.info.run_id)
    with pytest.raises(RunError, match=rf"run {run.info.run_id} has no checkpoint: its replay store {gone} is not on "
                                       r"this machine, and its artifacts .* hold no checkpoints/best.pt or latest.pt"):
        run_checkpoint(run, run_config(run), fetch_to=tmp_path / "here")
    assert not (tmp_path / "here").exists()
    with start_or_resume_run(_conf(), run.info.run_id):
        src = tmp_path / "upload"
        save_checkpoint(checkpoint_path(src), Dreamer(load_config(["defaults", "tiny"]), K, 4, 1), None, 7)
        mlflow.log_artifact(str(checkpoint_path(src)), "checkpoints")
    replay, ckpt = run_checkpoint(run, run_config(run), fetch_to=tmp_path / "here")
    assert replay == tmp_path / "here" and ckpt == checkpoint_path(replay) and load_checkpoint(ckpt)["step"] == 7


def test_a_resumed_learner_without_a_checkpoint_gets_the_runs(chosen, tmp_path, monkeypatch):
    """A resume on another machine than the last, artifacts proxied by a server: the replay store here is new,
    so the learner downloads the run's artifact checkpoints before it looks for one."""
    from pydreamer.learner.loop import Learner
    from runtime.config import load_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    conf = load_config(["defaults", "tiny"])
    dims = {"n_tokens": K, "tokens_per_step": 4, "action_dim": 1}
    with start_or_resume_run(_conf()) as run:
        trained = Learner(conf, tmp_path / "there", dims)
        trained.step, trained.log_artifacts = 12, True
        trained.save()  # uploads checkpoints/latest.pt
    learner = Learner(conf, tmp_path / "here", dims)
    assert learner.fetch_checkpoints(run) == []  # its artifacts are its replay store: nothing to fetch
    learner.log_artifacts = True
    assert learner.fetch_checkpoints(run) == ["latest.pt"] and learner.try_resume() and learner.step == 12
    assert learner.fetch_checkpoints(run) == []  # one is there now: never overwritten


# ---- what a person sees of a run in MLflow (the UI itself: tests/test_mlflow_ui.py) ------------------------

def test_the_ui_hint_opens_the_run_in_the_machine_learning_view():
    """MLflow 3 opens an experiment in its GenAI view (traces); the printed address must open the run's page."""
    from runtime.tracking import run_url, ui_hint

    store = "sqlite:////data/runs/mlflow.db"
    url = "http://127.0.0.1:5000/#/experiments/3/runs/abc123?workflowType=machine_learning"
    assert run_url(store, "3", "abc123") == url
    assert ui_hint(store, "3", "abc123") == f"mlflow ui --backend-store-uri {store} --port 5000  then open {url}"
    assert ui_hint(store, "3", "abc123", port=5077).endswith("127.0.0.1:5077/#/experiments/3/runs/abc123"
                                                              "?workflowType=machine_learning")
    # a tracking server is already up: its own address, nothing to start
    assert ui_hint("https://mlflow.example/", "3", "abc123") == \
        "open https://mlflow.example/#/experiments/3/runs/abc123?workflowType=machine_learning"
    assert run_url(store, "3") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"


def test_the_metric_page_overlays_runs_against_the_step():
    import json
    from urllib.parse import parse_qs, urlsplit

    from runtime.tracking import metric_url

    url = metric_url("sqlite:////x.db", ["3", "3"], ["a1", "b2"], "test/nll_by_horizon", port=5077)
    assert url.startswith("http://127.0.0.1:5077/#/metric?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url.split("#", 1)[1]).query).items()}
    assert json.loads(query["runs"]) == ["a1", "b2"] and json.loads(query["experiments"]) == ["3"]
    assert json.loads(query["plot_metric_keys"]) == ["test/nll_by_horizon"] and query["x_axis"] == "step"


@pytest.mark.parametrize("configs, overrides, name", [
    (["defaults", "audio", "small"], {}, "rssm-recon-small-synth-s0"),
    (["defaults", "audio", "small", "contrastive"], {"seed": 2}, "rssm-contrastive-small-synth-s2"),
    (["defaults", "audio", "tiny", "transformer"], {}, "transformer-recon-tiny-synth-s0"),
    (["defaults", "audio", "small", "mel"], {}, "mel_rssm-recon-small-synth-s0"),
    (["defaults", "audio"], {"source": "folder", "data_root": "/corpora/digits/"}, "rssm-recon-audio-digits-s0"),
    (["defaults", "audio", "short"], {"source": "commonvoice", "data_root": "", "data_dir": "data-words"},
     "rssm-recon-short-data-words-s0"),
])
def test_a_new_run_is_named_after_what_it_is(configs, overrides, name):
    from runtime.config import load_config
    from runtime.tracking import run_name_of

    assert run_name_of({**load_config(configs), **overrides}) == name


def test_run_names_in_the_store(chosen, monkeypatch):
    """The name a new run gets: the `run_name` key when set, else what it is; a run of another family says its
    family; a resumed run keeps its name."""
    from runtime.config import load_config
    from runtime.tracking import run_name_of

    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    conf = {**load_config(["defaults", "audio", "tiny"]), "experiment": "named"}
    with start_or_resume_run(conf) as run:
        pass
    assert mlflow.get_run(run.info.run_id).info.run_name == "rssm-recon-tiny-synth-s0"
    with start_or_resume_run({**conf, "run_name": "mine"}) as other:
        pass
    assert mlflow.get_run(other.info.run_id).info.run_name == "mine"
    with start_or_resume_run({**conf, "seed": 5}, run.info.run_id):
        pass
    assert mlflow.get_run(run.info.run_id).info.run_name == "rssm-recon-tiny-synth-s0"
    assert run_name_of(conf, {"family": "wavegan"}) == "wavegan-tiny-synth-s0"
    assert run_name_of(_conf()) is None  # no world model in the config: MLflow picks one


def test_curves_and_root_artifacts(chosen, tmp_path, monkeypatch):
    """A curve is one metric with its x as the step (what MLflow charts against); a root artifact sits at the top of
    the run's artifacts, beside dreams/ and evaluation/."""
    from runtime.tracking import log_curves, log_root_artifact

    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    with start_or_resume_run(_conf()) as run:
        log_curves(run.info.run_id, {"test/nll_by_horizon": {2: 3.5, 1: 3.0, 3: float("nan")}})
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "test/nll_by_horizon")
        assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 3.5)]
        # the same evaluation again adds nothing; another one (more samples, another checkpoint) gets its own curve
        assert log_curves(run.info.run_id, {"test/nll_by_horizon": {1: 3.0, 2: 3.5}}) == {}
        assert log_curves(run.info.run_id, {"test/nll_by_horizon": {1: 2.9, 2: 3.4}}) == {
            "test/nll_by_horizon": "test/nll_by_horizon_2"}
        assert log_curves(run.info.run_id, {"test/nll_by_horizon": {1: 2.9, 2: 3.4}}) == {}
    client = mlflow.MlflowClient()
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test/nll_by_horizon")) == [
        (1, 3.0), (2, 3.5)], "one value per horizon: a chart of it is one line"
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test/nll_by_horizon_2")) == [
        (1, 2.9), (2, 3.4)]
    picture = tmp_path / "horizons.png"
    picture.write_bytes(b"png")
    log_root_artifact(run, picture, "horizons_test.png")
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert names == ["horizons_test.png"] and (local_artifact_dir(run) / "horizons_test.png").read_bytes() == b"png"


def _set_up_store(folder: str, barrier) -> str:
    """In a fresh process: wait for the other, then set up the same new store at once."""
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    barrier.wait(timeout=60)
    return setup_mlflow({"mlflow_dir": folder, "experiment": "two-at-once"})


def test_two_processes_set_up_one_new_store_at_once(tmp_path):
    """Bug: two launches into one new SQLite store both ran MLflow's schema migration, and one died on
    "duplicate column name: step". Both now get the one experiment."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    context = mp.get_context("spawn")
    barrier = context.Manager().Barrier(2)
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        ids = [f.result(timeout=300) for f in [pool.submit(_set_up_store, str(tmp_path), barrier) for _ in range(2)]]
    assert ids[0] == ids[1]
    assert (tmp_path / "mlflow.db.lock").exists()
