"""The dream targets of a trained run: real-time factor, acoustic table, completion distance vs a random prompt.

    python bench/dreams.py --run RUN_ID [--mlflow_dir mlruns] [--out /tmp/bench-dreams] [--threads 2]

Runs `python -m pydreamer.dream` with the sizes the targets are stated for (4 s dreams, 16 from the
initial state, 8 after a warm-up, 8 test completions x 2 dreams, 32 real test clips, 32 Griffin-Lim
iterations; nothing logged into the run) and prints one JSON line with what the targets ask:

* `realtime_factor` (generation + Griffin-Lim seconds / audio seconds; target <= 0.5 on 2 CPU cores);
* per acoustic metric, the unconditional dreams' median relative to real test speech (target within
  +-20%) and the KS statistic and p-value;
* the completions' log-spectral distance to their true continuation over the first 0.5 s of horizon,
  beside that of another test prompt's dream heard at this prompt's level (target: lower), another
  prompt's completion as is, another utterance's true continuation, and the tokenizer's own floor.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--mlflow_dir", default="mlruns")
    p.add_argument("--out", default="/tmp/bench-dreams")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from pydreamer import dream
    from runtime.processes import set_torch_threads

    set_torch_threads(args.threads)
    code = dream.main(["--run", args.run, "--out", args.out, "--mlflow_dir", args.mlflow_dir, "--seconds", "4",
                       "--samples", "2", "--unconditional", "16", "--warm", "8", "--test_prompts", "8",
                       "--real_clips", "32", "--griffin_lim_iters", "32", "--seed", str(args.seed), "--no_log"])
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    rows = {r["metric"]: r for r in summary["acoustics"].get("unconditional", [])}
    dist = summary["completion_distance_by_horizon"]
    first = {k: round(v["lsd"][0], 3) for k, v in dist.items()}
    result = {
        "run": args.run, "world_model": summary["world_model"], "step": summary["step"],
        "realtime_factor": round(summary["realtime_factor"], 4), "threads": args.threads,
        "unconditional_rel_diff": {m: round(r["relative_difference"], 4) for m, r in rows.items()},
        "within_20pct": sorted(m for m, r in rows.items() if abs(r["relative_difference"]) <= 0.2),
        "ks": {m: [round(r["ks_statistic"], 3), float(f"{r['ks_pvalue']:.3g}")] for m, r in rows.items()},
        "lsd_first_window_s": dist["own"]["end_s"][0] if dist else None,
        "lsd_first_window": first,
        "completion_target_met": bool(dist) and first["own"] < first["swapped"],
    }
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
