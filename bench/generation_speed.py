"""How fast each world model imagines tokens: real-time factor of dreams, parallel (maskgit) vs step by step.

    python bench/generation_speed.py [--configs defaults audio small] [--seconds 4] [--samples 8] [--repeats 3]
        [--model rssm= --model transformer=--world_model transformer --model maskgit=--world_model maskgit ...]

Each `--model NAME=OVERRIDES` is a world model built from the configs plus its overrides (a codebook of
`codebook_size` x `tokens_per_step`, random weights: speed does not depend on what the weights learned). Each
imagines `--samples` dreams of `--seconds` from nothing (`imagine`: the tokens, or the log-mel steps of
`mel_rssm`; no VQ-VAE decoder or vocoder),
the models taking turns (A, B, C, A, B, C, ...) so that a slower or faster moment of the machine falls on all of
them; the table gives each one's parameters, median seconds and real-time factor (seconds of compute per second
of audio imagined, all samples counted) and its speed relative to the first model. The default list holds a
Transformer with as many layers as the masked decoder's trunk plus block model, so there is a comparison at
(about) equal parameters.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = ("rssm=", "transformer=--world_model transformer",
                  "transformer-4-layers=--world_model transformer --transformer_layers 4",
                  "maskgit=--world_model maskgit",
                  "maskgit-4-iterations=--world_model maskgit --maskgit_iterations 4",
                  "mel_rssm=--observation mel --world_model mel_rssm --unimix 0.01")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/generation_speed.py", description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["defaults", "audio", "small"])
    p.add_argument("--model", action="append", default=[], metavar="NAME=OVERRIDES")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    from pydreamer.models.dreamer import Dreamer
    from runtime.config import load_config
    from runtime.processes import set_torch_threads

    set_torch_threads(args.threads)
    models = {}
    for spec in args.model or DEFAULT_MODELS:
        name, _, overrides = spec.partition("=")
        conf = load_config(args.configs, shlex.split(overrides))
        torch.manual_seed(0)
        models[name] = (conf, Dreamer(conf, conf["codebook_size"], conf["tokens_per_step"], 1).eval())
    conf = next(iter(models.values()))[0]
    steps_per_second = conf["sample_rate"] / conf["hop_length"] / conf["time_downsample"]
    n_steps = int(round(args.seconds * steps_per_second))
    audio = n_steps / steps_per_second * args.samples
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, (_, model) in models.items():
            start = time.perf_counter()
            model.wm.imagine(model.wm.as_observation(None), n_steps, args.samples, 1.0, seed=r)
            if r:
                times[name].append(time.perf_counter() - start)
    first = statistics.median(next(iter(times.values())))
    print(f"{args.samples} dreams of {args.seconds:g} s from nothing ({n_steps} steps), {args.threads} thread(s), "
          f"median of {args.repeats} alternating rounds; configs {' '.join(args.configs)}\n")
    print("| world model | parameters | seconds | real-time factor | speed vs first |")
    print("|---|---|---|---|---|")
    for name, (_, model) in models.items():
        t = statistics.median(times[name])
        params = sum(p.numel() for p in model.wm.parameters())
        print(f"| {name} | {params / 1e6:.2f} M | {t:.2f} | {t / audio:.4f} | {first / t:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
