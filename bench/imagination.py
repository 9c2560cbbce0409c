"""Does the world model imagine speech? The tables of the README's evaluation section, from run ids.

    python bench/imagination.py --mlflow_dir M --group "rssm=ID0,ID1,ID2" [--group "other=..."]
        [--split test] [--redream 24 [--imagination tokens] [--temperature T] [--end]] [--ba_ta] [--out bench-out/imagination]

Per group of runs (one per seed, same recipe), four tables, each against its target:

1. forecasts: NLL at h = 1, 5, 15 beside the best baseline on the same cells, the margin (mean over seeds
   with a 95% t-interval) and how many seeds have a 95% bootstrap interval of the margin above zero, on all
   cells and on voiced cells (`evaluation/<split>/summary.json` of each run; `python -m pydreamer.evaluate`
   first where it is missing);
2. completions: log-spectral distance of the model's completion to the true continuation at 0.5, 1 and 2 s,
   beside another prompt's dream heard at this prompt's level (target: 1.5 dB below it);
3. structure: for dreams from nothing and for completions, the relative difference of each median from the
   real test clips' (target: within +-20%, RMS aside), the KS statistic, the fraction of silent dreams and,
   where dreams may end (`dream_end`), how many the world model ended and their median length;
   first the real clips through the tokenizer (perfect tokens), the floor no world model can go below;
4. rhythm: the fraction of completions of rhythmic test prompts that keep the prompt's period, beside
   another prompt's completions.

Tables 2-4 read the run's `dreams/summary.json` (what launch.py wrote at the end of the run), or with
`--redream N` a fresh `python -m pydreamer.dream --test_prompts N` into `--out` (more prompts, so more
rhythmic ones; nothing logged into the run), with `--imagination`, `--temperature` and `--end` when given (the
forecast table is the run's own evaluation, made with its `evaluate_imagination`). `--ba_ta` synthesizes "ba ta ba ta ..." with the project's
eSpeak corpus code in a voice of the test split (none of whose timbres is in train) and completes it with
the first run of each group: `--out/<group>-ba-ta/` holds the PNG and wavs; the table says how many
completions keep its period. The markdown is printed and written to `--out/imagination-<split>.md`.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HORIZONS = (1, 5, 15)
FORECAST_TARGET = {1: 0.3, 5: 0.15, 15: 0.15}  # bits/token below the best baseline
COMPLETION_WINDOWS_S = (0.5, 1.0, 2.0)  # the ends of the 0.5 s horizon windows the target names

BA_TA = "ba ta ba ta ba ta ba ta ba ta ba ta ba ta ba ta"


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan with one value)."""
    from scipy import stats

    x = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def fmt(mean: float, half: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:+.{digits}f}" + (f" ± {half:.{digits}f}" if np.isfinite(half) else "")


def _run(mlflow_dir: str, run_id: str):
    """The run, read by a client of its own store (MLflow's global tracking URI holds one store per process, and
    bench/conditioning.py reads two)."""
    import mlflow

    from runtime.tracking import tracking_uri

    return mlflow.MlflowClient(tracking_uri({"mlflow_dir": mlflow_dir})).get_run(run_id)


def evaluation_summary(mlflow_dir: str, run_id: str, split: str) -> dict:
    """The run's evaluation of `split` (made first, as the run's config says, where it is missing)."""
    path = Path(_run(mlflow_dir, run_id).data.tags["replay_dir"]) / "evaluation" / split / "summary.json"
    if not path.exists():
        cmd = [sys.executable, "-m", "pydreamer.evaluate", "--run", run_id, "--split", split, "--mlflow_dir", mlflow_dir]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads(path.read_text())


def dream_options(a: argparse.Namespace) -> tuple[list[str], str]:
    """The dream command's sampling options given to this script, and a folder-name tag for them."""
    opts = (["--imagination", a.imagination] if a.imagination else []) + \
        (["--temperature", str(a.temperature)] if a.temperature else []) + \
        ([] if a.end is None else ["--end" if a.end else "--no-end"])
    return opts, "".join(f"-{x.lstrip('-')[:4]}" for x in opts)


