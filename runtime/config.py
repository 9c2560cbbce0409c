"""One config loader for every command line (tokenizer, generator, learner, launch).

`config/defaults.yaml` holds named sections of flat keys. `--configs a b c` merges the
sections left to right; then `--key value` (or `--key=value`) overrides any key, keeping
the type of its default. Unknown sections and keys are errors naming the nearest known
names, so a typo never silently trains the wrong model.
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "defaults.yaml"

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    """A config problem the user can fix: an unknown key or section, or a bad value."""


class Config(dict):
    """A flat dict of settings with attribute access (`conf.batch_size`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(_unknown_message("config key", name, self.keys())) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict:
        return dict(self)


def _unknown_message(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown {kind} '{name}'{hint}"


def load_sections(path: Path | str = DEFAULT_CONFIG_PATH) -> dict[str, dict]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected named sections, each a mapping of keys")
    if "defaults" not in data:
        raise ConfigError(f"{path}: has no 'defaults' section")
    return data


def merge_sections(sections: dict[str, dict], names: Sequence[str], path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Merge sections in order; every key must already exist in `defaults`."""
    defaults = sections["defaults"]
    conf = Config(defaults)
    for name in names:
        if name not in sections:
            raise ConfigError(f"{path}: " + _unknown_message("config section", name, sections.keys()))
        for key, value in sections[name].items():
            if key not in defaults:
                raise ConfigError(f"{path}: section '{name}': " + _unknown_message("config key", key, defaults.keys()))
            conf[key] = value
    return conf


def coerce(key: str, text: str, default: Any) -> Any:
    """Parse a command-line string into the type of the key's default."""
    try:
        if isinstance(default, bool):
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int):
            value = float(text) if any(c in text for c in ".eE") else int(text)
            if float(value) != int(value):
                raise ValueError("expected a whole number")
            return int(value)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str):
            return text
        value = yaml.safe_load(text)  # None, list or dict defaults: read the text as YAML
        if isinstance(default, list) and not isinstance(value, list):
            value = [v.strip() for v in str(text).split(",")] if "," in text else [value]
        return value
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"--{key} {text!r}: cannot be read as {type(default).__name__} ({e})") from None


def apply_overrides(conf: Config, overrides: Sequence[str]) -> Config:
    """Apply `--key value` / `--key=value` pairs; unknown keys and dangling flags are errors."""
    i = 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--") or len(token) <= 2:
            raise ConfigError(f"unexpected argument {token!r}: overrides are written --key value")
        if "=" in token:
            key, text = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(overrides):
                raise ConfigError(f"--{key} needs a value")
            text = overrides[i + 1]
            i += 2
        key = key.replace("-", "_")
        if key not in conf:
            raise ConfigError(_unknown_message("config key", key, conf.keys()))
        conf[key] = coerce(key, text, conf[key])
    return conf


def load_config(
    configs: Sequence[str] = ("defaults",),
    overrides: Sequence[str] = (),
    path: Path | str = DEFAULT_CONFIG_PATH,
) -> Config:
    sections = load_sections(path)
    conf = merge_sections(sections, list(configs), path)
    conf = apply_overrides(conf, list(overrides))
    conf["configs"] = list(configs)
    return conf


def parse_args(argv: Sequence[str] | None = None, parser=None, path: Path | str = DEFAULT_CONFIG_PATH):
    """Parse `--configs ...` plus overrides. `parser` (argparse) may declare extra flags.

    Returns (conf, args) where args holds the parser's own flags. Errors exit with a
    one-line message (status 2), never a traceback.
    """
    import argparse

    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["defaults"], help="config sections to merge, in order")
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    try:
        conf = load_config(args.configs, rest, path)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return conf, args
