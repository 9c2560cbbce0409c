"""Every command of the README, run at `tiny` size from a fresh clone: which ran, which failed, which cannot run
here and what checks it instead.

    python bench/readme_commands.py [--work DIR] [--no_install] [--only TEXT ...] [--list] [--timeout 900]

The README's commands are written for a real corpus, a GPU host and several machines. Here each is run in a clone
of the repository's HEAD (commit first: uncommitted changes are not in it), in the README's order, rewritten to
the test size and to what this script made on the spot:

- `tiny` after `audio` in `--configs` (`small` dropped), `make run CONFIGS="defaults audio tiny"`;
- placeholders filled: RUN_ID is the world-model run the last launch made, RUN_A / RUN_B / WAVEGAN_RUN are the
  runs of the lines that name them; DATA / DIR / R / REPLAY a data or replay folder of the clone; N = 2 (hosts,
  GPUs, workers), `$i` a loop over i = 0..N-1 on this machine;
- corpora made by the script (speech-like clips): a folder with a speaker per subfolder and in the file names,
  a LibriSpeech `<speaker>/<chapter>/` layout, a Common Voice release (validated.tsv + clips/*.mp3), short
  digit-like clips, the prompts me.mp3 and you.wav;
- services on 127.0.0.1: `mlflow server` where the README starts one (and for a tracking server it names),
  moto's S3 server for a bucket (`s3://BUCKET`).

A command that starts a learner beside generators (a learner on a bucket) runs in the background until its section
ends. Commands that need what this machine lacks (a Docker daemon, a second host) or that are the test suite
itself are listed with the reason and what checks them instead. `--install` (the default) makes the clone's own
`.venv` with `make install TORCH=cpu` first; `--no_install` runs everything with this interpreter's environment.

Writes WORK/readme_commands.md (a row per command: README line, as written, as run, result, seconds) and
WORK/readme_commands.json, each command's output in WORK/logs/; exits 1 when a command that ran failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))  # when loaded by path (tests/test_readme.py)

from markdown_commands import PYTHON, code_blocks, prose_and_code, tokens  # noqa: E402
from readme_world import BUCKET, CREDENTIALS, Services, make_corpora  # noqa: E402

COMMAND = re.compile(r"^\s*(?:[A-Z_]+=\S*\s+)*(?:time\s+)?(?:\S*/)?(python3?|make|pip|docker|mlflow|torchrun|export)\b")

# (pattern of the command as written, why it is not run here, what checks it instead)
NOT_HERE = [
    (r"\bdocker\b", "needs a Docker daemon and a GPU host (none here)",
     "tests/test_docker_files.py (Dockerfile, compose.yaml, entry point, signals); the image's command is "
     "launch.py, run here by the launch rows"),
    (r"^make test\b", "the test suite itself (10-11 min)", "CI's .ci/run runs it from a fresh clone"),
    (r"^pip install", "installs the project into the environment it is typed in",
     "tests/test_packaging.py: `pip install .` into a clean venv, then awm-launch from another folder"),
    (r"bench/readme_commands\.py", "this script itself (it would run every command again inside)",
     "this run of it"),
    (r"--nnodes 2", "two hosts with a rendezvous address",
     "the torchrun --standalone rows here (two ranks on one host) and tests/test_ddp.py"),
]
# The test size of a command's own sizes (what `tiny` cannot set because the command line sets it).
SIZES = [
    (r"best\|latest", "latest"),
    (r"--n_steps 200000", "--n_steps 300"),            # "train it longer": past tiny's 200
    (r"--wavegan_steps N\b", "--wavegan_steps 8"),     # past tiny's 4
    (r"--vq_steps \d+", "--vq_steps 40"),
    (r"--hours 1 10 100", "--hours 0.02 0.05"),
    (r"(bench/hearing\.py)", r"\1 --clips 2 --seconds 1"),
    (r"(bench/lookahead\.py)", r"\1 --split train"),  # tiny's test split is one utterance; it takes two
]
RUN_PLACEHOLDERS = ("RUN_ID", "RUN_A", "RUN_B", "WAVEGAN_RUN", "WORLD_MODEL_RUN")


@dataclass
class Row:
    line: int
    written: str
    run: str = ""
    result: str = "not run"
    seconds: float = 0.0
    why: str = ""
    log: str = ""
    runs: list[str] = field(default_factory=list)


def readme_rows(text: str) -> list[tuple[int, str, int]]:
    """(line, command, section) of every command in the README: code-block lines that start with a command word,
    and prose code spans of a python command with an option (a bare `python -m X` or one with `...` is a mention).
    Its section (the `##` heading above it) is the shell it is typed in: an `export` holds until the next one."""
    starts = [n for n, line in prose_and_code(text)[0] if line.startswith("## ")]

    def section(n: int) -> int:
        return sum(1 for s in starts if s < n)

    out = [(n, line.strip(), section(n)) for block in code_blocks(text) for n, line in block if COMMAND.match(line)]
    for n, line in prose_and_code(text)[0]:
        for span in re.findall(r"`([^`]+)`", line):
            words = span.split()
            if (words and PYTHON.fullmatch(words[0]) and ": error:" not in span and "..." not in words
                    and any(w.startswith("-") and w != "-m" for w in words)):
                out.append((n, span, section(n)))
    return sorted(out)


# ---- rewriting a command to the test size -------------------------------------------------------------------


def shell_join(words: list[str]) -> str:
    return " ".join(w if w in ("&&", "||", ";", "|") or re.fullmatch(r"[\w./:=,$@+-]+", w) else shlex.quote(w)
                    for w in words)


def tiny_sections(words: list[str]) -> list[str]:
    """`--configs defaults audio [small|...]` -> the same with `tiny` after `audio` and no `small`."""
    out, i = [], 0
    while i < len(words):
        out.append(words[i])
        if words[i] == "--configs":
            j = i + 1
            sections = []
            while j < len(words) and not words[j].startswith("-") and words[j] not in ("&&", "||", ";", "|"):
                sections.append(words[j])
                j += 1
            sections = [s for s in sections if s != "small"]
            if "tiny" not in sections:
                at = sections.index("audio") + 1 if "audio" in sections else len(sections)
                sections.insert(at, "tiny")
            out += sections
            i = j
            continue
        i += 1
    return out


class Rewriter:
    def __init__(self, work: Path, clone: Path, corpora: dict[str, Path], services: Services):
        self.work, self.clone, self.corpora, self.services = work, clone, corpora, services
        self.runs: dict[tuple[str, str], str] = {}  # (tracking store, placeholder) -> run id
        self.store = ""  # the tracking store of the row being rewritten ("" = the clone's mlruns)
        self.last: dict[tuple[str, ...], list[str]] = {}  # a command's words -> the arguments it was last given

    def value(self, word: str, before: str, target: str = "") -> str:
        if word in RUN_PLACEHOLDERS:
            key = "RUN_ID" if word == "WORLD_MODEL_RUN" else word
            key = "WAVEGAN_RUN" if target == "wavegan" and word == "RUN_ID" else key  # its own run
            if (self.store, key) not in self.runs:
                raise LookupError(f"{word}: no command before this one made such a run in this tracking store")
            return self.runs[(self.store, key)]
        named = re.fullmatch(r"(synth|librispeech|fsdd)=DIR", word)  # bench/hearing.py's corpora
        if named:
            return f"{named.group(1)}=" + {"synth": "data", "librispeech": "data-libri", "fsdd": "data-digits"}[
                named.group(1)]
        if word in ("DATA", "DIR"):
            return {"--out": "out", "--data_dir": "data", "--mlflow_dir": "mlruns"}.get(before, "data")
        if word in ("R", "REPLAY"):
            return "replay"
        if word in ("N", "$N") and before in ("--learners", "--nproc_per_node", "--n_workers"):
            return "2" if word == "N" else "$N"
        if word == "i" and before == "--worker":
            return "0"
        if word in ("H", "S") and before.startswith("--evaluate_"):
            return {"H": "5", "S": "2"}[word]
        if word == "N" and before in ("--max_utterances", "--starts_per_utterance"):
            return "2"
        if word == "best|latest":
            return "latest"
        for prefix, path in self.corpora.items():
            if word == prefix or word.startswith(prefix + "/"):
                return str(path) + word[len(prefix):]
        if word.startswith("/nfs/data"):
            return "data-nfs"
        if word.startswith("s3://BUCKET"):
            self.services.moto()
            return f"s3://{BUCKET}" + word[len("s3://BUCKET"):]
        return word

    def __call__(self, command: str) -> str:
        for pattern, repl in SIZES:
            command = re.sub(pattern, repl, command)
        words = [w.strip("[]") if w not in ("[", "]") else "" for w in tokens(command)]
        words = [w for w in words if w]
        words = tiny_sections(words)
        target = next((k + 1 for k, w in enumerate(words) if w.endswith(".py") or (k and words[k - 1] == "-m")), 0)
        if "..." in words:  # "the same arguments as the command's line before"
            k = words.index("...")
            if tuple(words[:k]) not in self.last:
                raise LookupError(f"'...' after {' '.join(words[:k])}: no line before it to take arguments from")
            words = words[:k] + self.last[tuple(words[:k])] + words[k + 1:]
        elif target:
            self.last[tuple(words[:target])] = [w for w in words[target:] if not w.startswith("#")]
        out = []
        for k, word in enumerate(words):
            if "=" in word and re.fullmatch(r"[A-Z_]+=.*", word):
                name, value = word.split("=", 1)
                out.append(f"{name}={self.env_value(name, value)}")
                continue
            out.append(self.value(word, words[k - 1] if k else "", words[target - 1] if target else ""))
        if out[:1] and PYTHON.fullmatch(out[0]):
            out[0] = "python"
        text = shell_join(out)
        if "$i" in text:
            text = f"for i in $(seq 0 $((N - 1))); do {text} || exit $?; done"
        return text

    def env_value(self, name: str, value: str) -> str:
        if name == "MLFLOW_TRACKING_URI" and value.startswith("http"):
            return self.services.mlflow()
        if name == "AWS_ENDPOINT_URL":
            return self.services.moto()
        if name in CREDENTIALS:
            return CREDENTIALS[name]
        return value


# ---- running ------------------------------------------------------------------------------------------------


def new_runs(env: dict[str, str], clone: Path, since_ms: int) -> list[tuple[str, dict[str, str]]]:
    """(run id, tags) of the runs started since `since_ms` in the store the command used."""
    import mlflow

    uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []
    client = mlflow.MlflowClient(uri)
    found = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], f"attributes.start_time >= {since_ms}"):
            found.append((run.info.run_id, dict(run.data.tags)))
    return found


def remember_runs(rewriter: Rewriter, row: Row, runs: list[tuple[str, dict[str, str]]], store: str) -> None:
    """The runs a row made stand for its tracking store's placeholders (a run on a server is not in mlruns/)."""
    for run_id, tags in runs:
        row.runs.append(run_id)
        if "wavegan/device" in tags:
            rewriter.runs[(store, "WAVEGAN_RUN")] = run_id
        elif "objective" in tags:  # a world-model run (launch.py or pydreamer.train)
            rewriter.runs[(store, "RUN_ID")] = run_id
            for mark in ("RUN_A", "RUN_B"):
                if re.search(rf"run {mark[-1]}\b", row.written):
                    rewriter.runs[(store, mark)] = run_id


