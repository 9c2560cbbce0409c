"""World-model ablations: MLflow runs per variant and seed on the same token corpus and budget,
each evaluated on one split, summed up as the markdown table the README carries.

    python bench/ablations.py --data_dir /tmp/small --mlflow_dir /tmp/abl/mlruns --seeds 3 --split val \
        --variant "default=" --variant "ar-head=--token_head autoregressive" [--n_steps 4000]

Every variant and seed is `launch.py --configs defaults audio small --run_name ablation-<name>-s<seed>
--seed <seed> <its overrides>` followed by `python -m pydreamer.evaluate --split <split>` of its
best-on-val checkpoint (seed 0 for its draws and start steps, so every run is scored on the same cells;
`--samples 0`: each world model's fair number of samples). Decide on `--split val` (defaults, ablation winners); report `--split test`
once, at the end. Per variant and horizon the table gives the mean NLL over seeds with a 95%
t-interval, and the difference to the first variant with a Welch 95% interval: where it covers 0 the
two are "not distinguishable". A run that already exists (same run name, finished) is not trained
again, nor evaluated again when its summary was made the same way, so the table can be rebuilt after
adding a variant or a seed. The table is printed and written to `<mlflow_dir>/ablations-<split>.md`.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HORIZONS = (1, 5, 15)


def _finished_run(mlflow_dir: str, run_name: str):
    import mlflow

    from runtime.tracking import setup_mlflow

    setup_mlflow({"mlflow_dir": mlflow_dir, "experiment": "audio-world-model"})
    runs = mlflow.search_runs(filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED'",
                              output_format="list", order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def run_variant(name: str, overrides: list[str], seed: int, args) -> dict:
    run_name = f"ablation-{name}-s{seed}"
    run = _finished_run(args.mlflow_dir, run_name)
    if run is None:
        cmd = [sys.executable, "launch.py", "--configs", *args.configs, "--data_dir", args.data_dir,
               "--mlflow_dir", args.mlflow_dir, "--run_name", run_name, "--n_steps", str(args.n_steps),
               "--seed", str(seed), "--evaluate_at_end", "false", "--dream_at_end", "false", *overrides]
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        run = _finished_run(args.mlflow_dir, run_name)
        if run is None:
            raise SystemExit(f"ablations: run {run_name} did not finish")
    path = Path(run.data.tags["replay_dir"]) / "evaluation" / args.split / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    cells = "every start step" if args.starts_per_utterance <= 0 else \
        f"{args.starts_per_utterance} seeded start steps per utterance (seed 0)"
    scored = "all" in summary or summary.get("observes") == "mel"  # a log-mel model has no token scores
    if (summary.get("samples"), summary.get("checkpoint"), summary.get("cells"), scored) != \
            (args.samples or summary.get("fair_samples"), f"{args.checkpoint}.pt", cells, True):  # not evaluated so yet
        cmd = [sys.executable, "-m", "pydreamer.evaluate", "--run", run.info.run_id, "--mlflow_dir", args.mlflow_dir,
               "--samples", str(args.samples), "--checkpoint", args.checkpoint, "--split", args.split,
               "--starts_per_utterance", str(args.starts_per_utterance), "--seed", "0", "--no_probes"]
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        summary = json.loads(path.read_text())
    tokens = summary.get("all")
    return {"name": name, "overrides": " ".join(overrides) or "(defaults)", "run": run.info.run_id, "seed": seed,
            "step": summary["step"], "results": tokens["results"] if tokens else None,
            "best": tokens["best_baseline"] if tokens else None, "margin": tokens["margin"]["margin"] if tokens else None,
            "log_mel": summary.get("log_mel"), "seconds": summary.get("seconds")}


def t_interval(x: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval of a few seeds' values (NaN half-width for one seed)."""
    from scipy import stats

    x = np.asarray(x, float)
    if len(x) < 2:
        return float(x.mean()), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Difference of means (a - b) and the half-width of its Welch 95% interval."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float(a.mean() - b.mean()), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / max(va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1), 1e-300)
    return float(a.mean() - b.mean()), float(stats.t.ppf(0.975, dof) * np.sqrt(va + vb))


def _pm(mean: float, half: float, sign: bool = False) -> str:
    m = f"{mean:+.3f}" if sign else f"{mean:.3f}"
    return m if not np.isfinite(half) else f"{m} ± {half:.3f}"


