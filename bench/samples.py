"""How many imagined futures a forecast needs: the test NLL per horizon at S = 4, 8, ..., and what doubling S changes.

    python bench/samples.py --run RUN_ID [--mlflow_dir mlruns] [--split val] [--samples 4 8 16 32 64] [--threads 2]

The forecast of a token at t+h is the mean probability over S imagined futures, a Monte-Carlo
estimate whose NLL is biased upwards for small S (the log of a mean of few draws). A fair
comparison with the baselines needs S large enough that doubling it changes the NLL by less than
0.01 bits at every horizon. Prints one JSON line: the NLL per S and horizon, the largest change per
doubling, and the smallest S that meets the 0.01-bit rule (null when none of those tried does).
Decided on val by default (choices are made on val; test is reported once).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOLERANCE = 0.01  # bits per token


class _NoBaselines:
    names: tuple[str, ...] = ()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--mlflow_dir", default="mlruns")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--samples", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--horizons", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    from pydreamer.forecast import evaluate_split
    from pydreamer.margins import curves
    from pydreamer.runs import load_model, open_run, run_checkpoint
    from runtime.processes import set_torch_threads
    from runtime.tracking import local_replay_dir
    from tokenizer.bucket import local_data_dir
    from tokenizer.layout import DataLayout
    from tokenizer.tokens import TokenSplit, read_token_spec

    set_torch_threads(args.threads)
    run, conf = open_run(args.run, args.mlflow_dir)
    _, ckpt = run_checkpoint(run, conf, "best", local_replay_dir(args.mlflow_dir, args.run))
    layout = DataLayout.of(local_data_dir(conf["data_dir"]))
    spec = read_token_spec(layout, conf["codebook_size"])
    tokens = [u["tokens"] for u in TokenSplit(layout, args.split, spec) if len(u["tokens"]) >= 2]
    model, step = load_model(ckpt, conf, spec.codebook_size, spec.tokens_per_step, torch.device("cpu"))
    nll, seconds = {}, {}
    for s in sorted(args.samples):
        t0 = time.time()
        sums = evaluate_split(model, tokens, _NoBaselines(), args.horizons, s, 0, args.seed, torch.device("cpu"))
        nll[s] = curves(sums)["model"]["nll"]
        seconds[s] = time.time() - t0
    ss = sorted(nll)
    change = {f"{a}->{b}": float(np.max(np.abs(nll[b] - nll[a]))) for a, b in zip(ss, ss[1:]) if b == 2 * a}
    enough = next((int(k.split("->")[0]) for k, v in change.items() if v < TOLERANCE), None)
    print(json.dumps({"run": args.run, "world_model": conf["world_model"], "step": step, "split": args.split,
                      "utterances": len(tokens), "nll": {s: [round(float(x), 4) for x in nll[s]] for s in ss},
                      "max_change_per_doubling": change, "enough_samples": enough,
                      "seconds": {s: round(seconds[s], 1) for s in ss}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