def dream_summary(mlflow_dir: str, run_id: str, redream: int, out: Path, split: str,
                  options: tuple[list[str], str] = ([], "")) -> dict:
    """The run's own dreams, or (`redream` > 0) a fresh dream command with that many test prompts."""
    if redream <= 0:
        path = Path(_run(mlflow_dir, run_id).data.tags["replay_dir"]) / "dreams" / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}
    folder = out / f"dreams-{run_id[:8]}-{split}-{redream}{options[1]}"
    if not (folder / "summary.json").exists():
        cmd = [sys.executable, "-m", "pydreamer.dream", "--run", run_id, "--out", str(folder), "--mlflow_dir",
               mlflow_dir, "--split", split, "--test_prompts", str(redream), "--no_log", *options[0]]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads((folder / "summary.json").read_text())


# ---- the four tables ----------------------------------------------------------------------------

def forecast_table(groups: dict[str, list[dict]]) -> str:
    lines = ["| world model | cells | h | NLL (bits/token) | best baseline | margin, 95% t over seeds | seeds with "
             "bootstrap CI > 0 | target | met |", "|---|---|---|---|---|---|---|---|---|"]
    for name, summaries in groups.items():
        if not all("all" in s for s in summaries):  # a model of log-mel steps: no token forecasts (see log_mel.py)
            lines.append(f"| {name} | - | - | - (no tokens: scored as log-mel) | | | | | |")
            continue
        for part in ("all", "voiced"):
            for h in HORIZONS:
                i = h - 1
                nll = [s[part]["results"]["model"]["nll"][i] for s in summaries]
                best = [s[part]["results"][s[part]["best_baseline"][i]]["nll"][i] if s[part]["best_baseline"][i]
                        else math.nan for s in summaries]
                names = sorted({s[part]["best_baseline"][i] for s in summaries if s[part]["best_baseline"][i]})
                margins = [s[part]["margin"]["margin"][i] for s in summaries]
                above = sum(s[part]["margin"]["lo"][i] > 0 for s in summaries)
                m, half = t_interval(margins)
                met = np.isfinite(m) and m >= FORECAST_TARGET[h] and above == len(summaries)
                lines.append(f"| {name} | {part} | {h} | {np.mean(nll):.3f} | {np.nanmean(best):.3f} "
                             f"({', '.join(names)}) | {fmt(m, half)} | {above} of {len(summaries)} | "
                             f">= {FORECAST_TARGET[h]:.2f} | {'met' if met else 'missed'} |")
    return "\n".join(lines) + "\n"


def _window(horizons: dict, kind: str, end_s: float) -> float:
    r = horizons.get(kind, {})
    for e, v in zip(r.get("end_s", []), r.get("lsd", [])):
        if abs(e - end_s) < 1e-6:
            return float(v)
    return math.nan


def completion_table(groups: dict[str, list[dict]]) -> str:
    from pydreamer.dreams.report import COMPLETION_TARGET_DB

    lines = ["| world model | horizon window ending | LSD own (dB) | LSD another prompt's dream at this level | "
             "own - other, 95% t | target | met |", "|---|---|---|---|---|---|---|"]
    for name, dreams in groups.items():
        for end in COMPLETION_WINDOWS_S:
            own = [_window(d.get("completion_distance_by_horizon", {}), "own", end) for d in dreams]
            other = [_window(d.get("completion_distance_by_horizon", {}), "swapped", end) for d in dreams]
            m, half = t_interval([a - b for a, b in zip(own, other)])
            met = np.isfinite(m) and m <= -COMPLETION_TARGET_DB
            lines.append(f"| {name} | {end:g} s | {np.nanmean(own):.2f} | {np.nanmean(other):.2f} | {fmt(m, half, 2)} "
                         f"| <= -{COMPLETION_TARGET_DB:g} | {'met' if met else 'missed'} |")
    return "\n".join(lines) + "\n"


