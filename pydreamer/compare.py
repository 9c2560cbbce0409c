"""Runs side by side: which objective (or setting) forecasts better, at which horizon, at what cost.

    python -m pydreamer.compare (--runs ID [ID ...] | --experiment NAME) [--out DIR] [--mlflow_dir mlruns]

For each run: its `objective` tag, its family (a world model, or `wavegan`: a run of `python -m wavegan`, a
generator of raw audio that forecasts nothing, so its forecast columns are dashes and its samples fill the dream
columns as dreams from nothing), the config keys whose values differ between the runs, the test
NLL (bits per token) and top-1 accuracy at h = 1, 5, 15 (`test/*`, written by
`python -m pydreamer.evaluate`) beside the best per-position baseline on the same cells, the forecasts
as log-mel (LSD in dB and its margin to the best continuous baseline: the one scale on which a model of
log-mel steps, which has no token NLL, lines up with the token models), a summary
of the dream metrics (`dream/*`, written by `python -m pydreamer.dream` or at the end of
launch.py), grad steps per second, parameters and wall-clock. A metric a run lacks is a dash.
Prints a markdown table and writes it, a CSV of the same rows, and an overlay PNG of NLL against
horizon for every run (the baselines dashed) to --out (default: ./comparison/).

Tokenizer runs (the `component: tokenizer` tag the tokenizer stages put on theirs) are left out: they train no
world model. Runs trained on different token corpora (their tokenizer weights or data_dir differ) are said so in
one line: their NLLs per token are not on one scale.
"""
from __future__ import annotations

import argparse
import csv
import logging
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from pydreamer.runs import RunError, run_command, run_config

SHOW_HORIZONS = (1, 5, 15)
NLL_CURVE = "test/nll_by_horizon"  # evaluate's curve: test NLL against horizon (the horizon is its step)
# Bookkeeping that differs between any two runs and says nothing about what was trained.
NOT_A_SETTING = {"run_name", "resume_id", "replay_dir", "mlflow_dir"}
DASH = "-"
COMPONENT_TAG, TOKENIZER = "component", "tokenizer"  # the tag the tokenizer stages put on their runs
FAMILY_TAG, WAVEGAN = "family", "wavegan"  # the tag `python -m wavegan` puts on its runs (world-model runs have none)
# grad steps per second: the learner's, or a WaveGAN's generator steps (each after its critic steps)
STEPS_PER_SEC = {WAVEGAN: "wavegan/steps_per_sec"}


def _runs_by_id(client, run_ids: Sequence[str], uri: str) -> list:
    from runtime.tracking import find_run

    runs = []
    for run_id in run_ids:
        run = find_run(run_id)
        if run is None:
            raise RunError(f"no MLflow run '{run_id}' in {uri}")
        runs.append(run)
    return runs


