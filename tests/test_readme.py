"""The README is a manual, and these fast checks keep it one (no command of it is run).

- Its table of contents links to headings that exist, and lists every `##` section.
- Every in-page link, and every link into docs/results.md (the measurements), names a heading that exists.
- No run id (32 hex digits, or 8 quoted as a run), no `/tmp/` or `/work/` path, no "development machine":
  measurements and where they were taken belong in docs/results.md.
- Every command in its code blocks names something that exists: `python -m MODULE`, `python launch.py`,
  `python bench/X.py`, `make TARGET`.
- Every `--option` of such a command (code blocks of both files, and the README's inline `python ...` spans) is
  either that command's own flag or a config key of config/defaults.yaml; a stale one fails with the line quoted.

A command's own flags are read off its real parser: its `main` is called with argparse's parsing replaced by
an exception carrying the parser, so nothing runs. A parser read with `parse_known_args` passes the rest on as
config overrides (launch.py, the tokenizer, the learner, ...); one read with `parse_args` takes its own flags
only (evaluate, dream, compare, ...).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest
from markdown_commands import commands, invocations, prose_and_code, tokens

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results.md"


# ---- reading Markdown -----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every heading outside code blocks."""
    found = []
    for _, line in prose_and_code(text)[0]:
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            found.append((len(m.group(1)), m.group(2)))
    return found


def anchors(text: str) -> set[str]:
    """Every heading's anchor, a repeated one numbered as GitHub numbers it (-1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in headings(text):
        base = slug(title)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def links(text: str) -> list[tuple[int, str, str]]:
    """(line number, target, anchor) of every Markdown link outside code blocks and code spans."""
    out = []
    for number, line in prose_and_code(text)[0]:
        line = re.sub(r"`[^`]*`", "", line)
        for target in re.findall(r"\]\(([^)\s]*)\)", line):
            path, _, anchor = target.partition("#")
            out.append((number, path, anchor))
    return out


def options(args: list[str]) -> list[str]:
    out = []
    for word in args:
        word = word.lstrip("[(").rstrip("]),")
        if word.startswith("--") and len(word) > 2:
            out.append(word.split("=", 1)[0])
    return out


# ---- what exists ----------------------------------------------------------------------------------------


def module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def target_exists(target: str) -> bool:
    if target.endswith(".py"):
        return (ROOT / target).is_file()
    if module_file(target):
        return True
    try:
        return importlib.util.find_spec(target) is not None  # e.g. python -m pytest
    except (ImportError, ValueError):
        return False


@lru_cache(maxsize=None)
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    names = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))
    for phony in re.findall(r"^\.PHONY\s*:(.*)$", text, flags=re.M):
        names.update(phony.split())
    return frozenset(names)


@lru_cache(maxsize=None)
def config_keys() -> frozenset[str]:
    from runtime.config import load_sections

    return frozenset(load_sections()["defaults"])


class _Parser(Exception):
    def __init__(self, parser: argparse.ArgumentParser, takes_config: bool):
        super().__init__("parser captured")
        self.parser, self.takes_config = parser, takes_config


def _raise_strict(self, *a, **k):
    raise _Parser(self, takes_config=False)


def _raise_known(self, *a, **k):
    raise _Parser(self, takes_config=True)


def _load(target: str):
    if target.endswith(".py"):
        path = ROOT / target
        spec = importlib.util.spec_from_file_location(f"_readme_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    file = module_file(target)
    return importlib.import_module(f"{target}.__main__" if file and file.name == "__main__.py" else target)


@lru_cache(maxsize=None)
def own_flags(target: str) -> tuple[frozenset[str], bool] | None:
    """The option strings of the command's parser (its subcommands' too) and whether it passes the rest on as
    config overrides; None for a command outside the project."""
    if not target.endswith(".py") and module_file(target) is None:
        return None
    module = _load(target)
    main = getattr(module, "main", None) or getattr(module, "_main", None)
    assert main is not None, f"{target}: no main() to read its parser from"
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _raise_strict), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", _raise_known):
        try:
            main()
        except _Parser as got:
            parser, takes_config = got.parser, got.takes_config
        else:
            raise AssertionError(f"{target}: main() returned without parsing its command line")
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags.update(sub._option_string_actions)
    return frozenset(flags), takes_config


# ---- the checks -----------------------------------------------------------------------------------------


def test_contents_link_every_section():
    text = README.read_text()
    body = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = [anchor for _, anchor in re.findall(r"\[([^\]]+)\]\(#([^)]+)\)", body)]
    assert listed, "README.md has no table of contents (a '## Contents' list of links)"
    known = anchors(text)
    assert not [a for a in listed if a not in known], \
        f"contents links without a heading: {[a for a in listed if a not in known]}"
    sections = [slug(title) for level, title in headings(text) if level == 2 and title != "Contents"]
    missing = [s for s in sections if s not in listed]
    assert not missing, f"## sections missing from the contents: {missing}"
    assert listed == [s for s in sections if s in listed], "the contents list the sections out of order"


@pytest.mark.parametrize("path", [README, RESULTS], ids=["README.md", "docs/results.md"])
def test_every_link_to_a_heading_resolves(path):
    text = path.read_text()
    bad = []
    for number, target, anchor in links(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file = path if not target else (path.parent / target).resolve()
        if not file.exists():
            bad.append(f"{path.name}:{number}: {target} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            bad.append(f"{path.name}:{number}: no heading '#{anchor}' in {file.relative_to(ROOT)}")
    assert not bad, "\n".join(bad)


def test_the_manual_has_no_run_ids_or_machine_paths():
    bad = []
    for number, line in enumerate(README.read_text().splitlines(), 1):
        for pattern, why in ((r"\b[0-9a-f]{32}\b", "an MLflow run id"),
                             (r"\bruns?\s+`?[0-9a-f]{8}\b", "a run id"),
                             (r"/tmp/|/work/", "a path of the machine it was measured on"),
                             (r"development machine", "where a measurement was taken")):
            if re.search(pattern, line, flags=re.I if "machine" in why else 0):
                bad.append(f"README.md:{number}: {why} (move it to docs/results.md): {line.strip()}")
    assert not bad, "\n".join(bad)


def test_results_reproduce_what_they_report():
    """The measurements' file keeps its promise: a table of contents, and commands to reproduce."""
    text = RESULTS.read_text()
    assert "## Contents" in text
    assert len([c for c in commands(text) if invocations(c[1])]) >= 15, "docs/results.md lost its commands"