def table(rows: list[dict], split: str) -> str:
    """One line per variant: mean NLL ± 95% CI over seeds, the margin to the best baseline, the difference
    to the first variant (and whether it is distinguishable); variants with no tokens (a log-mel model) are
    left to `log_mel_table`."""
    rows = [r for r in rows if r["results"] is not None]
    if not rows:
        return ""
    variants = list(dict.fromkeys(r["name"] for r in rows))
    by = {v: [r for r in rows if r["name"] == v] for v in variants}
    nll = {v: np.array([r["results"]["model"]["nll"] for r in by[v]]) for v in variants}  # [seeds, H]
    H = nll[variants[0]].shape[1]
    hs = [h for h in HORIZONS if h <= H]
    head = ["variant", "overrides", "seeds"] + [f"{split} nll h={h}" for h in hs] + \
        [f"margin to best h={h}" for h in hs] + [f"vs {variants[0]} h={h}" for h in hs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        margins = np.array([r["margin"] for r in by[v]])
        cells = [v, f"`{by[v][0]['overrides']}`", str(len(by[v]))]
        cells += [_pm(*t_interval(nll[v][:, h - 1])) for h in hs]
        cells += [_pm(*t_interval(margins[:, h - 1]), sign=True) for h in hs]
        for h in hs:
            if v == variants[0]:
                cells.append("")
                continue
            d, half = welch(nll[v][:, h - 1], nll[variants[0]][:, h - 1])
            verdict = "" if not np.isfinite(half) else (" (not distinguishable)" if abs(d) <= half else "")
            cells.append(_pm(d, half, sign=True) + verdict)
        lines.append("| " + " | ".join(cells) + " |")
    first = by[variants[0]][0]
    base = "; ".join(f"h={h}: {first['best'][h - 1]} {first['results'][first['best'][h - 1]]['nll'][h - 1]:.3f}"
                     for h in hs if first["best"][h - 1])
    return "\n".join(lines) + f"\n\nBest baseline on the same cells (bits per token, {split} split): {base}."


def log_mel_table(rows: list[dict], split: str) -> str:
    """Every variant on one scale (its forecasts as log-mel, `pydreamer/log_mel.py`): LSD in dB ± 95% CI over seeds
    and its margin to the best continuous baseline, whatever the model observes."""
    rows = [r for r in rows if r["log_mel"]]
    if not rows:
        return ""
    variants = list(dict.fromkeys(r["name"] for r in rows))
    by = {v: [r for r in rows if r["name"] == v] for v in variants}
    H = len(rows[0]["log_mel"]["horizons"])
    hs = [h for h in HORIZONS if h <= H]
    head = ["variant", "seeds"] + [f"{split} LSD dB h={h}" for h in hs] + [f"LSD margin to best h={h}" for h in hs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        lsd = np.array([r["log_mel"]["lsd"]["mean"]["model"] for r in by[v]])
        margin = np.array([r["log_mel"]["lsd"]["margin"] for r in by[v]])
        lines.append("| " + " | ".join([v, str(len(by[v]))] + [_pm(*t_interval(lsd[:, h - 1])) for h in hs]
                                      + [_pm(*t_interval(margin[:, h - 1]), sign=True) for h in hs]) + " |")
    first = rows[0]["log_mel"]["lsd"]
    for name in list(first["mean"]):
        if name not in ("model", "most_probable_tokens"):  # the baselines and the tokenizer's floor, not a model's own
            lines.append("| " + " | ".join([f"{name} (same cells)", ""] + [f"{first['mean'][name][h - 1]:.3f}" for h in hs]
                                          + [""] * len(hs)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--mlflow_dir", required=True)
    parser.add_argument("--configs", nargs="+", default=["defaults", "audio", "small"])
    parser.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES, e.g. 'ar=--token_head autoregressive'")
    parser.add_argument("--n_steps", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=0, help="0 = each world model's fair_samples")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--starts_per_utterance", type=int, default=0,
                        help="0 = every start step; else that many seeded ones per utterance (the same cells for all)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant, seeds 0..N-1")
    parser.add_argument("--split", default="val", choices=("val", "test"),
                        help="val to decide; test once, at the end")
    args = parser.parse_args(argv)
    variants = []
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        if not name:
            parser.exit(2, f"ablations: error: --variant {spec!r} needs NAME=OVERRIDES\n")
        variants.append((name, shlex.split(overrides)))
    if args.seeds < 1:
        parser.exit(2, "ablations: error: --seeds must be at least 1\n")
    rows = [run_variant(name, overrides, seed, args) for seed in range(args.seeds) for name, overrides in variants]
    text = "\n\n".join(t for t in (table(rows, args.split), log_mel_table(rows, args.split)) if t)
    print(text)
    (Path(args.mlflow_dir) / f"ablations-{args.split}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