def structure_table(groups: dict[str, list[dict]], group_names=("tokenizer", "unconditional", "completion")) -> str:
    from pydreamer.dreams.acoustics import METRICS, STRUCTURE
    from pydreamer.dreams.report import STRUCTURE_TOLERANCE

    lines = []
    for name, dreams in groups.items():
        for g in group_names:
            rows = [{r["metric"]: r for r in d.get("acoustics", {}).get(g, [])} for d in dreams]
            if not any(rows):
                continue
            silent = [d.get("silent_fraction", {}).get(g, math.nan) for d in dreams]
            ends = [d["ends"][g] for d in dreams if g in d.get("ends", {})]
            ended = (f"ended by the world model: {np.mean([e['ended_fraction'] for e in ends]):.0%}, median "
                     f"{np.mean([e['median_s'] for e in ends]):.2f} s dreamt; ") if ends else ""
            lines += [f"**{name}, {g}** ({ended}silent: {np.nanmean(silent):.0%} of the dreams; median over the clips, "
                      f"relative difference to the real clips' median, mean over {len(dreams)} seeds):", "",
                      "| measure | real median | dreams' median | rel. diff | KS D | within +-20% |",
                      "|---|---|---|---|---|---|"]
            within = judged = 0
            for metric in METRICS + STRUCTURE:
                rs = [r[metric] for r in rows if metric in r]
                if not rs:
                    continue
                rel = float(np.mean([r["relative_difference"] for r in rs]))
                ok = abs(rel) <= STRUCTURE_TOLERANCE
                if metric != "rms":
                    judged += 1
                    within += ok
                lines.append(f"| {metric} | {np.mean([r['real_median'] for r in rs]):.4g} | "
                             f"{np.mean([r['generated_median'] for r in rs]):.4g} | {rel:+.1%} | "
                             f"{np.mean([r['ks_statistic'] for r in rs]):.2f} | "
                             f"{'(vocoder issue)' if metric == 'rms' else 'yes' if ok else 'no'} |")
            lines += ["", f"Within +-20% (RMS aside): {within} of {judged}: target "
                      f"{'met' if within == judged else 'missed'}.", ""]
    return "\n".join(lines) + "\n"


def rhythm_table(groups: dict[str, list[dict]]) -> str:
    lines = ["| world model | rhythmic test prompts | completions keeping the period | another prompt's completions "
             "(chance) | by kind |", "|---|---|---|---|---|"]
    for name, dreams in groups.items():
        rh = [d.get("rhythm", {}) for d in dreams]
        rh = [r for r in rh if r.get("rhythmic")]
        if not rh:
            lines.append(f"| {name} | 0 | n/a | n/a | |")
            continue
        kinds: dict[str, list[float]] = {}
        for r in rh:
            for k, v in r.get("by_kind", {}).items():
                kinds.setdefault(k, []).append(v["kept"])
        lines.append(f"| {name} | {sum(r['rhythmic'] for r in rh)} of {sum(r['prompts'] for r in rh)} | "
                     f"{np.mean([r['kept'] for r in rh]):.0%} | {np.mean([r['chance'] for r in rh]):.0%} | "
                     + "; ".join(f"{k} {np.mean(v):.0%}" for k, v in kinds.items()) + " |")
    return "\n".join(lines) + "\n"


# ---- "ba ta ba ta" --------------------------------------------------------------------------------

def test_voice(mlflow_dir: str, run_id: str) -> tuple[str, Path]:
    """An English voice whose timbre is in the test split (none is in train), and the run's data_dir."""
    run = _run(mlflow_dir, run_id)
    data_dir = Path(run.data.params.get("data_dir", "data"))
    manifest = json.loads((data_dir / "manifest.json").read_text())
    timbres = manifest.get("disjoint", {}).get("test", {}).get("timbres") or ["f2"]
    return f"en+{timbres[0]}", data_dir


