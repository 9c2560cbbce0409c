"""Conditioned world models against their two targets, from run ids: the README's conditioning tables.

    python bench/conditioning.py --cond_store M1 --cond ID0,ID1,ID2 --uncond_store M2 --uncond ID0,ID1,ID2
        [--guidance 1 3] [--dream_seed 0] [--temperature 1] [--grid_dreams 8] [--prompts 16] [--labels language ...]
        [--out bench-out/conditioning]

`--cond` are runs of one conditioned recipe (e.g. `--condition language,voice`), one per seed; `--uncond` the
same recipe unconditioned, the same seeds in the same order (the seed pairs them). Three tables:

1. forecasts: the conditioned model's unconditioned forecast (the label dropped, what `evaluate` scores) against
   the unconditioned model's, test NLL at h = 1, 5, 15: each mean over seeds, the difference paired by seed with
   its 95% t-interval, and the target (no worse by more than 0.05 bits/token at h = 1); the best baseline beside;
2. alignment per `--guidance` scale: dreams from nothing conditioned on each value of each label, named by the
   classifier of `pydreamer/dreams/alignment.py` (fitted on real train clips as recorded and through the
   tokenizer), mean accuracy over the runs with its t-interval, beside chance and the classifier on real clips as
   recorded and through the tokenizer (what perfect tokens score: the ceiling for a dream); targets: language >=
   80%, voice >= 3x chance;
3. completions: how often two unconditioned completions of each of `--prompts` test utterances are named as their
   prompt's value (the dreamt part only), beside the true continuations through the tokenizer.

The dreams are made by `python -m pydreamer.dream` into `--out` (nothing logged into the runs; a folder already
there is read again, not remade). Alignment reads the dreams' log-mels, not their audio, so they are heard through
one Griffin-Lim iteration only: the wavs are for a quick look, not for listening. Decide a scale with one
`--dream_seed`, report it with another.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagination import evaluation_summary, fmt, t_interval  # noqa: E402  (bench/imagination.py)

HORIZONS = (1, 5, 15)
NLL_ALLOWED = 0.05  # bits/token the unconditioned forecast may lose at h = 1
TARGETS = {"language": ("acc", 0.80), "voice": ("over_chance", 3.0)}


def _forecast(store: str, run_id: str, h: int) -> tuple[float, float, str]:
    """(model NLL, best baseline NLL, its name) at horizon h on all test cells (evaluation/test/summary.json)."""
    s = evaluation_summary(store, run_id, "test")["all"]
    best = s["best_baseline"][h - 1]
    return s["results"]["model"]["nll"][h - 1], s["results"][best]["nll"][h - 1] if best else float("nan"), best or ""


def _nll(runs: list[tuple[float, float, str]]) -> str:
    """The mean NLL over seeds with its 95% t half-width."""
    m, half = t_interval([r[0] for r in runs])
    return f"{m:.3f}" + (f" ± {half:.3f}" if np.isfinite(half) else "")


def forecast_table(a: argparse.Namespace) -> list[str]:
    md = ["| h | unconditioned RSSM | conditioned RSSM, label dropped | difference (paired by seed, 95% t) | "
          "best baseline | target | met |", "|---|---|---|---|---|---|---|"]
    for h in HORIZONS:
        plain = [_forecast(a.uncond_store, r, h) for r in a.uncond]
        cond = [_forecast(a.cond_store, r, h) for r in a.cond]
        diff = [c[0] - p[0] for c, p in zip(cond, plain)]
        m, half = t_interval(diff)
        target = f"<= +{NLL_ALLOWED}" if h == 1 else ""
        upper = m + (half if np.isfinite(half) else 0.0)
        met = ("met" if upper <= NLL_ALLOWED else "met on the mean, not at the interval's top" if m <= NLL_ALLOWED
               else "missed") if h == 1 else ""
        names = sorted({p[2] for p in plain if p[2]})
        md.append(f"| {h} | {_nll(plain)} | {_nll(cond)} | {fmt(m, half)} | {np.mean([p[1] for p in plain]):.3f} "
                  f"{'/'.join(names)} | {target} | {met} |")
    return md


def dream_folder(a: argparse.Namespace, run_id: str, scale: float) -> Path:
    """`python -m pydreamer.dream` of a row of dreams from nothing per value of each label, at a guidance scale, and
    (at the first scale) two unconditioned completions of each of `--prompts` test utterances."""
    prompts = a.prompts if scale == a.guidance[0] else 0
    out = Path(a.out) / (f"{run_id[:8]}-guidance{scale:g}-seed{a.dream_seed}"
                         + (f"-T{a.temperature:g}" if a.temperature != 1 else "") + f"-n{a.grid_dreams}"
                         + (f"-p{prompts}" if prompts else ""))
    if not (out / "summary.json").exists():
        cmd = [sys.executable, "-m", "pydreamer.dream", "--run", run_id, "--mlflow_dir", a.cond_store,
               *[x for label in a.labels or () for x in ("--condition", label)], "--dream_guidance", f"{scale:g}",
               "--grid_dreams", str(a.grid_dreams), "--seed", str(a.dream_seed), "--temperature", f"{a.temperature:g}",
               "--dream_unconditional", "0",
               "--dream_warm", "0", "--dream_test_prompts", str(prompts), "--dream_samples", "2",
               "--dream_real_clips", "0", "--no-dream_perceptual",
               "--vocoder", "griffinlim", "--dream_griffin_lim_iters", "1", "--out", str(out), "--no_log"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def alignment_table(a: argparse.Namespace) -> list[str]:
    md = ["| guidance | label | conditioned dreams named as their value (mean over runs, 95% t) | per run | chance | "
          "x chance | real held-out train clips (recorded / through the tokenizer) | real test clips (recorded / "
          "through the tokenizer) | target | met |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for scale in a.guidance:
        scores = [json.loads((dream_folder(a, r, scale) / "summary.json").read_text())["alignment"] for r in a.cond]
        for label in a.labels or list(dict.fromkeys(k for s in scores for k in s)):
            got = [s[label] for s in scores if label in s]
            if not got:
                continue
            acc = [g["acc"] for g in got]
            m, half = t_interval(acc)
            chance = got[0]["chance"]
            key, want = TARGETS.get(label, ("acc", float("nan")))
            value = m if key == "acc" else m / chance
            target = (f">= {want:.0%}" if key == "acc" else f">= {want:g}x chance") if np.isfinite(want) else ""
            met = ("met" if value >= want else "missed") if np.isfinite(want) else ""
            tested = [g for g in got if g.get("real_test_n")]
            md.append(f"| {scale:g} | {label} | {m:.1%}" + (f" ± {half:.1%}" if np.isfinite(half) else "")
                      + f" (n={got[0]['n']} each) | {', '.join(f'{x:.0%}' for x in acc)} | {chance:.1%} | "
                      f"{m / chance:.1f}x | {_both(got, 'real_acc', 'tokenized_acc')} | "
                      + (_both(tested, "real_test_acc", "tokenized_test_acc") if tested else "none")
                      + f" | {target} | {met} |")
    return md


def completion_table(a: argparse.Namespace) -> list[str]:
    """Per label: how often unconditioned completions of test prompts are named as their prompt's value, beside the
    true continuations through the tokenizer: the same models asked by a prompt instead of a label."""
    scores = [json.loads((dream_folder(a, r, a.guidance[0]) / "summary.json").read_text())["alignment"] for r in a.cond]
    md = ["| label | completions named as their prompt's value (mean over runs, 95% t) | per run | true continuations "
          "through the tokenizer | chance |", "|---|---|---|---|---|"]
    for label in a.labels or list(dict.fromkeys(k for s in scores for k in s)):
        got = [s[label]["completions"] for s in scores if s.get(label, {}).get("completions", {}).get("n")]
        if got:
            acc = [g["acc"] for g in got]
            m, half = t_interval(acc)
            md.append(f"| {label} | {m:.1%}" + (f" ± {half:.1%}" if np.isfinite(half) else "")
                      + f" (n={got[0]['n']} each) | {', '.join(f'{x:.0%}' for x in acc)} | "
                      f"{np.mean([g['true_acc'] for g in got]):.1%} (n={got[0]['true_n']}) | "
                      f"{scores[0][label]['chance']:.1%} |")
    return md if len(md) > 2 else []


def _both(scores: list[dict], recorded: str, tokenized: str) -> str:
    """The mean over runs of a real-clip accuracy as recorded / through the tokenizer (dreams made before the
    tokenized score: the recorded alone)."""
    out = f"{np.mean([g[recorded] for g in scores]):.1%}"
    through = [g.get(tokenized, float("nan")) for g in scores]
    return out + (f" / {np.mean(through):.1%}" if np.all(np.isfinite(through)) else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cond_store", required=True, help="local tracking store (--mlflow_dir) of the conditioned runs")
    p.add_argument("--cond", required=True, help="conditioned run ids, comma-separated, one per seed")
    p.add_argument("--uncond_store", help="tracking store of the unconditioned runs (default: --cond_store)")
    p.add_argument("--uncond", help="unconditioned run ids, the same seeds in the same order (none: no forecast table)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="guidance scales to dream at")
    p.add_argument("--labels", nargs="+", help="labels to dream a row per value of (default: every label of the runs)")
    p.add_argument("--grid_dreams", type=int, default=8, help="dreams from nothing per value")
    p.add_argument("--dream_seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="divides the logits of every draw")
    p.add_argument("--prompts", type=int, default=16, help="test utterances completed unconditioned (0: none)")
    p.add_argument("--out", default="bench-out/conditioning")
    a = p.parse_args(argv)
    a.cond = [r for r in a.cond.split(",") if r]
    a.uncond = [r for r in (a.uncond or "").split(",") if r]
    a.uncond_store = a.uncond_store or a.cond_store
    if a.uncond and len(a.uncond) != len(a.cond):
        p.error(f"--uncond has {len(a.uncond)} runs and --cond {len(a.cond)}: one of each per seed")
    md = [f"# Conditioned RSSM: {len(a.cond)} runs ({', '.join(r[:8] for r in a.cond)})", ""]
    if a.uncond:
        md += ["Test forecast (bits/token), conditioned runs scored unconditioned against unconditioned runs "
               f"({', '.join(r[:8] for r in a.uncond)}):", "", *forecast_table(a), ""]
    md += [f"Alignment of dreams from nothing ({a.grid_dreams} per value, dream seed {a.dream_seed}, temperature "
           f"{a.temperature:g}):", "",
           *alignment_table(a), ""]
    kept = completion_table(a) if a.prompts else []
    if kept:
        md += [f"Completions of {a.prompts} test prompts (2 each, dreamt unconditioned; the dreamt part scored):", "",
               *kept, ""]
    text = "\n".join(md)
    print(text)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"conditioning-seed{a.dream_seed}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
