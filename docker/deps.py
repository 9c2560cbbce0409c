"""Print the requirements pyproject.toml lists, one a line: `[project] dependencies`, then those of
each extra named with --extra. `make deps` installs exactly these: the one list of dependencies is
pyproject.toml's, and the Docker image can install them in a layer of their own, cached until
pyproject.toml changes, before the project's source is copied in.

    python docker/deps.py [--extra NAME ...] [--only NAME ...] [--pyproject PATH]

`--only torch --only torchaudio`: just those requirements, as pyproject.toml writes them (`make TORCH=cpu`
installs them from PyTorch's own index first, with the same version bounds).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser (tomli)
    from pip._vendor import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _name(requirement: str) -> str:
    """A requirement's project name, normalized (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def requirements(pyproject: Path | str = PYPROJECT, extras: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The dependencies, then each extra's (first occurrence kept; the project itself left out)."""
    data = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))
    project = data["project"]
    optional = project.get("optional-dependencies", {})
    out = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"deps: {pyproject} has no extra '{extra}' (it has: {', '.join(optional) or 'none'})")
        out += [r for r in optional[extra] if r not in out]
    own = _name(project["name"])
    return [r for r in out if _name(r) != own]  # `pkg[other-extra]` self-references need the source


def only(reqs: list[str], names: list[str] | tuple[str, ...]) -> list[str]:
    """The requirements of the named projects, in the list's order; a name the list lacks is an error."""
    wanted = {_name(n) for n in names}
    missing = sorted(wanted - {_name(r) for r in reqs})
    if missing:
        raise SystemExit(f"deps: pyproject.toml requires no {', '.join(missing)}")
    return [r for r in reqs if _name(r) in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deps.py", description=__doc__.split("\n")[0])
    parser.add_argument("--extra", action="append", default=[], help="an optional-dependencies group to add")
    parser.add_argument("--only", action="append", default=[], help="print only this project's requirement")
    parser.add_argument("--pyproject", default=str(PYPROJECT), help="the pyproject.toml to read")
    args = parser.parse_args(argv)
    reqs = requirements(args.pyproject, args.extra)
    if args.only:
        reqs = only(reqs, args.only)
    sys.stdout.write("".join(f"{r}\n" for r in reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
