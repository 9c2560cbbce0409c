"""The dream command's settings that are the run's config keys, and where one command's dreams go.

One name per setting: each size of the dreams is a config key of the run (`dream_seconds`, `dream_samples`, ...),
and the option has the key's name (`--dream_seconds`); left out, it is the run's value (its params, and what a resume
changed: runs.run_config), so launch.py's dreams at the end of a run and a later `python -m pydreamer.dream --run RUN`
dream alike. The short names of before (`--seconds`, `--samples`, `--unconditional`, ...) still work, unlisted.

Where the dreams go (`destination`):

* the run's own dreams (`--as_run_dreams`, which launch.py passes at the end of a run): the run's `dreams/` folder
  and artifacts, `listen.html` at the root of its artifacts, the plain `dream/*` metrics;
* any other run of the command, an ad-hoc dream (`--prompt me.mp3`, another temperature, ...): a folder of its own,
  `--out`, by default the run's `dreams/<--name>/` (the name defaults to the time it starts), logged as artifacts
  `dreams/<name>/` and metrics `dreams/<name>/...` (`dreams/<name>/realtime_factor`, ...). It never writes over the
  run's own dreams or their `dream/*` metrics, which `python -m pydreamer.compare` reads.
"""
from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pydreamer.replay_layout import DREAMS
from pydreamer.runs import RunError

# The options whose default is the run's config key: the name the code reads -> the key (the option's name).
CONFIG_DEFAULTS = {"seconds": "dream_seconds", "samples": "dream_samples", "unconditional": "dream_unconditional",
                   "warm": "dream_warm", "test_prompts": "dream_test_prompts", "real_clips": "dream_real_clips",
                   "griffin_lim_iters": "dream_griffin_lim_iters", "vocoder": "vocoder", "seed": "seed",
                   "perceptual": "dream_perceptual", "imagination": "dream_imagination",
                   "end": "dream_end", "guidance": "dream_guidance"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a folder's name and a part of metric names


def add_config_options(p: argparse.ArgumentParser) -> None:
    """`--dream_seconds` ... with the run's value as default, and each old short name as a hidden alias."""
    from runtime.config import choices_of

    flag = argparse.BooleanOptionalAction
    specs = {
        "seconds": dict(type=float, help="seconds imagined per dream"),
        "samples": dict(type=int, help="dreams per prompt"),
        "unconditional": dict(type=int, help="dreams from the initial state"),
        "warm": dict(type=int, help="dreams after a warm-up on real utterances, 0 = none"),
        "test_prompts": dict(type=int, help="without --prompt: utterances of the split to complete"),
        "real_clips": dict(type=int, help="real utterances measured for the acoustic table"),
        "griffin_lim_iters": dict(type=int, help="Griffin-Lim iterations with --vocoder griffinlim (0 too is the "
                                                 "run's)"),
        "vocoder": dict(choices=choices_of("vocoder"), help="log-mel -> wave"),
        "seed": dict(type=int, help="every draw and the real clips drawn"),
        "perceptual": dict(action=flag, help="DNSMOS of every group, PESQ/STOI/ViSQOL of the tokenizer round trip"),
        "imagination": dict(choices=choices_of("dream_imagination"), help="rssm: how a dream goes on"),
        "end": dict(action=flag, help="a dream ends where the world model says its utterance does, silence after"),
        "guidance": dict(type=float, help="conditioned dreams (rssm, transformer): classifier-free guidance scale "
                                          "(1 = as trained, 0 = unconditioned, above 1 = more of the condition)"),
    }
    group = p.add_argument_group("the run's config keys (each left out is the run's own value)")
    for dest, spec in specs.items():
        key = CONFIG_DEFAULTS[dest]
        spec = {**spec, "metavar": key.upper()} if "type" in spec else spec
        group.add_argument(f"--{key}", dest=dest, **{**spec, "help": f"{spec['help']} (default: the run's {key})"})
        if key != dest:
            group.add_argument(f"--{dest}", dest=dest, **{**spec, "help": argparse.SUPPRESS})


def fill_from_config(a: argparse.Namespace, conf) -> argparse.Namespace:
    """Options not given on the command line take the run's config (its dream_* keys): one source of defaults."""
    for option, key in CONFIG_DEFAULTS.items():
        if getattr(a, option) is None or (option == "griffin_lim_iters" and getattr(a, option) == 0):
            setattr(a, option, conf[key])
    return a


def check_args(a: argparse.Namespace) -> None:
    """A RunError (one line, exit 2) naming the first option out of range, before anything is read."""
    positive = {"--dream_seconds": a.seconds, "--prompt_seconds": a.prompt_seconds, "--temperature": a.temperature,
                "--dream_samples": a.samples, "--warmup_seconds": a.warmup_seconds,
                "--interp_seconds": a.interp_seconds}
    for name, value in positive.items():
        if not value > 0:
            raise RunError(f"{name} must be greater than 0, not {value}")
    for name in ("unconditional", "warm", "test_prompts", "real_clips", "griffin_lim_iters", "guidance"):
        if getattr(a, name) < 0:
            raise RunError(f"--{CONFIG_DEFAULTS[name]} must be 0 or more, not {getattr(a, name)}")
    if a.prompt2 and not a.prompt:
        raise RunError("--prompt2 needs a --prompt to interpolate from")
    if a.out and Path(a.out).exists() and not Path(a.out).is_dir():
        raise RunError(f"--out {a.out} is a file; expected a folder")


@dataclass(frozen=True)
class Destination:
    """Where one command's dreams go: the folder, the run's artifact folder, and the name ("" for the run's own)."""

    out: Path
    artifacts: str
    name: str = ""

    def metrics(self, measured: dict[str, float]) -> dict[str, float]:
        """The names they are logged under: the run's own `dream/*` as measured; an ad-hoc dream's every metric
        under `dreams/<name>/` (the tokenizer's round trip too), a namespace the run's own never use."""
        if not self.name:
            return dict(measured)
        return {f"{DREAMS}/{self.name}/{k.removeprefix('dream/')}": v for k, v in measured.items()}


def destination(a: argparse.Namespace, run, store: Path | str) -> Destination:
    """The run's own dreams with `--as_run_dreams`, else a folder and names of this command's own (module
    docstring); a RunError (exit 2) before anything is computed where it would write over the run's own dreams or
    an earlier ad-hoc dream of the same name."""
    from runtime.tracking import local_artifact_dir

    own = (local_artifact_dir(run) or Path(store)) / DREAMS
    if a.as_run_dreams:
        return Destination(Path(a.out) if a.out else own, DREAMS)
    name = a.name or time.strftime("%Y%m%d-%H%M%S")
    if not NAME.fullmatch(name):
        raise RunError(f"--name {name!r}: up to 64 letters, digits, '.', '_' or '-' (it names a folder and metrics)")
    if a.out is None and a.no_log:
        raise RunError("--no_log logs nothing into the run: give --out DIR for the files")
    out = Path(a.out) if a.out else own / name
    if out.resolve() == own.resolve():
        raise RunError(f"--out {a.out} is the run's own dreams folder (launch.py's, with the dream/* metrics): leave "
                       f"--out out (these dreams then go to {own / name}) or give another folder")
    if not a.no_log and any(k.startswith(f"{DREAMS}/{name}/") for k in run.data.metrics):
        raise RunError(f"--name {name}: run {a.run} already has dreams of that name (metrics {DREAMS}/{name}/*); "
                       f"give another --name")
    if a.out is None and out.exists():
        raise RunError(f"{out} already exists: give another --name")
    return Destination(out, f"{DREAMS}/{name}", name)
