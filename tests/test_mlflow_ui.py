"""The MLflow line a command prints, followed as a person would: a real `mlflow ui` on a finished tiny run's store,
the printed address opened in headless Chromium, shows the run's own page (not MLflow 3's GenAI view of the
experiment, "Traces: 0"), and MLflow draws the run's test NLL against horizon as one line of H points.

Slow (an MLflow server and a browser start): `pytest -m slow tests/test_mlflow_ui.py`. Skips where no Chromium
is installed (Debian: apt-get install chromium)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote
from urllib.request import urlopen

import pytest

from tests.test_evaluate import _evaluate, _run_with_checkpoint

pytestmark = pytest.mark.slow
SERVER_START_S = 180  # a cold `mlflow ui` on a busy 2-core machine takes a minute
PAGE_S = 180


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no Chromium to open the MLflow UI in (Debian: apt-get install chromium)")


def _mlflow() -> str:
    found = Path(sys.executable).with_name("mlflow")
    return str(found) if found.is_file() else (shutil.which("mlflow") or pytest.skip("no mlflow command"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """The process group started for `proc` (the server and its workers, a browser and its helpers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


@contextmanager
def mlflow_ui(store_uri: str, port: int, log: Path):
    """`mlflow ui` on `store_uri` at 127.0.0.1:`port`, up (its /health answers) for the block, stopped after."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: one process to start
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([_mlflow(), "ui", "--backend-store-uri", store_uri, "--host", "127.0.0.1", "--port",
                                 str(port), "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow ui not up after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)  # polls a server still starting; nothing depends on its timing
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _dom(url: str, profile: Path) -> str:
    """The page's DOM once MLflow's scripts have fetched and drawn (a virtual-time budget), in headless Chromium."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,1000",
           f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        dom, _ = proc.communicate(timeout=PAGE_S)
    finally:
        _stop(proc)
    return dom


def _text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_the_printed_address_opens_the_run_and_its_nll_against_horizon(tmp_path, capsys):
    import mlflow

    from runtime.tracking import metric_url

    _chromium()
    run_id = _run_with_checkpoint(tmp_path, {"train": 6, "val": 2, "test": 2})
    assert _evaluate(tmp_path, "--run", run_id, "--no_tsne", "--no_probes") == 0
    line = capsys.readouterr().out.splitlines()[-1]
    printed = re.search(r"mlflow ui --backend-store-uri (\S+) --port (\d+)  then open (\S+)$", line)
    assert printed, line
    run = mlflow.get_run(run_id)
    port = _free_port()  # the printed port may be taken here: the same address on a free one
    url = printed.group(3).replace(f"127.0.0.1:{printed.group(2)}/", f"127.0.0.1:{port}/")
    with mlflow_ui(printed.group(1), port, tmp_path / "mlflow-ui.log") as server:
        history = json.load(urlopen(f"{server}/api/2.0/mlflow/metrics/get-history?run_id={run_id}"
                                    f"&metric_key={quote('test/nll_by_horizon', safe='')}", timeout=30))["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2, 3]
        files = json.load(urlopen(f"{server}/api/2.0/mlflow/artifacts/list?run_id={run_id}", timeout=30))["files"]
        assert "horizons_test.png" in [f["path"] for f in files]

        page = _text(_dom(url, tmp_path / "profile"))
        assert run.info.run_name == "rssm-recon-tiny-synth-s0" and run.info.run_name in page, page[:2000]
        assert "Model metrics" in page and "Artifacts" in page and "test/nll_by_horizon" in page
        assert "Tokens per Trace" not in page  # MLflow 3's GenAI overview of the experiment

        chart = _dom(metric_url(server, [run.info.experiment_id], [run_id], "test/nll_by_horizon"), tmp_path / "profile")
        lines = re.findall(r'class="js-line" d="([^"]+)"', chart)  # plotly's line of the run's curve
        assert lines and max(d.count("L") + 1 for d in lines) == 3, _text(chart)[:2000]