def run_section(rows: list[Row], block: list[tuple[int, str]], rewriter: Rewriter, env: dict[str, str],
                clone: Path, logs: Path, timeout: float, install: bool, inline: set[int]) -> None:
    """The commands of one README section in order, as typed into one shell (its exports hold to its end)."""
    env = dict(env)
    background: list[tuple[Row, subprocess.Popen, float]] = []
    later = " ".join(c for _, c in block)
    for line, written in block:
        if background and "pydreamer.generator" not in written and not written.startswith("export "):
            join(background, rewriter, env, clone, timeout)  # the learner its generators fed: done before what follows
        row = Row(line, written)
        rows.append(row)
        run_one(row, rewriter, env, clone, logs, timeout, install, line in inline,
                "pydreamer.generator" in later.split(written, 1)[1], background)
        if row.result != "started in the background":
            _say(row)
    join(background, rewriter, env, clone, timeout)


def join(background: list, rewriter: "Rewriter", env: dict[str, str], clone: Path, timeout: float) -> None:
    """Wait for the learners started in the background; their runs become RUN_ID for the rows after them."""
    while background:
        row, proc, t0, start_ms = background.pop(0)
        finish(row, proc, t0, timeout)
        remember_runs(rewriter, row, new_runs(env, clone, start_ms), env.get("MLFLOW_TRACKING_URI", ""))
        _say(row)


