"""Distributed learner scaling: 1 rank against N gloo (or NCCL) ranks, alternating, on one replay store.

    python bench/ddp.py --configs defaults audio small --steps 60 --repeats 3
    python bench/ddp.py --configs defaults audio small --ranks 2 --single_threads 2 1

Writes one synthetic store (bench/learner.py's), then runs, `--repeats` times in turn,
`bench/learner.py` as one process with each of `--single_threads` intra-op threads and under
`torchrun --standalone --nproc_per_node N` (one thread per rank unless OMP_NUM_THREADS says
otherwise, capped at cores // N), so that the machine's load drifts over all of them alike.
Prints each run's JSON line, then one summary line per kind: samples (sequence steps) per
second of all ranks together and per rank, data wait, and the N-rank total over the 1-rank one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(cmd: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    return dict(json.loads(line), loadavg_1min=round(os.getloadavg()[0], 2))  # what else ran beside it


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/ddp.py", description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["defaults", "audio", "small"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--single_threads", type=int, nargs="+", default=[2, 1],
                        help="intra-op threads of the 1-rank runs (one run of each per repeat)")
    parser.add_argument("--rank_threads", type=int, default=1, help="OMP_NUM_THREADS of each of the N ranks")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=400)
    args, rest = parser.parse_known_args()
    from bench.learner import synthetic_store
    from runtime.config import load_config

    conf = load_config(args.configs, rest)
    common = ["--configs", *args.configs, *rest, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_store(Path(tmp), args.episodes, conf.codebook_size, conf.tokens_per_step)
        single = [sys.executable, str(ROOT / "bench" / "learner.py"), *common, "--store", tmp]
        several = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(args.ranks), str(ROOT / "bench" / "learner.py"), *common, "--store", tmp]
        for _ in range(args.repeats):
            for t in args.single_threads:
                r = run(single, t)
                results.setdefault(f"1 rank x {t} threads", []).append(r)
                print(json.dumps(r), flush=True)
            r = run(several, args.rank_threads)
            results.setdefault(f"{args.ranks} ranks x {args.rank_threads} threads", []).append(r)
            print(json.dumps(r), flush=True)
    many = f"{args.ranks} ranks x {args.rank_threads} threads"
    total_many = [r["samples_per_sec_total"] for r in results[many]]
    for kind, rs in results.items():
        total = [r["samples_per_sec_total"] for r in rs]
        line = {"kind": kind, "samples_per_sec_total": [round(x) for x in total],
                "median_total": round(statistics.median(total)),
                "median_per_rank": round(statistics.median(r["train_steps_per_sec"] for r in rs)),
                "data_wait_frac": [max(r["data_wait_frac_ranks"]) for r in rs],
                "cpu_frac_ranks": [r["cpu_frac_ranks"] for r in rs],
                "loadavg_1min": [r["loadavg_1min"] for r in rs]}
        if kind != many:  # each repeat's N-rank run against the 1-rank run beside it
            line["ratio_many_over_this"] = [round(m / s, 2) for m, s in zip(total_many, total)]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