def ba_ta(mlflow_dir: str, run_id: str, out: Path, samples: int = 8, options: tuple[list[str], str] = ([], "")) -> dict:
    """Synthesize the prompt, complete it `samples` times, and say which completions keep its period."""
    import soundfile

    from pydreamer.dreams.structure import envelope_period, keeps_period
    from tokenizer.audio_io import write_wav
    from tokenizer.synth import SynthUtterance, synthesize

    voice, _ = test_voice(mlflow_dir, run_id)
    prompt = out / f"ba-ta-{voice.replace('+', '_')}.wav"
    write_wav(prompt, synthesize(SynthUtterance(f"ba-ta-{voice}", voice, "en", "syllables", BA_TA, 170, 50, 0)), 16000)
    folder = out / f"ba-ta-{run_id[:8]}{options[1]}"
    cmd = [sys.executable, "-m", "pydreamer.dream", "--run", run_id, "--out", str(folder), "--mlflow_dir", mlflow_dir,
           "--prompt", str(prompt), "--samples", str(samples), "--unconditional", "0", "--warm", "0", "--no_log",
           *options[0]]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    summary = json.loads((folder / "summary.json").read_text())
    c = summary["completions"][0]
    sub = next(p for p in (folder / "completions").iterdir() if p.is_dir())
    true, sr = soundfile.read(sub / "prompt+true.wav")
    true_period = envelope_period(true, sr)
    cut = int(round(c["prompt_s"] * sr))
    periods = [envelope_period(soundfile.read(w)[0][cut:], sr) for w in sorted(sub.glob("prompt+dream-*.wav"))]
    return {"voice": voice, "prompt_wav": str(prompt), "png": str(folder / "completions" / f"{sub.name}.png"),
            "start_s": c.get("start_s", 0.0), "true_period_s": true_period, "dream_periods_s": periods,
            "kept": sum(keeps_period(true_period, p) for p in periods), "samples": len(periods)}


def main(argv: list[str] | None = None) -> int:
    from pydreamer.models.base import IMAGINATIONS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mlflow_dir", required=True)
    p.add_argument("--group", action="append", required=True, help="NAME=RUN_ID,RUN_ID,... (one run per seed)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--redream", type=int, default=0, help="N > 0: dream again with N test prompts (into --out)")
    p.add_argument("--ba_ta", action="store_true", help="complete a synthesized 'ba ta ba ta' (first run per group)")
    p.add_argument("--imagination", choices=IMAGINATIONS, help="dream this way (default: each run's own)")
    p.add_argument("--temperature", type=float, help="dreams at this temperature (with --redream and --ba_ta)")
    p.add_argument("--end", action=argparse.BooleanOptionalAction,
                   help="dreams end where the world model says (default: each run's own dream_end)")
    p.add_argument("--out", default="bench-out/imagination")
    a = p.parse_args(argv)
    if (a.imagination or a.temperature or a.end is not None) and a.redream <= 0:
        p.error("--imagination, --temperature and --end/--no-end dream again: give --redream N")
    options = dream_options(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = {}
    for g in a.group:
        name, _, ids = g.partition("=")
        if not ids:
            p.error(f"--group {g!r}: expected NAME=RUN_ID,RUN_ID,...")
        groups[name] = [i.strip() for i in ids.split(",") if i.strip()]
    evals = {n: [evaluation_summary(a.mlflow_dir, r, a.split) for r in ids] for n, ids in groups.items()}
    dreams = {n: [dream_summary(a.mlflow_dir, r, a.redream, out, a.split, options) for r in ids]
              for n, ids in groups.items()}
    md = [f"## Forecasts ({a.split} split; runs: " + "; ".join(f"{n} {', '.join(i[:8] for i in ids)}"
                                                            for n, ids in groups.items()) + ")", "",
          forecast_table(evals), "## Completions", "", completion_table(dreams), "## Structure of the dreams", "",
          structure_table(dreams), "## Rhythm of the completions", "", rhythm_table(dreams)]
    if a.ba_ta:
        md += ["## 'ba ta ba ta'", ""]
        for name, ids in groups.items():
            r = ba_ta(a.mlflow_dir, ids[0], out, options=options)
            md.append(f"- {name} ({ids[0][:8]}), voice {r['voice']} (a test timbre), prompt from {r['start_s']:.2f} s: "
                      f"prompt period {r['true_period_s']:.2f} s; {r['kept']} of {r['samples']} completions keep it "
                      f"(their periods: {', '.join(f'{x:.2f}' for x in r['dream_periods_s'])}); picture {r['png']}")
        md.append("")
    text = "\n".join(md)
    (out / f"imagination-{a.split}{options[1]}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