def _say(row: Row) -> None:
    print(f"  {row.result:>10}  {row.seconds:6.0f} s  README:{row.line}  {row.run or row.written}"
          + (f"  ({row.why})" if row.why else ""), flush=True)


def run_one(row: Row, rewriter: Rewriter, env: dict[str, str], clone: Path, logs: Path, timeout: float,
            install: bool, inline: bool, generators_follow: bool, background: list) -> None:
    """One command: not run (with why), an export into `env`, a service started, or a process run to its end
    (a learner that generators after it feed: started, and left to the end of its section)."""
    line, written = row.line, row.written
    first = written.split("#", 1)[0].strip()
    skip = next(((why, instead) for pattern, why, instead in NOT_HERE if re.search(pattern, first)), None)
    if first.startswith("make install") and not install:
        skip = ("--no_install: this interpreter's environment is used", "CI's .ci/run runs make install")
    if skip:
        row.result, row.why = "not run", f"{skip[0]}; checked by {skip[1]}"
        return
    rewriter.store = env.get("MLFLOW_TRACKING_URI", "")
    try:
        if first.startswith("make install"):
            command = "make install TORCH=cpu"  # no GPU here: CPU-only torch
        elif first.startswith("make run"):
            command = 'make run CONFIGS="defaults audio tiny"'
            if not install:  # the environment is this interpreter's: make must not install into it
                command += ' -o "$VENV/.installed"'
        elif first.startswith("mlflow server"):
            argv = [w for w in tokens(rewriter(first)) if w]
            argv = argv[:argv.index("--port")] + argv[argv.index("--port") + 2:] if "--port" in argv else argv
            store = rewriter.work / "srv-mlflow"
            store.mkdir(exist_ok=True)
            argv = [w.replace("/srv/mlflow", str(store)) for w in argv]
            url = rewriter.services.mlflow(argv)
            row.run, row.result = shell_join(argv), f"started, answers on {url}"
            return
        else:
            command = rewriter(first).replace("/srv/mlflow", str(rewriter.work / "srv-mlflow"))
    except (LookupError, RuntimeError) as e:
        row.result, row.why = ("not run", f"a mention in the prose: {e}") if inline else ("failed", str(e))
        return
    row.run = command
    if command.startswith("export "):
        for word in tokens(command)[1:]:
            name, _, value = word.partition("=")
            env[name] = value
        row.result = "set"
        return
    log = logs / f"line{line:04d}.log"
    row.log = str(log.relative_to(logs.parent))
    start_ms = int(time.time() * 1000)
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    if "pydreamer.train" in command and generators_follow:
        background.append((row, proc, t0, start_ms))
        row.result = "started in the background"
        return
    finish(row, proc, t0, timeout)
    remember_runs(rewriter, row, new_runs(env, clone, start_ms), env.get("MLFLOW_TRACKING_URI", ""))


