"""The workflow through a real tracking server (`mlflow server` on 127.0.0.1, SQLite behind it; PostgreSQL
too where the machine has it): launch.py, a resume, evaluate, dream and compare, with MLFLOW_TRACKING_URI
set to the server.

Two ways a server keeps artifacts, both tested: in a folder that server and trainer share
(`--default-artifact-root DIR`: the run's artifact folder is the replay store, checkpoints included),
and proxied by the server (`--serve-artifacts`, `mlflow-artifacts:/` locations): the replay store is
local, the learner uploads its checkpoints, and commands on a machine without the replay store
download them. Where artifacts go for the other stores: tests/test_tracking.py.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from runtime.tracking import local_artifact_dir

ROOT = Path(__file__).resolve().parents[1]
K = 32  # the codebook of tests.test_dream's tiny data


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@dataclass
class Server:
    url: str
    shared: Path  # --default-artifact-root: a folder server and trainer both see (docker: one volume in both)
    proxied: Path  # --artifacts-destination: what the server serves as mlflow-artifacts:/
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _start(cmd_of_port, log: Path, env: dict, deadline_s: float = 120.0):
    """Start a server on a free port (on another one if that was taken meanwhile); returns (proc, port)."""
    for _ in range(3):
        port = _free_port()
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd_of_port(port), stdout=f, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        if _wait(proc, port, log, deadline_s):
            return proc, port
    raise AssertionError(f"no free port for the server:\n{log.read_text()[-4000:]}")


def _wait(proc, port: int, log: Path, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if "already in use" in log.read_text():
                return False
            raise AssertionError(f"the server exited with code {proc.returncode}:\n{log.read_text()[-4000:]}")
        if _healthy(f"http://127.0.0.1:{port}"):
            return True
        time.sleep(0.2)
    _stop(proc)
    raise AssertionError(f"no answer from http://127.0.0.1:{port}/health within {deadline_s:.0f} s:\n"
                         f"{log.read_text()[-4000:]}")


def _stop(proc) -> None:
    """The server and what it started (its own process group: the uvicorn worker). Nothing of it is kept, so
    no graceful stop (seconds)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _mlflow_server(root: Path, backend: str, request) -> Server:
    """`mlflow server` on `backend`, answering /health. New experiments get their artifacts in `shared` (what
    `--no-serve-artifacts --default-artifact-root DIR` gives), and it serves `mlflow-artifacts:/` from `proxied`,
    so one server (seconds to start) hosts both layouts. Its GenAI job runner (7 more processes) is off."""
    shared, proxied, log = root / "shared-artifacts", root / "served-artifacts", root / "server.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc, port = _start(lambda port: [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                                      "--port", str(port), "--workers", "1", "--backend-store-uri", backend,
                                      "--default-artifact-root", str(shared), "--serve-artifacts",
                                      "--artifacts-destination", str(proxied)], log, env)
    request.addfinalizer(lambda: _stop(proc))
    return Server(f"http://127.0.0.1:{port}", shared, proxied, log)


@pytest.fixture(scope="module")
def server(tmp_path_factory, request) -> Server:
    root = tmp_path_factory.mktemp("server")
    return _mlflow_server(root, f"sqlite:///{root / 'server.db'}", request)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.test_dream import make_dream_data

    return make_dream_data(tmp_path_factory.mktemp("server-data"))


def _env(url: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=url, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _run(args: list[str], cwd: Path, url: str, timeout: float = 240) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(url), capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args[:3])} exited with {proc.returncode}:\n{out}"
    return out


def _launch(data: Path, cwd: Path, url: str, *extra: str) -> tuple[str, str]:
    out = _run([str(ROOT / "launch.py"), "--configs", "defaults", "audio", "tiny", "--data_dir", str(data),
                "--codebook_size", str(K), "--batch_size", "2", "--batch_length", "8", "--n_env_steps", "200",
                "--log_interval", "3", "--eval_interval", "1000", "--save_interval", "3",
                "--generator_workers_eval", "0", "--dream_at_end", "false", *extra], cwd, url)
    return re.search(r"run (\w{32})", out)[1], out


def _in(cwd: Path, url: str, monkeypatch) -> Path:
    """Run a command in this process from `cwd` with MLFLOW_TRACKING_URI=url, as a shell would (`python -m ...`):
    the same code as the subprocess, without a second interpreter to start (seconds on 2 busy cores)."""
    cwd.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(cwd)
    for key, value in _env(url).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    return cwd