def _runs_of_experiment(client, name: str, uri: str) -> list:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise RunError(f"no MLflow experiment '{name}' in {uri}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    if not runs:
        raise RunError(f"MLflow experiment '{name}' in {uri} has no runs")
    return list(runs)


def horizons_of(metrics: dict[str, float], split: str = "test") -> list[int]:
    """The horizons h with a `{split}/nll_h{h}` metric, ascending."""
    pattern = re.compile(rf"^{split}/nll_h(\d+)$")
    return sorted(int(m.group(1)) for m in map(pattern.match, metrics) if m)


def best_baseline(metrics: dict[str, float], h: int, split: str = "test") -> tuple[str, float] | None:
    """(name, NLL) of the baseline with the lowest `{split}/baseline/*/nll_h{h}`; None when there is none."""
    found = [(name, curve[h]) for name, curve in baseline_curves(metrics, split).items() if h in curve]
    return min(found, key=lambda x: x[1]) if found else None


def margin_cell(metrics: dict[str, float], h: int, split: str = "test", measure: str = "") -> str | None:
    """The margin to the best baseline with its 95% interval, e.g. '+0.39 [+0.30, +0.48]'; None without one.
    With `measure` (e.g. 'lsd_h' under 'test/log_mel'): `{split}/margin/{measure}{h}` and its lo/hi."""
    keys = [f"{split}/margin_h{h}", f"{split}/margin_lo_h{h}", f"{split}/margin_hi_h{h}"] if not measure else \
        [f"{split}/{part}/{measure}{h}" for part in ("margin", "margin_lo", "margin_hi")]
    if not all(k in metrics for k in keys):
        return None
    mid, lo, hi = (metrics[k] for k in keys)
    return f"{mid:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def probe_summary(metrics: dict[str, float]) -> dict[str, float]:
    """Every linear probe's test accuracy (`test/probe/<label>/<what>`): latent, token counts, chance."""
    return {f"probe {k.split('/')[2]} {k.split('/')[3]}": v for k, v in sorted(metrics.items())
            if re.match(r"^test/probe/[^/]+/[^/]+$", k)}


def dream_summary(metrics: dict[str, float]) -> dict[str, float]:
    """A few numbers for the dreams: the mean KS statistic of the acoustic metrics per dream group (0 = the
    dreams' distribution matches real speech), the completion's LSD at its first window, the real-time factor,
    DNSMOS OVRL per group and the tokenizer round trip's PESQ-WB and STOI where the dreams measured them."""
    out: dict[str, float] = {}
    ks: dict[str, list[float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "dream" and parts[3] == "ks_stat":
            ks.setdefault(parts[1], []).append(value)
    for group, values in sorted(ks.items()):
        out[f"dream {group} mean KS"] = statistics.fmean(values)
    lsd = sorted((k for k in metrics if re.match(r"^dream/completion/own/lsd_h[\d.]+s$", k)),
                 key=lambda k: float(k.rsplit("_h", 1)[1][:-1]))
    lsd = [k for k in lsd if k.endswith("_h0.5s")] or lsd  # the window every corpus but short clips has
    if lsd:
        out[f"dream completion LSD dB @{lsd[0].rsplit('_h', 1)[1]}"] = metrics[lsd[0]]
    if "dream/realtime_factor" in metrics:
        out["dream realtime factor"] = metrics["dream/realtime_factor"]
    for key in sorted(k for k in metrics if re.match(r"^dream/condition/[^/]+/acc$", k)):  # conditioned dreams
        label = key.split("/")[2]
        out[f"dream {label} heard as its condition (chance)"] = (
            f"{metrics[key]:.3f} ({metrics.get(f'dream/condition/{label}/chance', float('nan')):.3f})")
    for group in ("real", "tokenizer", "unconditional", "completion"):  # perceived quality (dream --perceptual)
        if f"dream/{group}/dnsmos_ovrl" in metrics:
            out[f"DNSMOS OVRL {group}"] = metrics[f"dream/{group}/dnsmos_ovrl"]
    for name in ("pesq_wb", "stoi"):
        if f"tokenizer/roundtrip/{name}" in metrics:
            out[f"tokenizer round trip {name}"] = metrics[f"tokenizer/roundtrip/{name}"]
    return out


def without_tokenizer_runs(runs: list) -> tuple[list, int]:
    """(the runs that trained a model, how many tokenizer runs were left out)."""
    kept = [r for r in runs if r.data.tags.get(COMPONENT_TAG) != TOKENIZER]
    return kept, len(runs) - len(kept)


def corpus_note(runs: list) -> str:
    """One line when the runs were trained on different token corpora (their tokenizer's weights, or else their
    data_dir, differ): their NLLs per token are not on one scale. '' when they share one."""
    from pydreamer.runs import LEGACY_SHA_TAG, SHA_TAG

    weights = {r.data.tags.get(SHA_TAG) or r.data.tags.get(LEGACY_SHA_TAG) for r in runs} - {None}
    folders = {r.data.params.get("data_dir") for r in runs} - {None}
    if len(weights) < 2 and len(folders) < 2:
        return ""
    what = (f"{len(weights)} tokenizers (weights {', '.join(sorted(w[:8] for w in weights))})" if len(weights) > 1
            else f"{len(folders)} data folders ({', '.join(sorted(folders))})")
    return (f"compare: note: these runs were trained on different token corpora, {what}: their NLLs per token are "
            "not on one scale (the log-mel LSD columns are)")


def differing_keys(configs: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every run (bookkeeping keys left out)."""
    keys = sorted(set().union(*configs)) if configs else []
    return [k for k in keys if k not in NOT_A_SETTING and len({str(c.get(k, DASH)) for c in configs}) > 1]


def run_rows(client, runs: list) -> tuple[list[str], list[dict[str, Any]], dict[str, dict[int, float]],
                                         dict[str, dict[int, float]]]:
    """(column names, one row per run, each run's test NLL per horizon and the baselines' for the plot)."""
    configs = [run_config(r) for r in runs]
    differ = differing_keys(configs)
    rows, curves, dream_cols, baselines = [], {}, [], {}
    for run, conf in zip(runs, configs):
        m = run.data.metrics
        rid = run.info.run_id
        family = run.data.tags.get(FAMILY_TAG, "world model")
        row: dict[str, Any] = {"run": rid[:8], "name": run.info.run_name or DASH,
                               "objective": run.data.tags.get("objective", conf.get("wm_objective", DASH)),
                               "family": family}
        row.update({k: str(conf.get(k, DASH)) for k in differ})  # as configured, not rounded
        for h in SHOW_HORIZONS:
            row[f"nll h={h}"] = m.get(f"test/nll_h{h}")
            row[f"acc h={h}"] = m.get(f"test/acc_h{h}")
            base = best_baseline(m, h)
            row[f"best baseline h={h}"] = f"{base[0]} {base[1]:.3f}" if base else None
            row[f"margin h={h}"] = margin_cell(m, h)
            row[f"voiced nll h={h}"] = m.get(f"test/voiced/nll_h{h}")
            row[f"voiced margin h={h}"] = margin_cell(m, h, "test/voiced")
        for h in SHOW_HORIZONS:  # every world model on one scale: its forecasts as log-mel (log_mel.py)
            row[f"log-mel LSD dB h={h}"] = m.get(f"test/log_mel/lsd_h{h}")
            row[f"LSD margin h={h}"] = margin_cell(m, h, "test/log_mel", "lsd_h")
        row["mel nll h=1"] = m.get("test/mel_nll_h1")
        extra = {**probe_summary(m), **dream_summary(m)}
        dream_cols += [k for k in extra if k not in dream_cols]
        row.update(extra)
        history = client.get_metric_history(rid, STEPS_PER_SEC.get(family, "train/grad_steps_per_sec"))
        row["grad steps/s"] = statistics.fmean(x.value for x in history) if history else None
        row["parameters"] = int(m["train/model_params"]) if "train/model_params" in m else None
        end = run.info.end_time
        row["wall-clock min"] = (end - run.info.start_time) / 60000 if end and run.info.start_time else None
        rows.append(row)
        curves[f"{rid[:8]} ({row['objective']})"] = {h: m[f"test/nll_h{h}"] for h in horizons_of(m)}
        if not baselines:  # the first run's: runs on the same data share them
            baselines = baseline_curves(m)
    columns = (["run", "name", "objective", "family", *differ]
               + [f"{q} h={h}" for h in SHOW_HORIZONS
                  for q in ("nll", "acc", "best baseline", "margin", "voiced nll", "voiced margin")]
               + [f"{q} h={h}" for h in SHOW_HORIZONS for q in ("log-mel LSD dB", "LSD margin")] + ["mel nll h=1"]
               + dream_cols + ["grad steps/s", "parameters", "wall-clock min"])
    return columns, rows, curves, baselines


def baseline_curves(metrics: dict[str, float], split: str = "test") -> dict[str, dict[int, float]]:
    """{baseline name: {h: NLL}} from a run's `{split}/baseline/{name}/nll_h{h}` metrics."""
    out: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        m = re.match(rf"^{split}/baseline/(.+)/nll_h(\d+)$", key)
        if m:
            out.setdefault(m.group(1), {})[int(m.group(2))] = value
    return out


def _cell(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "/") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[_cell(r.get(c)) for c in columns] for r in rows])


def plot(path: Path, curves: dict[str, dict[int, float]], baselines: dict[str, dict[int, float]], title: str) -> None:
    """NLL against horizon: every run solid, the first run's baselines dashed grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, baseline in sorted(baselines.items()):
        if baseline:
            hs = sorted(baseline)
            ax.plot(hs, [baseline[h] for h in hs], ls="--", lw=1, color="0.6")
            ax.annotate(name, (hs[-1], baseline[hs[-1]]), fontsize=7, color="0.4")
    for name, curve in curves.items():
        if curve:
            hs = sorted(curve)
            ax.plot(hs, [curve[h] for h in hs], lw=2, marker="o", ms=3, label=name)
    ax.set(xlabel="horizon (steps)", ylabel="test NLL (bits per token)", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pydreamer.compare", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--runs", nargs="+", metavar="ID", help="MLflow run ids of launch.py runs")
    which.add_argument("--experiment", help="every run of this MLflow experiment")
    parser.add_argument("--out", default="comparison", help="folder for comparison.md/.csv/.png (default: ./comparison)")
    parser.add_argument("--mlflow_dir", default="mlruns", help="the local tracking store (MLFLOW_TRACKING_URI wins)")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return run_command(parser, _main, argv, log_steps=False)


def _main(args) -> int:
    import mlflow

    from runtime.tracking import metric_url, tracking_uri, ui_hint

    uri = tracking_uri({"mlflow_dir": args.mlflow_dir})
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = _runs_by_id(client, args.runs, uri) if args.runs else _runs_of_experiment(client, args.experiment, uri)
    runs, tokenizer_runs = without_tokenizer_runs(runs)
    if not runs:
        raise RunError(f"only tokenizer runs ({tokenizer_runs}) to compare: give the runs of launch.py")
    columns, rows, curves, baselines = run_rows(client, runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(columns, rows)
    note = ("NLL in bits per token (lower is better), accuracy top-1, on the test split; 'best baseline' is the "
            "lowest-NLL baseline on the same cells, 'margin' its NLL minus the model's with a 95% bootstrap interval "
            "over utterances (positive: the model wins); 'voiced': only the cells whose target step is voiced. "
            "A dash: the run has no such metric "
            "(run python -m pydreamer.evaluate / pydreamer.dream on it). Family wavegan: a WaveGAN "
            "(python -m wavegan), not a world model: no forecasts; its samples are scored as dreams from nothing, "
            "against real clips of its own length, with no vocoder; its grad steps/s are generator steps.")
    (out / "comparison.md").write_text(table + "\n\n" + note + "\n")
    write_csv(out / "comparison.csv", columns, rows)
    plot(out / "comparison.png", curves, baselines, f"{len(runs)} runs: test NLL against horizon")
    print(table)
    print(f"\n{note}\ncompare: {len(runs)} runs -> {out.resolve()}/comparison.md, comparison.csv, comparison.png")
    if tokenizer_runs:
        print(f"compare: left out {tokenizer_runs} tokenizer run{'s' * (tokenizer_runs > 1)} (they train no world model)")
    if corpus_note(runs):
        print(corpus_note(runs))
    print(f"compare: the runs in MLflow: {ui_hint(uri, runs[0].info.experiment_id)}; their test NLL against horizon "
          f"overlaid: {metric_url(uri, [r.info.experiment_id for r in runs], [r.info.run_id for r in runs], NLL_CURVE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