def finish(row: Row, proc: subprocess.Popen, t0: float, timeout: float) -> None:
    try:
        rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc = f"timed out after {timeout:.0f} s"
    row.seconds = round(time.monotonic() - t0, 1)
    row.result = "ok" if rc == 0 else "failed"
    if rc != 0:
        row.why = rc if isinstance(rc, str) else f"exit {rc}"


def report(rows: list[Row], work: Path, commit: str) -> str:
    ran = [r for r in rows if r.result not in ("not run",)]
    failed = [r for r in rows if r.result == "failed"]
    lines = [f"# The README's commands at `tiny` size (commit {commit})", "",
             f"{len(rows)} commands: {len(ran) - len(failed)} ran or set up, {len(failed)} failed, "
             f"{len(rows) - len(ran)} not run here (with what checks them instead).", "",
             "| README line | as written | as run | result | s |", "|---|---|---|---|---|"]
    for r in rows:
        result = r.result + (f": {r.why}" if r.why else "")
        cell = [str(r.line), r.written, r.run, result, f"{r.seconds:.0f}" if r.seconds else ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cell) + " |")
    text = "\n".join(lines) + "\n"
    (work / "readme_commands.md").write_text(text)
    (work / "readme_commands.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("readme-check"), help="a new or former work folder")
    p.add_argument("--no_install", dest="install", action="store_false",
                   help="use this interpreter's environment instead of the clone's own .venv")
    p.add_argument("--only", nargs="+", default=[], help="run only the commands that contain one of these texts")
    p.add_argument("--list", action="store_true", help="list the commands and stop")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per command")
    args = p.parse_args(argv)
    readme = (ROOT / "README.md").read_text()
    found = readme_rows(readme)
    if args.only:
        found = [f for f in found if any(t in f[1] for t in args.only)]
    if args.list:
        for line, command, section in found:
            print(f"README:{line}  [section {section}]  {command}")
        return 0
    work = args.work.resolve()
    clone = work / "clone"
    if clone.exists():
        print(f"readme_commands: {clone} exists: give a new --work folder", file=sys.stderr)
        return 2
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True).stdout.strip()
    venv_bin = clone / ".venv" / "bin" if args.install else Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update({"PATH": f"{venv_bin}:{env.get('PATH', '')}", "N": "2",
                "OMP_NUM_THREADS": "1", "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull})
    if not args.install:
        env["VENV"] = str(venv_bin.parent)  # `make` then uses it (its install step is marked done)
    services = Services(work, env)
    rewriter = Rewriter(work, clone, make_corpora(work, clone), services)
    rows: list[Row] = []
    sections: dict[int, list[tuple[int, str]]] = {}
    for line, command, section in found:
        sections.setdefault(section, []).append((line, command))
    inline = {n for n, line in prose_and_code(readme)[0]}
    print(f"readme_commands: {len(found)} commands, clone of {commit} in {clone}", flush=True)
    try:
        for section in sorted(sections.values()):
            run_section(rows, section, rewriter, env, clone, logs, args.timeout, args.install, inline)
    finally:
        services.stop()
    text = report(rows, work, commit)
    print(text)
    return 1 if any(r.result == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