def _evaluate(run_id: str, cwd: Path, url: str, monkeypatch, capsys) -> str:
    from pydreamer.evaluate import main

    _in(cwd, url, monkeypatch)
    assert main(["--run", run_id, "--horizons", "2", "--samples", "2", "--max_utterances", "2",
                 "--starts_per_utterance", "4"]) == 0
    return capsys.readouterr().out


def _dream(run_id: str, cwd: Path, url: str, monkeypatch, capsys) -> str:
    from pydreamer.dream import main

    _in(cwd, url, monkeypatch)
    assert main(["--run", run_id, "--out", "dreams", "--as_run_dreams", "--dream_seconds", "0.5", "--samples", "1", "--unconditional", "1",
                 "--warm", "0", "--test_prompts", "2", "--real_clips", "2", "--interp_seconds", "0.2",
                 "--griffin_lim_iters", "2"]) == 0
    return capsys.readouterr().out


def _artifacts(client, run_id: str, path: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


@pytest.mark.slow
def test_a_run_through_a_server_with_a_shared_artifact_folder(server, data, tmp_path, monkeypatch, capsys):
    """launch, resume, evaluate, dream, compare via http://; the replay store is the run's artifact folder in the
    server's artifact root, which this machine shares (`--no-serve-artifacts --default-artifact-root DIR`)."""
    from pydreamer.models.checkpoint import load_checkpoint

    here = tmp_path / "trainer"
    run_id, out = _launch(data, here, server.url, "--n_steps", "6")
    client = mlflow.MlflowClient(server.url)
    run = client.get_run(run_id)
    folder = local_artifact_dir(run)
    assert folder is not None and folder.is_relative_to(server.shared), run.info.artifact_uri
    assert f"replay store {folder}" in out
    assert list((folder / "episodes").rglob("*.npz")) and (folder / "tokenizer" / "vqvae.pt").is_file()
    assert load_checkpoint(folder / "checkpoints" / "latest.pt")["step"] == 6
    assert {"latest.pt"} <= _artifacts(client, run_id, "checkpoints") and "episodes" in _artifacts(client, run_id, "")
    assert _files(here) == []  # nothing in the folder it was started from

    out = _launch(data, here, server.url, "--n_steps", "9", "--resume_id", run_id)[1]
    assert "resuming at step 6" in out and load_checkpoint(folder / "checkpoints" / "latest.pt")["step"] == 9

    elsewhere = tmp_path / "analysis"
    out = _evaluate(run_id, elsewhere, server.url, monkeypatch, capsys)
    assert f"run {run_id} at step 9 (latest.pt)" in out and f"-> {folder / 'evaluation' / 'test'}" in out
    assert (folder / "evaluation" / "test" / "horizons.csv").is_file()
    out = _dream(run_id, elsewhere, server.url, monkeypatch, capsys)
    assert "tokenizer: run artifact tokenizer/" in (elsewhere / "dreams" / "summary.json").read_text()
    assert (folder / "dreams" / "acoustics.md").is_file() and "dreams" in _artifacts(client, run_id, "")
    metrics = client.get_run(run_id).data.metrics
    assert "test/nll_h1" in metrics and "dream/realtime_factor" in metrics and metrics["train/model_params"] > 0

    from pydreamer.compare import main as compare

    assert compare(["--runs", run_id, "--out", "comparison"]) == 0
    table = (elsewhere / "comparison" / "comparison.md").read_text()
    assert f"| {run_id[:8]} |" in table and f"{metrics['test/nll_h1']:.3f}" in table
    assert sorted(p.name for p in elsewhere.iterdir()) == ["comparison", "dreams"]  # no ./mlruns there either


@pytest.mark.slow
def test_a_run_through_a_server_that_proxies_artifacts(server, data, tmp_path, monkeypatch, capsys):
    """`--serve-artifacts`: the run's artifacts are mlflow-artifacts:/..., which no process writes as files. The
    replay store is local (`<mlflow_dir>/replay/<run id>`), the learner uploads its checkpoints, and evaluate and
    dream, from another folder with no copy of the replay store, fetch the checkpoint through the server."""
    client = mlflow.MlflowClient(server.url)
    # a server started with --serve-artifacts and no --default-artifact-root gives every new experiment this
    client.create_experiment("proxied", artifact_location="mlflow-artifacts:/proxied")
    here = tmp_path / "trainer"
    run_id, out = _launch(data, here, server.url, "--n_steps", "6", "--experiment", "proxied")
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/proxied/") and local_artifact_dir(run) is None
    replay = here / "mlruns" / "replay" / run_id
    assert f"replay store {replay}" in out and list((replay / "episodes").rglob("*.npz"))
    served = server.proxied / "proxied" / run_id / "artifacts"
    assert (served / "checkpoints" / "latest.pt").is_file() and (served / "tokenizer" / "vqvae.pt").is_file()
    assert "latest.pt" in _artifacts(client, run_id, "checkpoints")
    shutil.rmtree(here)  # as if trained on another machine

    elsewhere = tmp_path / "analysis"
    out = _evaluate(run_id, elsewhere, server.url, monkeypatch, capsys)
    fetched = elsewhere / "mlruns" / "replay" / run_id
    assert f"run {run_id} at step 6 (latest.pt)" in out and (fetched / "checkpoints" / "latest.pt").is_file()
    assert {"horizons.csv", "summary.json"} <= _artifacts(client, run_id, "evaluation/test")
    assert (served / "evaluation" / "test" / "horizons.csv").is_file()
    _dream(run_id, elsewhere, server.url, monkeypatch, capsys)
    assert "acoustics.md" in _artifacts(client, run_id, "dreams")
    metrics = client.get_run(run_id).data.metrics
    assert "test/nll_h1" in metrics and "dream/realtime_factor" in metrics


# ---- PostgreSQL behind the server, where the machine has it ------------------------------------

def _postgres_driver() -> str | None:
    """The SQLAlchemy dialect of the PostgreSQL driver installed; None when there is none."""
    for module, dialect in (("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg")):
        try:
            __import__(module)
            return dialect
        except ImportError:
            pass
    return None


def _postgres_skip_reason() -> str | None:
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        return "PostgreSQL is not installed (no initdb/pg_ctl on PATH)"
    if _postgres_driver() is None:
        return "PostgreSQL is installed but this environment has no driver for it (pip install psycopg2-binary)"
    if os.geteuid() == 0:  # initdb refuses root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and no 'postgres' user to run initdb as"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_postgres_skip_reason() is not None, reason=str(_postgres_skip_reason()))
def test_a_server_on_a_postgresql_backend(data, tmp_path, request, monkeypatch, capsys):
    """A PostgreSQL cluster made and started here (initdb, pg_ctl; as the `postgres` user when the tests run as
    root), the server on it, a tiny launch and evaluate through it."""
    run_as = {"user": "postgres"} if os.geteuid() == 0 else {}
    pg = Path(tempfile.mkdtemp(prefix="pg-test-"))  # pytest's tmp folders are private to this user
    request.addfinalizer(lambda: shutil.rmtree(pg, ignore_errors=True))
    if run_as:
        shutil.chown(pg, run_as["user"])
    subprocess.run(["initdb", "-D", str(pg / "data"), "-A", "trust", "-U", "mlflow"], check=True, cwd=pg,
                   capture_output=True, **run_as)
    port = _free_port()
    subprocess.run(["pg_ctl", "-D", str(pg / "data"), "-l", str(pg / "log"), "-w", "-t", "60", "-o",
                    f"-p {port} -k {pg} -c listen_addresses=127.0.0.1", "start"], check=True, cwd=pg,
                   capture_output=True, **run_as)
    request.addfinalizer(lambda: subprocess.run(["pg_ctl", "-D", str(pg / "data"), "-m", "immediate", "stop"],
                                                cwd=pg, capture_output=True, **run_as))
    server = _mlflow_server(tmp_path, f"{_postgres_driver()}://mlflow@127.0.0.1:{port}/postgres", request)
    run_id, _ = _launch(data, tmp_path / "trainer", server.url, "--n_steps", "3")
    folder = local_artifact_dir(mlflow.MlflowClient(server.url).get_run(run_id))
    assert folder.is_relative_to(server.shared) and (folder / "checkpoints" / "latest.pt").is_file()
    assert f"run {run_id} at step 3" in _evaluate(run_id, tmp_path / "analysis", server.url, monkeypatch, capsys)