def test_commands_name_things_that_exist():
    bad = []
    for path in (README, RESULTS):
        for number, line in commands(path.read_text(), inline=path is README):
            for target, _ in invocations(line):
                if not target_exists(target):
                    bad.append(f"{path.name}:{number}: no module or file '{target}': {line.strip()}")
            words = [w for w in tokens(line) if not re.fullmatch(r"[A-Z_]+=\S*", w)]
            if words[:1] == ["time"]:
                words = words[1:]
            if words[:1] == ["make"] and len(words) > 1 and words[1] not in make_targets():
                bad.append(f"{path.name}:{number}: no make target '{words[1]}': {line.strip()}")
    for number, line in prose_and_code(README.read_text())[0]:
        for target in re.findall(r"`make ([a-z][\w-]*)", line):
            if target not in make_targets():
                bad.append(f"README.md:{number}: no make target '{target}'")
    assert not bad, "\n".join(bad)


def test_command_options_are_flags_or_config_keys():
    bad = []
    for path in (README, RESULTS):
        for number, line in commands(path.read_text(), inline=path is README):
            for target, args in invocations(line):
                if not target_exists(target):
                    continue  # test_commands_name_things_that_exist says so
                known = own_flags(target)
                if known is None:
                    continue
                flags, takes_config = known
                for option in options(args):
                    if option in flags or (takes_config and option[2:] in config_keys()):
                        continue
                    what = "neither one of its own flags nor a config key" if takes_config else "not one of its own flags"
                    bad.append(f"{path.name}:{number}: {option} of {target} is {what}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_every_command_has_a_way_to_run_at_tiny_size(tmp_path):
    """bench/readme_commands.py runs every README command at the tests' size: each one is either listed as not
    runnable on one machine (with what checks it instead) or rewritten with no placeholder left, `tiny` in its
    config sections and no `small` (the bench itself takes ~40 min; this keeps it in step with the README)."""
    bench = _load("bench/readme_commands.py")

    class NoServices:  # URLs only: nothing is started
        def moto(self):
            return "http://127.0.0.1:1"

        def mlflow(self, argv=None):
            return "http://127.0.0.1:2"

    rewrite = bench.Rewriter(tmp_path, tmp_path, {k: tmp_path / "corpus" for k in (
        "~/recordings", "/nfs/corpus", "~/digits", "~/LibriSpeech/train-clean-100", "/data/cv-corpus-17.0/en",
        "/corpus/cv-en")}, NoServices())
    rewrite.runs = {("", name): "0" * 32 for name in bench.RUN_PLACEHOLDERS}
    rows = bench.readme_rows(README.read_text())
    assert len(rows) > 80, "the README's commands were not found"
    bad = []
    for line, command, _ in rows:
        first = command.split("#", 1)[0].strip()
        if any(re.search(pattern, first) for pattern, _, _ in bench.NOT_HERE) or first.startswith(("make ", "mlflow ")):
            continue
        run = rewrite(first)
        left = [w for w in tokens(run) if re.fullmatch(r"[A-Z][A-Z0-9_]*|\.\.\.|~/\S*|/nfs/\S*|s3://BUCKET\S*", w)
                or re.fullmatch(r"\w+=[A-Z]+", w)]
        sections = re.search(r"--configs ([\w ]+)", run)
        if left or (sections and ("tiny" not in sections.group(1).split() or "small" in sections.group(1).split())):
            bad.append(f"README.md:{line}: {command}\n    -> {run}")
    assert not bad, "commands bench/readme_commands.py cannot run at tiny size:\n" + "\n".join(bad)
