"""Packaging, as someone who installs the project relies on it: an MIT licence declared, one config file that an
installed (non-editable) wheel carries, console commands, and `make TORCH=cpu` fetching torch from PyTorch's
CPU-only index where it can be reached (one line and PyPI's wheels where not). The slow test builds the wheel
offline, installs it into a fresh environment and runs `awm-launch` from another folder."""
from __future__ import annotations

import ast
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
COMMANDS = {"awm-launch": "launch", "awm-tokenizer": "tokenizer.__main__", "awm-train": "pydreamer.train",
            "awm-generator": "pydreamer.generator", "awm-evaluate": "pydreamer.evaluate",
            "awm-dream": "pydreamer.dreams.command", "awm-compare": "pydreamer.compare",
            "awm-wavegan": "wavegan.command"}


def test_the_licence_is_mit_and_declared():
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License\n")
    assert PROJECT["project"]["license"] == "MIT"
    assert PROJECT["project"]["license-files"] == ["LICENSE"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_is_a_main_that_takes_argv(command):
    """`name = "module:main"`, and that main(argv=None) returns the exit code (the script exits with it)."""
    module, _, func = PROJECT["project"]["scripts"][command].partition(":")
    assert (module, func) == (COMMANDS[command], "main")
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    assert [a.arg for a in main.args.args] == ["argv"] and isinstance(main.args.defaults[0], ast.Constant)
    assert set(PROJECT["project"]["scripts"]) == set(COMMANDS)


def test_the_config_file_has_one_copy_and_is_package_data():
    setuptools = PROJECT["tool"]["setuptools"]
    assert "config" in setuptools["packages"]["find"]["include"]
    assert setuptools["package-data"]["config"] == ["defaults.yaml"]
    assert setuptools["py-modules"] == ["launch"]
    listed = subprocess.run(["git", "ls-files", "--", "*defaults.yaml"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    if listed.returncode == 0:  # a git checkout (not the Docker image's copy)
        assert listed.stdout.split() == ["config/defaults.yaml"]
    from runtime.config import DEFAULT_CONFIG_PATH

    assert DEFAULT_CONFIG_PATH == ROOT / "config" / "defaults.yaml"


# ---------------------------------------------------------------- make TORCH=cpu (a stub pip, a local index)


def fake_checkout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """What `make deps` reads, and a venv whose pip only writes its arguments to a log (nothing installed)."""
    clone = tmp_path / "clone"
    for name in ("Makefile", "pyproject.toml", "docker/deps.py"):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    bin_dir, log = tmp_path / "venv" / "bin", tmp_path / "pip.log"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    return clone, tmp_path / "venv", log


def make_deps(tmp_path: Path, *variables: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    if not shutil.which("make"):
        pytest.fail("make is not installed (`make install` needs it)")
    clone, venv, log = fake_checkout(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "TORCH")) and "proxy" not in k.lower()}
    result = subprocess.run(["make", "--no-print-directory", "deps", f"VENV={venv}", *variables], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def local_index(tmp_path):
    """http://127.0.0.1:PORT/whl: an index root with a `cpu/torch/` page, served while the test runs."""
    root = tmp_path / "served"
    (root / "whl" / "cpu" / "torch").mkdir(parents=True)
    (root / "whl" / "cpu" / "torch" / "index.html").write_text("<html></html>\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl"
    server.shutdown()
    server.server_close()


def test_torch_cpu_comes_from_the_cpu_index_first(tmp_path, local_index):
    result, pip = make_deps(tmp_path, "TORCH=cpu", f"TORCH_INDEX_ROOT={local_index}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(pip) == 2, pip
    assert f"--index-url {local_index}/cpu -r " in pip[0] and pip[0].endswith("torch.txt"), pip
    assert pip[1].endswith("deps.txt") and "--index-url" not in pip[1], pip
    torch_txt = (tmp_path / "venv" / "torch.txt").read_text().splitlines()
    wanted = [r for r in PROJECT["project"]["dependencies"] if r.split(">")[0].split("=")[0] in ("torch", "torchaudio")]
    assert torch_txt == wanted and len(wanted) == 2, "the same bounds as pyproject.toml's"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torch_cpu_falls_back_to_the_default_wheels_with_one_line(tmp_path):
    index = f"http://127.0.0.1:{closed_port()}/whl"
    result, pip = make_deps(tmp_path, "TORCH=cpu", f"TORCH_INDEX_ROOT={index}")
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in result.stdout.splitlines() if line.startswith("make: TORCH=cpu")]
    assert len(said) == 1 and "not reachable" in said[0] and "default" in said[0], result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert len(pip) == 1 and pip[0].endswith("deps.txt"), pip


def test_torch_fallback_no_fails_instead(tmp_path):
    index = f"http://127.0.0.1:{closed_port()}/whl"
    result, pip = make_deps(tmp_path, "TORCH=cu128", "TORCH_FALLBACK=no", f"TORCH_INDEX_ROOT={index}")
    assert result.returncode != 0 and pip == []
    assert "make: TORCH=cu128" in result.stderr and "not reachable" in result.stderr, result.stderr


def test_a_bad_torch_variant_is_one_clear_error(tmp_path):
    result, pip = make_deps(tmp_path, "TORCH=gpu")
    assert result.returncode != 0 and pip == []
    assert "TORCH=gpu" in result.stderr and "TORCH=cpu" in result.stderr, result.stderr


def test_the_default_install_is_unchanged(tmp_path):
    """No TORCH (CI, the README's `make install`): PyPI's wheels, no probe of PyTorch's index."""
    result, pip = make_deps(tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(pip) == 1 and pip[0].endswith("deps.txt"), pip
    assert "pytorch" not in result.stdout + result.stderr


# ---------------------------------------------------------------- the wheel, installed elsewhere

CHECK = """
import json, sys
from importlib.metadata import distribution
import launch, runtime.config, pydreamer.train, tokenizer.__main__, wavegan.command
eps = [ep for ep in distribution("audio-world-model").entry_points if ep.group == "console_scripts"]
loaded = {ep.name: callable(ep.load()) for ep in eps}
mods = {m.__name__: m.__file__ for m in (launch, runtime.config, pydreamer.train, tokenizer.__main__, wavegan.command)}
print(json.dumps({"files": mods, "config": str(runtime.config.DEFAULT_CONFIG_PATH), "path": sys.path,
                  "commands": loaded}))
"""


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the source (no build/ or egg-info written into the checkout), offline."""
    src = tmp_path / "src"
    include = PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({p.rstrip("*") for p in include})
    for name in ("pyproject.toml", "README.md", "LICENSE", "launch.py"):
        shutil.copy2(ROOT / name, (src.mkdir(exist_ok=True), src / name)[1])
    for name in packages:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "-q", ".", "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        pytest.skip(f"the wheel cannot be built offline here: {result.stderr.strip().splitlines()[-1:]}")
    return next((tmp_path / "dist").glob("audio_world_model-*.whl"))


def install_elsewhere(wheel: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh venv with only the wheel in it (no download): the dependencies are this environment's, seen through
    a .pth line (whose own .pth files, this checkout's editable hook among them, are not read)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    (purelib / "_awm_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                             "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "--python" in result.stderr:
        pytest.skip(f"this pip has no --python option (pip >= 22.3): {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return venv, purelib


@pytest.mark.slow
def test_the_installed_wheel_runs_from_another_folder(tmp_path):
    venv, purelib = install_elsewhere(build_wheel(tmp_path), tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")

    def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout)

    check = run(str(venv / "bin" / "python"), "-c", CHECK)
    assert check.returncode == 0, check.stderr
    found = json.loads(check.stdout.splitlines()[-1])
    assert all(Path(f).is_relative_to(purelib) for f in found["files"].values()), found["files"]
    config = Path(found["config"])
    assert config.is_relative_to(purelib) and config.read_bytes() == (ROOT / "config" / "defaults.yaml").read_bytes()
    # nothing but the installed copy could have served them: no path entry is the checkout or holds its packages
    others = [p for p in found["path"] if p and not Path(p).is_relative_to(purelib)]
    assert not [p for p in others if Path(p).resolve() == ROOT or (Path(p) / "runtime" / "config.py").exists()]
    assert found["commands"] == {name: True for name in COMMANDS}

    helped = run(str(venv / "bin" / "awm-launch"), "--help")
    assert helped.returncode == 0 and "--configs" in helped.stdout, helped.stderr
    # the toy env's tiny size, as tests/test_launch.py runs it: config, MLflow, generators and learner, installed
    trained = run(str(venv / "bin" / "awm-launch"), "--configs", "defaults", "tiny", "--env_id", "ToyTokens-v0",
                  "--mlflow_dir", "mlruns", "--batch_size", "4", "--batch_length", "8", "--log_interval", "10",
                  "--eval_interval", "50", "--save_interval", "10", "--n_env_steps", "600", "--n_steps", "20",
                  timeout=240)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "step 20/20" in trained.stdout + trained.stderr and (elsewhere / "mlruns").is_dir()
