"""World-model ablations: one MLflow run per variant on the same token corpus and budget,
each evaluated on the test split, summed up as the markdown table the README carries.

    python bench/ablations.py --data_dir /tmp/small --mlflow_dir /tmp/abl/mlruns \
        --variant "default=" --variant "ar-head=--token_head autoregressive" [--n_steps 4000]

Every variant is `launch.py --configs defaults audio small --run_name ablation-<name> <its
overrides>` followed by `python -m pydreamer.evaluate` of its best-on-val checkpoint on the
test split. A variant whose run already exists (same run name, finished) is not trained again,
nor evaluated again when its test summary was made the same way, so the table can be rebuilt
after adding one variant. The table is printed and written to
`<mlflow_dir>/ablations.md`.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

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


def run_variant(name: str, overrides: list[str], args) -> dict:
    run_name = f"ablation-{name}"
    run = _finished_run(args.mlflow_dir, run_name)
    if run is None:
        cmd = [sys.executable, "launch.py", "--configs", *args.configs, "--data_dir", args.data_dir,
               "--mlflow_dir", args.mlflow_dir, "--run_name", run_name, "--n_steps", str(args.n_steps), *overrides]
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        run = _finished_run(args.mlflow_dir, run_name)
        if run is None:
            raise SystemExit(f"ablations: run {run_name} did not finish")
    path = Path(run.data.tags["replay_dir"]) / "evaluation" / "test" / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    if (summary.get("samples"), summary.get("checkpoint"), summary.get("cells")) != \
            (args.samples, f"{args.checkpoint}.pt", "every start step"):  # not evaluated this way yet
        cmd = [sys.executable, "-m", "pydreamer.evaluate", "--run", run.info.run_id, "--mlflow_dir", args.mlflow_dir,
               "--samples", str(args.samples), "--checkpoint", args.checkpoint]
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        summary = json.loads(path.read_text())
    return {"name": name, "overrides": " ".join(overrides) or "(defaults)", "run": run.info.run_id,
            "step": summary["step"], "params": run.data.metrics.get("train/model_params"),
            "results": summary["results"]}


def table(rows: list[dict]) -> str:
    head = ["variant", "overrides", "run", "step"] + [f"nll h={h}" for h in HORIZONS] + \
        ["acc h=1", "bigram h=1", "vs bigram h=1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        model, bigram = r["results"]["model"], r["results"]["bigram"]
        cells = [r["name"], f"`{r['overrides']}`", r["run"][:8], str(r["step"])]
        cells += [f"{model['nll'][h - 1]:.3f}" if h <= len(model["nll"]) else "" for h in HORIZONS]
        cells += [f"{model['acc'][0]:.3f}", f"{bigram['nll'][0]:.3f}", f"{model['nll'][0] - bigram['nll'][0]:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]["results"]
    base = ", ".join(f"{n} h=1/5/15 {first[n]['nll'][0]:.3f}/{first[n]['nll'][4]:.3f}/{first[n]['nll'][14]:.3f}"
                     for n in ("unigram", "bigram") if n in first and len(first[n]["nll"]) >= 15)
    return "\n".join(lines) + (f"\n\nBaselines on the same cells (bits per token): {base}." if base else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--mlflow_dir", required=True)
    parser.add_argument("--configs", nargs="+", default=["defaults", "audio", "small"])
    parser.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES, e.g. 'ar=--token_head autoregressive'")
    parser.add_argument("--n_steps", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    args = parser.parse_args(argv)
    rows = []
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        if not name:
            parser.exit(2, f"ablations: error: --variant {spec!r} needs NAME=OVERRIDES\n")
        rows.append(run_variant(name, shlex.split(overrides), args))
    text = table(rows)
    print(text)
    (Path(args.mlflow_dir) / "ablations.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
