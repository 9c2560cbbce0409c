"""The code's shape, as a maintainer relies on it: modules and functions small enough to read, packages
that import only downward (runtime <- tokenizer <- envs <- pydreamer <- wavegan, launch.py), no module importing
one above it inside its package, and the world model's kind asked in one place (where it is built)."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "tokenizer", "envs", "pydreamer", "wavegan")
MAX_MODULE_LINES = 400
MAX_LINES = {"pydreamer/train.py": 300}
MAX_FUNCTION_LINES = 80
# Functions allowed past MAX_FUNCTION_LINES, each with the reason (the closing note repeats it).
LONG_FUNCTIONS: dict[str, str] = {}


def _modules(packages=PACKAGES) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_module_is_too_long():
    long = {}
    for path in _modules():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES.get(_rel(path), MAX_MODULE_LINES):
            long[_rel(path)] = n
    assert not long, f"modules over {MAX_MODULE_LINES} lines (pydreamer/train.py: 300): {long}"


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    stack = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child.end_lineno - child.lineno + 1
                stack.append((child, name + "."))


def test_no_function_is_too_long():
    long = {}
    for path in _modules() + [ROOT / "launch.py"]:
        for name, n in _functions(path):
            key = f"{_rel(path)}:{name}"
            if n > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                long[key] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, level) of every import in the module, wherever it sits (functions too)."""
    out = []
    pkg = _rel(path).removesuffix(".py").replace("/", ".").split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [f"{mod}.{a.name}" if not node.module else mod for a in node.names]
                out += [(n, node.level) for n in names]
            else:
                out.append((node.module, 0))
    return out


def test_packages_import_only_downward():
    rank = {pkg: i for i, pkg in enumerate(PACKAGES)}
    wrong = []
    for path in _modules():
        own = _rel(path).split("/")[0]
        for mod, _ in _imports(path):
            top = mod.split(".")[0]
            if top in rank and rank[top] > rank[own]:
                wrong.append(f"{_rel(path)} imports {mod}")
            if _rel(path).startswith("pydreamer/models/") and top in ("tokenizer", "envs"):
                wrong.append(f"{_rel(path)} imports {mod} (the models know no corpus)")
    assert not wrong, "\n".join(wrong)


def _module_graph(package: str) -> dict[str, set[str]]:
    """Inside one package (subpackages apart): module -> the modules of the same folder it imports."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        name = _rel(path).removesuffix(".py").replace("/", ".")
        folder = name.rsplit(".", 1)[0]
        if path.name == "__init__.py" or path.name == "__main__.py":
            continue
        deps = set()
        for mod, _ in _imports(path):
            for cand in (mod, mod.rsplit(".", 1)[0]):
                if cand != name and cand.rsplit(".", 1)[0] == folder and (ROOT / (cand.replace(".", "/") + ".py")).is_file():
                    deps.add(cand)
                    break
        graph[name] = deps
    return graph


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_loop_inside_a_package(package):
    graph = _module_graph(package)
    state: dict[str, int] = {}
    loops = []

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                loops.append(" -> ".join(path[path.index(dep):] + [dep]) if dep in path else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not loops, "import loops:\n" + "\n".join(loops)


def test_the_world_models_kind_is_asked_where_the_model_is_built_only():
    hits = []
    for path in _modules(("pydreamer",)):
        if "/models/" in _rel(path):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.kind\b", line):
                hits.append(f"{_rel(path)}:{i}: {line.strip()}")
    assert len(hits) <= 1, "\n".join(hits)


def test_the_issue_grep_agrees():
    """The acceptance grep as written: `.kind` outside pydreamer/models/ (numpy's dtype.kind included)."""
    out = subprocess.run(r'grep -rn "\.kind\b" pydreamer --include=*.py | grep -v models/',
                         shell=True, cwd=ROOT, capture_output=True, text=True).stdout
    assert len(out.splitlines()) <= 1, out
