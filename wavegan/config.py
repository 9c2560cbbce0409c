"""The WaveGAN's own config keys (`wavegan_*` in config/defaults.yaml), checked before anything is read or written.

The project's loader (runtime/config.py) reads and range-checks them like every key (sizes, counts, rates);
the checks of what only this command needs (betas below 1, the kernel against the stride, a window the critic
can shuffle) live here, and fail the same way: one line naming the key, exit 2.
"""
from __future__ import annotations

from typing import Any, Mapping

from runtime.config import ConfigError

STRIDE = 4  # every layer up- (generator) or downsamples (critic) by this

_BETAS = ("wavegan_beta1", "wavegan_beta2")
MAX_LAYERS = 8  # 4^8 = 65536x upsampling: more would start from less than one sample of a 4 s window


class CommandError(ValueError):
    """Bad input found before training (an unknown run, a checkpoint of another architecture): one line, exit 2."""


def window_samples(conf: Mapping[str, Any]) -> int:
    """Samples per training window and per generated clip: `wavegan_seconds` at the corpus' sample rate."""
    return int(round(float(conf["wavegan_seconds"]) * int(conf["sample_rate"])))


def check_wavegan(conf: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first `wavegan_*` key whose value cannot train (and why)."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"config key '{key}' = {conf[key]!r}: {why}")

    def number(key: str, kind: type) -> float:
        value = conf[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise bad(key, "expected a number" if kind is float else "expected a whole number")
        return value

    for key in _BETAS:
        if not 0 <= number(key, float) < 1:
            raise bad(key, "must lie in [0, 1)")
    if number("wavegan_kernel", int) < STRIDE:
        raise bad("wavegan_kernel", f"must be at least the stride, {STRIDE}")
    if conf["wavegan_layers"] > MAX_LAYERS:
        raise bad("wavegan_layers", f"must be at most {MAX_LAYERS}")
    samples = window_samples(conf)
    if samples < conf["n_fft"]:
        raise bad("wavegan_seconds", f"is {samples} samples at {conf['sample_rate']} Hz; at least one analysis window "
                                     f"(n_fft {conf['n_fft']}) is needed to measure a clip")
    shortest = samples // STRIDE ** (conf["wavegan_layers"] - 1)  # the last signal the critic phase-shuffles
    if conf["wavegan_phase_shuffle"] and conf["wavegan_phase_shuffle"] >= shortest:
        raise bad("wavegan_phase_shuffle", f"must be less than {shortest} samples, the critic's shortest shuffled "
                                           f"signal (wavegan_seconds {conf['wavegan_seconds']}, wavegan_layers "
                                           f"{conf['wavegan_layers']})")
